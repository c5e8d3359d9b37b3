"""Chat templates: turn a list of chat messages into the prompt text a model was trained on.

A model's template is Jinja2 source (GGUF ``tokenizer.chat_template`` or tokenizer_config.json
``chat_template``) written for transformers' ``apply_chat_template``; it is rendered here the way
transformers renders it (same sandbox, options, globals and filters), so a prompt matches what the
model saw in training. Templates come from model files, so they are untrusted code: they run in
Jinja's immutable sandbox, and every failure becomes a ``ChatTemplateError``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import ChatTemplateError, InvalidMessagesError

__all__ = [
    "BITNET_2B4T_TEMPLATE",
    "ChatTemplate",
    "ChatTemplateError",
    "InvalidMessagesError",
    "ROLES",
    "normalize_messages",
    "render_chat",
]

ROLES = ("system", "developer", "user", "assistant")

# microsoft/bitnet-b1.58-2B-4T's tokenizer_config.json chat_template (the Llama-3 template with
# "Role: " headers): <|begin_of_text|>System: ...<|eot_id|>User: ...<|eot_id|>Assistant: ...
BITNET_2B4T_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = message['role'] | capitalize + ': '+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)




class ChatTemplate:
    """A compiled chat template; without one (``source`` None) the BitNet b1.58 2B4T format.

    ``bos_token`` / ``eos_token`` are the texts of the model's BOS and EOS tokens, which templates
    insert as ``bos_token`` / ``eos_token``.
    """

    def __init__(self, source: str | None, *, bos_token: str = "", eos_token: str = "") -> None:
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        text = BITNET_2B4T_TEMPLATE if source is None else source
        # OpenAI's "developer" role is the system prompt of newer models; templates written before
        # it would print it as an unknown header or reject it, so it is renamed unless the
        # template handles it itself.
        self._rename_developer = "developer" not in text
        try:
            self._template = _environment().from_string(text)
        except TemplateSyntaxError as e:
            raise ChatTemplateError(f"chat template has a syntax error on line {e.lineno}: {e.message}") from e

    def render(
        self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        """The prompt text for ``messages``; with ``add_generation_prompt``, followed by the header
        that starts the assistant's reply. ``kwargs`` become extra template variables (e.g.
        ``date_string``), as with transformers' ``apply_chat_template``."""
        chat = normalize_messages(messages)
        if self._rename_developer:
            for m in chat:
                if m["role"] == "developer":
                    m["role"] = "system"
        context: dict[str, Any] = {
            "tools": None, "documents": None,  # transformers always defines them
            "bos_token": self.bos_token, "eos_token": self.eos_token,
            **{k: _plain(v, k) for k, v in kwargs.items()},
        }
        try:
            return self._template.render(messages=chat, add_generation_prompt=add_generation_prompt, **context)
        except _TemplateRaised as e:
            raise ChatTemplateError(f"chat template rejected the conversation: {e.message}") from e
        except SecurityError as e:
            raise ChatTemplateError(f"chat template attempted a forbidden operation: {e}") from e
        except TemplateError as e:
            raise ChatTemplateError(f"chat template failed: {e}") from e
        except Exception as e:  # a template is a program: type errors, division by zero, ...
            raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}") from e


def render_chat(
    source: str | None, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
    bos_token: str = "", eos_token: str = "", **kwargs: Any,
) -> str:
    """``ChatTemplate(source, bos_token=..., eos_token=...).render(messages, ...)`` in one call, with
    the compiled template kept for the next request (compiling a large template takes milliseconds)."""
    template = _compiled(source, bos_token, eos_token)
    return template.render(messages, add_generation_prompt=add_generation_prompt, **kwargs)


@functools.lru_cache(maxsize=16)
def _compiled(source: str | None, bos_token: str, eos_token: str) -> ChatTemplate:
    return ChatTemplate(source, bos_token=bos_token, eos_token=eos_token)


def normalize_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check messages and return plain copies with string content.

    Content may be a string or a list of ``{"type": "text", "text": ...}`` parts (OpenAI's format),
    which are concatenated. Keys whose value is None are dropped (OpenAI sends ``content: null``;
    templates test for a missing key, as transformers arranges). Other keys pass through as
    plain JSON data.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise InvalidMessagesError(f"messages must be a list of message objects, got {type(messages).__name__}")
    if not messages:
        raise InvalidMessagesError("messages is empty; a chat needs at least one message")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidMessagesError(
                f"messages[{i}] must be an object with role and content, got {type(message).__name__}"
            )
        role = message.get("role")
        if role not in ROLES:
            raise InvalidMessagesError(f"messages[{i}] has role {role!r}; supported roles are {', '.join(ROLES)}")
        out.append({
            k: _content_text(v, i) if k == "content" else _plain(v, f"messages[{i}].{k}")
            for k, v in message.items() if v is not None
        })
    return out


def _content_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, bytes) or not isinstance(content, Sequence):
        raise InvalidMessagesError(
            f"messages[{index}].content must be a string or a list of text parts, got {type(content).__name__}"
        )
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, Mapping):
            raise InvalidMessagesError(
                f"messages[{index}].content[{j}] must be a part object with type and text, got {type(part).__name__}"
            )
        if part.get("type") != "text":
            raise InvalidMessagesError(
                f"messages[{index}].content[{j}] has type {part.get('type')!r}; only text parts are supported"
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidMessagesError(
                f"messages[{index}].content[{j}].text must be a string, got {type(text).__name__}"
            )
        texts.append(text)
    return "".join(texts)


def _plain(value: Any, where: str) -> Any:
    """A copy made only of JSON types: the sandbox only knows which methods of those are safe."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, Mapping):
        return {_plain(k, where): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{n}]") for n, v in enumerate(value)]
    raise InvalidMessagesError(
        f"{where} must be JSON data (string, number, bool, list, object), got {type(value).__name__}"
    )


# ----- the Jinja environment, as transformers' _compile_jinja_template builds it ----------------


class _TemplateRaised(TemplateError):
    """Raised by the template's own ``raise_exception`` call."""


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes HTML characters; templates expect plain JSON.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _TemplateDict:
    """``dict`` for templates: builds dicts, without exposing the type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """``namespace()`` that refuses underscore attributes, which could reach Python internals."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # Jinja's signature trick: namespace(self=...) works
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"chat templates cannot set underscore-prefixed namespace attributes ({name!r})")


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: transformers marks assistant text for training
    masks with it; for rendering it is a no-op, but templates using it must still compile."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


@functools.cache
def _environment() -> ImmutableSandboxedEnvironment:
    """Built once and shared: every template gets the same sandbox, options, globals and filters."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env
