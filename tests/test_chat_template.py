"""Chat templates render exactly as transformers' apply_chat_template renders them, messages are
checked, and template failures (including sandbox escapes) become ChatTemplateError."""

from __future__ import annotations

from datetime import datetime

import jinja2
import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models
from transformers import PreTrainedTokenizerFast

from tritlm.chat_template import (
    BITNET_2B4T_TEMPLATE,
    ChatTemplate,
    ChatTemplateError,
    InvalidMessagesError,
    normalize_messages,
    render_chat,
)
from tritlm.errors import TritlmError

BOS, EOS = "<|begin_of_text|>", "<|eot_id|>"

# Real-world templates (tokenizer_config.json chat_template values), tools-free paths exercised.
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>'"
    " + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

LLAMA32 = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

# Zephyr's template leans on trim_blocks / lstrip_blocks for its newlines.
ZEPHYR = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)

# Loop controls, namespace(), dict() and the generation tag, all of which transformers provides.
EXTENSIONS = """{%- set ns = namespace(turns=0) -%}
{%- for message in messages -%}
    {%- if message.role == 'system' -%}
        {%- set meta = dict(kind='system', size=message.content | length) -%}
        [{{ meta | tojson }}]
        {%- continue -%}
    {%- endif -%}
    {%- set ns.turns = ns.turns + 1 -%}
    {%- if message.role == 'assistant' %}{% generation %}{{ message.content }}{% endgeneration %}
    {%- else %}<{{ ns.turns }}:{{ message.role }}> {{ message.content }}
    {% endif -%}
    {%- if ns.turns >= 3 %}{% break %}{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt %}<assistant>{% endif -%}"""

TEMPLATES = {
    "llama3": LLAMA3, "llama3.2": LLAMA32, "qwen2.5": QWEN25, "bitnet-2b4t": BITNET_2B4T_TEMPLATE,
    "mistral": MISTRAL, "zephyr": ZEPHYR, "extensions": EXTENSIONS,
}

CHATS = {
    "system+user": [
        {"role": "system", "content": "  You are terse. "}, {"role": "user", "content": "Hi! Café? 日本 🎉"},
    ],
    "user": [{"role": "user", "content": "What is 2+2?"}],
    "multi-turn": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": " Hi there. "},
        {"role": "user", "content": "Tell me a joke\nabout cats"},
    ],
    "user+assistant": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
}


@pytest.fixture(scope="module")
def hf() -> PreTrainedTokenizerFast:
    """A transformers tokenizer whose only job is apply_chat_template with these BOS / EOS texts."""
    return PreTrainedTokenizerFast(tokenizer_object=HFTokenizer(models.BPE()), bos_token=BOS, eos_token=EOS)


def expect_same(hf: PreTrainedTokenizerFast, template: str, chat: list[dict], hf_chat: list[dict] | None = None,
                *, add_generation_prompt: bool, **kwargs) -> str:
    """Render with transformers and with tritlm; both must give the same text or both must fail."""
    ours = ChatTemplate(template, bos_token=BOS, eos_token=EOS)
    kwargs["add_generation_prompt"] = add_generation_prompt
    try:
        expected = hf.apply_chat_template(hf_chat or chat, chat_template=template, tokenize=False, **kwargs)
    except jinja2.TemplateError as e:
        with pytest.raises(ChatTemplateError, match="rejected the conversation"):
            ours.render(chat, **kwargs)
        return str(e)
    assert ours.render(chat, **kwargs) == expected
    return expected


@pytest.mark.parametrize("add_generation_prompt", [False, True])
@pytest.mark.parametrize("chat", CHATS.values(), ids=CHATS.keys())
@pytest.mark.parametrize("template", TEMPLATES.values(), ids=TEMPLATES.keys())
def test_renders_like_transformers(hf, template: str, chat: list[dict], add_generation_prompt: bool) -> None:
    expect_same(hf, template, chat, add_generation_prompt=add_generation_prompt)


def test_tools_and_extra_variables_like_transformers(hf) -> None:
    tools = [{"type": "function", "function": {"name": "météo", "description": "Weather <b>now</b> & later",
                                               "parameters": {"type": "object", "properties": {}}}}]
    chat = CHATS["system+user"]
    out = expect_same(hf, QWEN25, chat, tools=tools, add_generation_prompt=True)
    assert '"name": "météo"' in out and "<b>now</b> & later" in out  # HF's tojson: no ASCII or HTML escaping
    out = expect_same(hf, LLAMA32, chat, date_string="01 Jan 2030", tools=tools, tools_in_user_message=False,
                      add_generation_prompt=False)
    assert "Today Date: 01 Jan 2030" in out and '    "type": "function"' in out


def test_strftime_now_gives_the_current_date() -> None:
    out = ChatTemplate(LLAMA32).render(CHATS["user"])
    assert f"Today Date: {datetime.now().strftime('%d %b %Y')}" in out


def test_text_parts_are_concatenated(hf) -> None:
    parts = [{"role": "system", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
             {"role": "user", "content": [{"type": "text", "text": "Hello"}]}]
    flat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    for template in (LLAMA3, QWEN25, BITNET_2B4T_TEMPLATE):
        expect_same(hf, template, parts, hf_chat=flat, add_generation_prompt=True)


def test_developer_role_is_the_system_prompt(hf) -> None:
    dev = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    sys = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    for template in (LLAMA3, QWEN25, BITNET_2B4T_TEMPLATE):
        expect_same(hf, template, dev, hf_chat=sys, add_generation_prompt=True)
    # a template that knows the developer role gets it as is
    aware = "{% for m in messages %}{{ m.role }}={{ m.content }};{% endfor %}{# developer-aware #}"
    assert ChatTemplate(aware).render(dev) == "developer=Be brief.;user=Hi;"


def test_fallback_is_the_2b4t_format(hf) -> None:
    chat = [{"role": "developer", "content": " Be brief. "}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]
    fallback = ChatTemplate(None, bos_token=BOS, eos_token=EOS)
    assert fallback.render(chat) == (
        "<|begin_of_text|>System: Be brief.<|eot_id|>User: Hi<|eot_id|>Assistant: Hello!<|eot_id|>"
        "User: Bye<|eot_id|>Assistant: "
    )
    assert fallback.render(chat[1:2], add_generation_prompt=False) == "<|begin_of_text|>User: Hi<|eot_id|>"
    sys = [{**chat[0], "role": "system"}, *chat[1:]]
    assert fallback.render(chat) == hf.apply_chat_template(
        sys, chat_template=BITNET_2B4T_TEMPLATE, tokenize=False, add_generation_prompt=True)


def test_render_chat_is_the_cached_one_call_form() -> None:
    chat = CHATS["multi-turn"]
    for template in (LLAMA3, None):
        expected = ChatTemplate(template, bos_token=BOS, eos_token=EOS).render(chat, add_generation_prompt=False)
        assert render_chat(template, chat, add_generation_prompt=False, bos_token=BOS, eos_token=EOS) == expected
    assert render_chat(None, chat, bos_token=BOS).endswith("<|eot_id|>Assistant: ")  # generation prompt by default
    with pytest.raises(ChatTemplateError, match="syntax error"):
        render_chat("{% if %}", chat)


def test_none_values_are_dropped_like_transformers(hf) -> None:
    template = "{% for m in messages %}{{ m.role }}:{{ m.content is defined }}:{{ m.name is defined }};{% endfor %}"
    chat = [{"role": "assistant", "content": None, "name": None}]
    assert ChatTemplate(template).render(chat) == "assistant:False:False;"
    expect_same(hf, template, chat, add_generation_prompt=False)


@pytest.mark.parametrize("messages, match", [
    ([{"role": "tool", "content": "x"}], r"messages\[0\] has role 'tool'"),
    ([{"role": "user", "content": "a"}, {"role": "bogus", "content": "x"}], r"messages\[1\] has role 'bogus'"),
    ([{"content": "x"}], r"messages\[0\] has role None"),
    ([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}]}],
     r"messages\[0\]\.content\[1\] has type 'image_url'; only text parts"),
    ([{"role": "user", "content": ["plain string part"]}], r"messages\[0\]\.content\[0\] must be a part object with type and text, got str"),
    ([{"role": "user", "content": [{"type": "text", "text": 5}]}],
     r"messages\[0\]\.content\[0\]\.text must be a string"),
    ([{"role": "user", "content": 42}], r"messages\[0\]\.content must be a string or a list"),
    ([{"role": "user", "content": "x", "meta": object()}], r"messages\[0\]\.meta must be JSON data"),
    (["hello"], r"messages\[0\] must be an object"),
    ([], "messages is empty"),
    ("hello", "must be a list"),
])
def test_malformed_messages_are_refused(messages, match: str) -> None:
    with pytest.raises(InvalidMessagesError, match=match) as info:
        ChatTemplate(LLAMA3).render(messages)
    assert isinstance(info.value, ValueError) and isinstance(info.value, TritlmError)


def test_normalize_messages_returns_plain_copies() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    original = [{"role": "user", "content": parts, "name": "x"}]
    assert normalize_messages(original) == [{"role": "user", "content": "ab", "name": "x"}]
    assert original[0]["content"][0] == {"type": "text", "text": "a"}  # caller's messages untouched


def test_raise_exception_names_the_templates_message() -> None:
    with pytest.raises(ChatTemplateError, match="rejected the conversation: Conversation roles must alternate"):
        ChatTemplate(MISTRAL).render([{"role": "assistant", "content": "x"}])


@pytest.mark.parametrize("source", ["{% if %}", "{% for m in messages %}", "{{ messages | nosuchfilter }}"])
def test_syntax_errors_are_reported_at_compile_time(source: str) -> None:
    with pytest.raises(ChatTemplateError, match="syntax error on line 1") as info:
        ChatTemplate(source)
    assert isinstance(info.value, ValueError) and isinstance(info.value, TritlmError)


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__base__ }}{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ messages.append(1) }}",                       # the immutable sandbox: no mutating calls
    "{{ messages[0].update({'role': 'system'}) }}",
    "{% set ns = namespace(_secret=1) %}",
    "{{ raise_exception.__globals__ }}{{ raise_exception.__globals__['os'] }}",
])
def test_sandbox_blocks_escapes(source: str) -> None:
    with pytest.raises(ChatTemplateError, match="forbidden operation"):
        ChatTemplate(source).render(CHATS["user"])


def test_sandbox_hides_unsafe_attributes() -> None:
    # As in transformers, a lone unsafe attribute is undefined (prints nothing) instead of a class.
    assert ChatTemplate("[{{ ''.__class__ }}]").render(CHATS["user"]) == "[]"


def test_runtime_errors_become_chat_template_errors() -> None:
    with pytest.raises(ChatTemplateError, match="ZeroDivisionError"):
        ChatTemplate("{{ 1 / 0 }}").render(CHATS["user"])
    with pytest.raises(ChatTemplateError, match="chat template failed"):
        ChatTemplate("{{ messages[0].content + 1 }}").render(CHATS["user"])


# ----- limits: a template from a model file must not exhaust memory or time ---------------------

@pytest.mark.parametrize("source, match", [
    ("{{ 'x' * 10**10 }}", "repetition of 10000000000"),
    ("{{ 10**10 * 'x' }}", "repetition of 10000000000"),
    ("{{ ([1] * 100000000) | length }}", "repetition of 100000000"),
    ("{% for i in range(1000000) %}{% endfor %}", r"range\(\) of 1000000 items \(limit 100000\)"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
     "more than 1000000 loop iterations and calls"),
    ("{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}", "loop iterations"),
    ("{% for x in [0] recursive %}{{ loop(range(100000)) }}{% endfor %}", "loop iterations|recursion"),
    ("{% set ns = namespace(n=3) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}{% endfor %}",
     "integer product of more than 4096 bits"),
    ("{{ 7 ** 100000 }}", "integer power of more than 4096 bits"),
    ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
     "~ concatenation of 33554432"),
    ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
     "concatenation of 33554432"),
    ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = [ns.s, ns.s] | join %}{% endfor %}",
     "result of 33554432"),
    ("{{ 'x' | center(10000000000) }}", "center filter's result of 10000000000"),
    ("{{ 'x'.ljust(10**10) }}", "str.ljust's result of 10000000000"),
    ("{{ [] | slice(10000000) | list }}", "integer argument 10000000 to the slice filter"),
    ("{{ '%10000000000s' % 'x' }}", "format width '10000000000'"),
    ("{{ '%*s' % (1000000000, 'x') }}", "format width '\\*'"),
    ("{{ '%10000000000s' | format('x') }}", "format width"),
    ("{{ '{:>10000000000}'.format('x') }}", "format width"),
    ("{{ '{:>{}}'.format('x', 10000000000) }}", "format width"),
    ("{% set s = 'x' * 1000000 %}{{ s | replace('', s) }}", "replace filter's result"),
    ("{% set s = 'x' * 1000000 %}{{ s.replace('x', s) }}", "str.replace's result"),
    ("{% set s = '\n' * 1000000 %}{{ s | indent(60000) }}", "indent filter's result"),
    ("{% set s = 'x ' * 1000000 %}{{ s | wordwrap(1, wrapstring='y' * 1000) }}", "wordwrap filter's result"),
    ("{% set s = '\t' * 1000000 %}{{ s.expandtabs(60000) }}", "str.expandtabs's result"),
    ("{{ messages | tojson(indent=1000) }}", "tojson indent 1000"),
    ("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", "output longer than 16777216 characters"),
])
def test_limits_stop_runaway_templates(source: str, match: str) -> None:
    with pytest.raises(ChatTemplateError, match=match) as info:
        render_chat(source, CHATS["user"])
    assert "exceeded a limit" in str(info.value) or "RecursionError" in str(info.value)


def test_macro_calls_count_as_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """2^40 macro calls and no loop at all: each call is a step (the real limit is reached after
    about 5 s of calls; a lower one keeps the test short)."""
    import tritlm.chat_template as ct

    monkeypatch.setattr(ct, "MAX_STEPS", 10_000)
    with pytest.raises(ChatTemplateError, match="more than 10000 loop iterations and calls"):
        ChatTemplate("{% macro f(n) %}{% if n < 40 %}{{ f(n + 1) }}{{ f(n + 1) }}{% endif %}{% endmacro %}"
                     "{{ f(0) }}").render(CHATS["user"])


def test_render_time_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A loop of costly steps within the step limit (a 16M-character scan each) is stopped by the
    clock, checked at every step; a negative limit makes the first step exceed it."""
    import tritlm.chat_template as ct

    monkeypatch.setattr(ct, "MAX_SECONDS", -1.0)
    with pytest.raises(ChatTemplateError, match="rendering took more than -1 s"):
        ChatTemplate("{% for m in messages %}{{ m.content }}{% endfor %}").render(CHATS["user"])


def test_limits_leave_ordinary_templates_alone() -> None:
    chat = [{"role": "user", "content": "word " * 500_000}]  # a 2.5M-character message
    assert ChatTemplate(LLAMA3).render(chat).count("word") == 500_000
    source = ("{{ '%d tokens' % 1000000 }} {{ '{} tokens'.format(1000000) }} {{ '%d' | format(10**6) }}"
              " {{ {'a': 1}.get('b', 10**6) }} {{ max_tokens | default(131072) }} {{ 'ab' ~ 'cd' }} {{ 'x' | center(3) }}"
              " {{ range(3) | list }} {{ messages | tojson(indent=2) | length > 0 }}")
    assert ChatTemplate(source).render(CHATS["user"]) == (
        "1000000 tokens 1000000 tokens 1000000 1000000 131072 abcd  x  [0, 1, 2] True")
