"""Chat templates: turn a list of chat messages into the prompt text a model was trained on.

A model's template is Jinja2 source (GGUF ``tokenizer.chat_template`` or tokenizer_config.json
``chat_template``) written for transformers' ``apply_chat_template``; it is rendered here the way
transformers renders it (same sandbox, options, globals and filters), so a prompt matches what the
model saw in training. Templates come from model files, so they are untrusted code: they run in
Jinja's immutable sandbox, with limits on what one render may build and how long it may run (the
``MAX_*`` constants below), and every failure becomes a ``ChatTemplateError``.
"""

from __future__ import annotations

import contextvars
import functools
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.runtime import Context, LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

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
        env = _environment()
        try:
            self._template = env.from_string(_Bounded().visit(env.parse(text)))
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
        token = _budget.set(_Budget())
        try:
            return _joined(self._template.generate(messages=chat, add_generation_prompt=add_generation_prompt, **context))
        except _LimitExceeded as e:
            raise ChatTemplateError(f"chat template exceeded a limit: {e.message}") from e
        except _TemplateRaised as e:
            raise ChatTemplateError(f"chat template rejected the conversation: {e.message}") from e
        except SecurityError as e:
            raise ChatTemplateError(f"chat template attempted a forbidden operation: {e}") from e
        except TemplateError as e:
            raise ChatTemplateError(f"chat template failed: {e}") from e
        except Exception as e:  # a template is a program: type errors, division by zero, ...
            raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}") from e
        finally:
            _budget.reset(token)


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


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | str | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes HTML characters; templates expect plain JSON. The indent is
    # repeated on every line, once per nesting level, so it is kept small.
    if indent is not None and (indent if isinstance(indent, int) else len(str(indent))) > MAX_JSON_INDENT:
        raise _LimitExceeded(f"tojson indent {indent!r} (limit {MAX_JSON_INDENT})")
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


# ----- limits on one render --------------------------------------------------------------------
#
# Jinja's sandbox stops a template from reaching Python internals, not from exhausting memory or
# time: ``{{ 'x' * 10**10 }}`` allocates 10 GB and two nested ``range(100000)`` loops run for hours.
# Real chat templates loop over the messages and build a prompt a context window long, so these
# limits are far above what they need.

MAX_OUTPUT = 1 << 24       # characters of rendered prompt (no context window holds that many)
MAX_LENGTH = 1 << 24       # characters of one string, or items of one list, built by the template
MAX_RANGE = 100_000        # items of one range() (Jinja's own sandbox limit)
MAX_STEPS = 1_000_000      # loop iterations plus calls (of macros, methods and filters) per render
MAX_SECONDS = 10.0         # wall-clock time of one render, checked at every step
MAX_COUNT = 1 << 16        # a format width, and the batch size / slice count given to those filters
MAX_INT_BITS = 4096        # bits of an integer built by * or **
MAX_JSON_INDENT = 16       # characters of tojson's indent, repeated once per nesting level a line


class _LimitExceeded(TemplateError):
    """A render went past one of the limits above; the message names it."""


class _Budget:
    """Steps and time left to the render in progress."""

    def __init__(self) -> None:
        self.steps = 0
        self.deadline = time.monotonic() + MAX_SECONDS

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise _LimitExceeded(f"more than {MAX_STEPS} loop iterations and calls")
        if time.monotonic() > self.deadline:
            raise _LimitExceeded(f"rendering took more than {MAX_SECONDS:g} s")


# The render in progress on this thread (None while compiling: constant folding is not counted).
_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("chat_template_budget", default=None)


def _step() -> None:
    budget = _budget.get()
    if budget is not None:
        budget.step()


def _counted(iterable: Iterable[Any]) -> Iterator[Any]:
    for item in iterable:
        _step()
        yield item


def _joined(pieces: Iterable[str]) -> str:
    out: list[str] = []
    size = 0
    for piece in pieces:
        size += len(piece)
        if size > MAX_OUTPUT:
            raise _LimitExceeded(f"output longer than {MAX_OUTPUT} characters")
        out.append(piece)
    return "".join(out)


def _check_length(n: int, what: str) -> None:
    if n > MAX_LENGTH:
        raise _LimitExceeded(f"{what} of {n} characters or items (limit {MAX_LENGTH})")


def _checked(value: Any) -> Any:
    if isinstance(value, (str, list, tuple, dict)):
        _check_length(len(value), "a result")
    return value


def _check_counts(args: Iterable[Any], kwargs: Mapping[str, Any], what: str) -> None:
    for v in (*args, *kwargs.values()):
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_COUNT:
            raise _LimitExceeded(f"integer argument {v} to {what} (limit {MAX_COUNT})")


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d*)(?:\.(\*|\d*))?")
_FORMAT_SPEC = re.compile(r"\{[^{}]*:([^{}]*)(\{?)")


def _check_format(fmt: Any, percent: bool) -> None:
    """A %-format or str.format string whose field widths stay small: a width is an allocation."""
    if not isinstance(fmt, str):
        return
    if percent:
        widths = [w for m in _PERCENT_SPEC.finditer(fmt) for w in m.groups() if w]
    else:
        widths = []
        for m in _FORMAT_SPEC.finditer(fmt):
            widths += re.findall(r"\d+", m.group(1)) + (["*"] if m.group(2) else [])
    for w in widths:
        if w == "*" or int(w) > MAX_COUNT:
            raise _LimitExceeded(f"format width {w!r} (limit {MAX_COUNT}, given in the format string)")


def _replaced_length(s: Any, old: Any, new: Any, count: Any = None) -> int:
    s, old, new = str(s), str(old), str(new)
    n = len(s) + 1 if not old else s.count(old)
    if isinstance(count, int) and count >= 0:
        n = min(n, count)
    return len(s) + n * (len(new) - len(old))


def _joined_length(items: Any, sep: Any) -> int:
    return len(items) * len(str(sep)) if hasattr(items, "__len__") else 0


def _padded_length(s: Any, width: Any, *_: Any) -> int:
    return max(len(str(s)), int(width))


# Upper bounds, before the call, on the length of what a filter or str method would build: each
# can make its result far longer than its input and arguments (every match, line or tab gets an
# argument; a width is a length).
_FILTER_BOUNDS: dict[str, Callable[..., int]] = {
    "replace": _replaced_length,
    "center": lambda value, width=80: _padded_length(value, width),
    "join": lambda value, d="", attribute=None: _joined_length(value, d),
    "indent": lambda s, width=4, first=False, blank=False: len(str(s)) + (str(s).count("\n") + 1) * (
        len(width) if isinstance(width, str) else int(width)),
    "wordwrap": lambda s, width=79, break_long_words=True, wrapstring=None, break_on_hyphens=True: len(str(s)) + (
        len(str(s)) + 1) * len(wrapstring or "\n"),
}
_METHOD_BOUNDS: dict[str, Callable[..., int]] = {
    "replace": lambda s, old, new, count=-1: _replaced_length(s, old, new, count),
    "center": _padded_length, "ljust": _padded_length, "rjust": _padded_length, "zfill": _padded_length,
    "join": lambda sep, items: _joined_length(items, sep),
    "expandtabs": lambda s, tabsize=8: len(s) + s.count("\t") * int(tabsize),
}


def _guarded_filter(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
    """A filter counted as a step, refusing results too long (before building them where the
    length can be foreseen)."""
    hidden = 1 if getattr(f, "jinja_pass_arg", None) is not None else 0  # context/environment first
    bound = _FILTER_BOUNDS.get(name)

    @functools.wraps(f)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _step()
        if name in ("batch", "slice"):  # that many lists (or padding items) are built
            _check_counts(args[hidden + 1:], kwargs, f"the {name} filter")
        if name == "format" and len(args) > hidden:
            _check_format(args[hidden], percent=True)
        if bound is not None:
            _check_length(bound(*args[hidden:], **kwargs), f"the {name} filter's result")
        return _checked(f(*args, **kwargs))

    return guarded


def _bounded_range(*args: Any) -> range:
    r = range(*args)
    if len(r) > MAX_RANGE:
        raise _LimitExceeded(f"range() of {len(r)} items (limit {MAX_RANGE})")
    return r


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with the limits above on operators, calls and filters."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        sized = (str, list, tuple)
        if operator == "*":
            seq, n = (left, right) if isinstance(left, sized) else (right, left)
            if isinstance(seq, sized) and isinstance(n, int):
                _check_length(len(seq) * max(n, 0), "a repetition")
            elif isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise _LimitExceeded(f"an integer product of more than {MAX_INT_BITS} bits")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0 and (
                    right * (abs(left).bit_length() - 1) > MAX_INT_BITS):
                raise _LimitExceeded(f"an integer power of more than {MAX_INT_BITS} bits")
        elif operator == "+":
            if isinstance(left, sized) and isinstance(right, sized):
                _check_length(len(left) + len(right), "a concatenation")
        elif operator == "%" and isinstance(left, str):
            _check_format(left, percent=True)
        return _checked(super().call_binop(context, operator, left, right))

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _step()
        if isinstance(__obj, LoopContext) and args:  # loop(children) of a recursive for: counted too
            args = (_counted(args[0]), *args[1:])
        owner = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)  # str.format is wrapped
        if isinstance(owner, str):
            name = getattr(__obj, "__name__", "")
            if name in ("format", "format_map"):
                _check_format(owner, percent=False)
            if name in _METHOD_BOUNDS:
                _check_length(_METHOD_BOUNDS[name](owner, *args, **kwargs), f"str.{name}'s result")
        return _checked(super().call(__context, __obj, *args, **kwargs))


class _Bounded(NodeTransformer):
    """Rewrites a parsed template so that every for loop counts its iterations and every ``~``
    checks the length it builds (neither goes through a hook of the sandbox). The filters it adds
    have names no template can write."""

    def visit_For(self, node: jinja2.nodes.For) -> jinja2.nodes.Node:
        self.generic_visit(node)
        node.iter = jinja2.nodes.Filter(node.iter, "tritlm counted", [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: jinja2.nodes.Concat) -> jinja2.nodes.Node:
        self.generic_visit(node)
        items = jinja2.nodes.List(node.nodes, lineno=node.lineno)
        return jinja2.nodes.Filter(items, "tritlm concat", [], [], None, None, lineno=node.lineno)


def _concat(items: list[Any]) -> str:
    parts = [str(x) for x in items]
    _check_length(sum(map(len, parts)), "a ~ concatenation")
    return "".join(parts)


@functools.cache
def _environment() -> _BoundedEnvironment:
    """Built once and shared: every template gets the same sandbox, options, globals and filters."""
    env = _BoundedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.filters = {name: _guarded_filter(name, f) for name, f in env.filters.items()}
    env.filters["tritlm counted"] = _counted
    env.filters["tritlm concat"] = _concat
    env.globals["range"] = _bounded_range
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env
