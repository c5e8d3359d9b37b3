"""The server driven by the official `openai` Python client with strict response validation:
every endpoint, the features clients rely on, and every error status with the client's own
exception class."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import replace

import httpx
import numpy as np
import openai
import pytest

import tritlm
from server_harness import (MODEL_ID, Running, config_for, connect, read_response, request_bytes, running,
                            tiny_model, with_limits)
from tritlm.openai.wire.chat import ChatCompletionRequest
from tritlm.openai.wire.completions import CompletionRequest
from tritlm.openai.wire.embeddings import EmbeddingRequest
from tritlm.openai.wire.responses import ResponsesRequest

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "The cat sat on the mat"}]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    return tiny_model(tmp_path_factory)


@pytest.fixture(scope="module")
def server(model) -> Iterator[Running]:
    with running(config_for(model, n_ctx=512)) as s:
        yield s


def make_client(server: Running, key: str = "sk-anything") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, _strict_response_validation=True)


@pytest.fixture(scope="module")
def client(server: Running) -> openai.OpenAI:
    return make_client(server)


# -- chat ---------------------------------------------------------------------------------------


def test_chat_matches_the_engine_and_reports_usage(client: openai.OpenAI, server: Running) -> None:
    r = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=8, seed=7, temperature=0.9)
    direct = server.served.llm.chat(MESSAGES, max_tokens=8, seed=7, temperature=0.9)
    (choice,) = r.choices
    assert choice.message.role == "assistant" and choice.message.content == direct.text
    assert choice.finish_reason == direct.finish_reason and r.object == "chat.completion" and r.model == MODEL_ID
    assert r.usage.prompt_tokens == direct.usage.prompt_tokens and r.usage.completion_tokens == len(direct.token_ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details.cached_tokens is not None
    assert r.system_fingerprint.startswith("fp_") and r.id.startswith("chatcmpl-")
    again = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=8, seed=7, temperature=0.9)
    assert again.usage.prompt_tokens_details.cached_tokens == r.usage.prompt_tokens - 1  # the prefix cache


def test_chat_stream_is_role_then_content_then_finish_then_usage(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=10, seed=3,
                                           extra_body={"ignore_eos": True})
    chunks = list(client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=10, seed=3, stream=True,
                                                 stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.usage is None and "usage" in c.model_fields_set for c in chunks[:-1])
    *body, final, usage = chunks
    assert final.choices[0].finish_reason == "length" and all(c.choices[0].finish_reason is None for c in body)
    assert "".join(c.choices[0].delta.content or "" for c in body) == whole.choices[0].message.content
    assert usage.choices == [] and usage.usage is not None
    assert usage.usage.completion_tokens == 10 and usage.usage.prompt_tokens == whole.usage.prompt_tokens
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1


def test_chat_stream_without_include_usage_has_no_usage_key(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=3, stream=True))
    assert chunks and all("usage" not in c.model_fields_set for c in chunks)
    assert chunks[-1].choices[0].finish_reason is not None


def test_n_choices_are_independent_and_reproducible(client: openai.OpenAI) -> None:
    def ask(n: int) -> list[str]:
        r = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=12, seed=11, n=n,
                                           temperature=1.0, extra_body={"ignore_eos": True, "top_k": 0, "min_p": 0})
        assert [c.index for c in r.choices] == list(range(n))
        assert r.usage.completion_tokens == 12 * n
        return [c.message.content for c in r.choices]

    three = ask(3)
    assert ask(3) == three
    assert len(set(three)) == 3
    assert ask(1) == three[:1]  # choice 0 uses the request's seed itself


def test_n_choices_stream_interleaved_by_index(client: openai.OpenAI) -> None:
    texts = ["", ""]
    finished = set()
    for chunk in client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=6, n=2, seed=5,
                                                stream=True, extra_body={"ignore_eos": True}):
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finished.add(c.index)
    whole = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=6, n=2, seed=5,
                                           extra_body={"ignore_eos": True})
    assert finished == {0, 1} and texts == [c.message.content for c in whole.choices]


def test_seed_reproduces_and_differs(client: openai.OpenAI) -> None:
    def text(seed: int) -> str:
        return client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=16, seed=seed, temperature=1.2,
                                              extra_body={"ignore_eos": True, "top_k": 0, "min_p": 0}).choices[0].message.content

    assert text(1) == text(1)
    assert text(1) != text(2)


def test_stop_strings_cut_the_answer(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=20, temperature=0,
                                          extra_body={"ignore_eos": True}).choices[0].message.content
    cut = full[4:7]
    r = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=20, temperature=0, stop=[cut, "zzz"],
                                       extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content == full[: full.index(cut)]


def test_logprobs_have_the_openai_shape(client: openai.OpenAI, server: Running) -> None:
    r = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=5, temperature=0, logprobs=True,
                                       top_logprobs=3, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 5
    tokenizer = server.served.llm.tokenizer
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token and entry.top_logprobs[0].logprob == entry.logprob
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token
        assert any(bytes(entry.bytes) == tokenizer.token_bytes(t) for t in range(tokenizer.vocab_size))
    stream_lps = [lp for chunk in client.chat.completions.create(
        model=MODEL_ID, messages=MESSAGES, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3, stream=True,
        extra_body={"ignore_eos": True}) for c in chunk.choices if c.logprobs for lp in c.logprobs.content]
    assert [(e.token, e.logprob) for e in stream_lps] == [(e.token, e.logprob) for e in content]


def test_max_completion_tokens_wins_over_max_tokens(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=9, max_completion_tokens=3,
                                       extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"


def test_content_parts_and_developer_role(client: openai.OpenAI) -> None:
    parts = [{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
             {"role": "user", "content": [{"type": "text", "text": "The cat "}, {"type": "text", "text": "sat"}]}]
    plain = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The cat sat"}]
    a = client.chat.completions.create(model=MODEL_ID, messages=parts, max_tokens=6, temperature=0)
    b = client.chat.completions.create(model=MODEL_ID, messages=plain, max_tokens=6, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.prompt_tokens == b.usage.prompt_tokens


def test_unknown_fields_are_ignored(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=2, user="u1",
                                       extra_body={"some_future_field": {"x": 1}, "store": False})
    assert r.choices[0].message.content is not None


# -- completions --------------------------------------------------------------------------------


def test_completion_echo_and_legacy_logprobs(client: openai.OpenAI, server: Running) -> None:
    prompt = "The quick brown fox"
    r = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=4, temperature=0, echo=True, logprobs=2,
                                  extra_body={"ignore_eos": True})
    (choice,) = r.choices
    assert choice.text.startswith(prompt) and r.object == "text_completion"
    lp = choice.logprobs
    prompt_tokens = len(server.served.llm.tokenize(prompt, add_special=False))
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == prompt_tokens + 4
    assert "".join(lp.tokens) == choice.text and lp.text_offset[0] == 0
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[prompt_tokens] == len(prompt)
    assert all(x <= 0 for x in lp.token_logprobs) and all(len(t) <= 2 for t in lp.top_logprobs)
    # the prompt's log-probabilities are the model's: the greedy continuation's own agree
    greedy = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=4, temperature=0, logprobs=2,
                                       extra_body={"ignore_eos": True}).choices[0]
    assert greedy.text == choice.text[len(prompt):]
    assert greedy.logprobs.token_logprobs == pytest.approx(lp.token_logprobs[prompt_tokens:], abs=1e-4)


def test_echoed_prompt_logprobs_are_scored_once_for_all_choices(client: openai.OpenAI, server: Running,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    llm = server.served.llm
    calls = []
    scored = llm.prompt_logprobs
    monkeypatch.setattr(llm, "prompt_logprobs", lambda *a, **k: calls.append(a) or scored(*a, **k))
    prompt = "The quick brown fox"
    r = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=2, n=3, seed=4, echo=True, logprobs=1,
                                  extra_body={"ignore_eos": True})
    assert len(calls) == 1 and len(r.choices) == 3
    n_prompt = len(llm.tokenize(prompt, add_special=False))
    first = r.choices[0].logprobs
    for c in r.choices:
        assert c.logprobs.token_logprobs[:n_prompt] == first.token_logprobs[:n_prompt]
        assert c.logprobs.top_logprobs[:n_prompt] == first.top_logprobs[:n_prompt]


def test_completion_prompts_as_lists_and_token_ids(client: openai.OpenAI, server: Running) -> None:
    ids = server.served.llm.tokenize("Hello, world!")
    r = client.completions.create(model=MODEL_ID, prompt=["Hello, world!", "The dog"], n=2, max_tokens=3, seed=1,
                                  extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1, 2, 3] and r.usage.completion_tokens == 12
    by_ids = client.completions.create(model=MODEL_ID, prompt=ids, max_tokens=3, seed=1, extra_body={"ignore_eos": True})
    assert by_ids.choices[0].text == r.choices[0].text
    batch = client.completions.create(model=MODEL_ID, prompt=[ids, ids], max_tokens=3, seed=1, extra_body={"ignore_eos": True})
    assert [c.text for c in batch.choices] == [r.choices[0].text] * 2


def test_completion_default_max_tokens_is_16(client: openai.OpenAI) -> None:
    r = client.completions.create(model=MODEL_ID, prompt="Once", extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 16


def test_completion_stream(server: Running) -> None:
    # The client's Completion type requires a finish_reason on every chunk, which no server streams
    # (OpenAI sends null until the end), so this stream is read without strict validation.
    loose = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    whole = loose.completions.create(model=MODEL_ID, prompt="The dog", max_tokens=6, seed=2, echo=True,
                                     extra_body={"ignore_eos": True})
    chunks = list(loose.completions.create(model=MODEL_ID, prompt="The dog", max_tokens=6, seed=2, echo=True, stream=True,
                                           stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in chunks[:-1]) == whole.choices[0].text
    assert chunks[-2].choices[0].finish_reason == "length" and chunks[-1].usage.completion_tokens == 6


# -- embeddings, models, responses, tokens ----------------------------------------------------


def test_embeddings_float_and_base64(client: openai.OpenAI, server: Running) -> None:
    texts = ["The cat sat on the mat", "Hello"]
    direct = server.served.llm.embed(texts)
    as_float = client.embeddings.create(model=MODEL_ID, input=texts, encoding_format="float")
    assert [d.index for d in as_float.data] == [0, 1] and as_float.usage.prompt_tokens == sum(
        len(server.served.llm.tokenize(t)) for t in texts)
    np.testing.assert_allclose(np.array([d.embedding for d in as_float.data]), direct, rtol=1e-6)
    raw = httpx.post(f"{server.url}/v1/embeddings", json={"model": MODEL_ID, "input": texts, "encoding_format": "base64"}).json()
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in raw["data"]])
    np.testing.assert_array_equal(decoded, direct)
    # Without encoding_format the client asks for base64 and decodes it after validation, which
    # strict validation (a list of floats) refuses for any server, OpenAI's too: read it loosely.
    loose = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    default = loose.embeddings.create(model=MODEL_ID, input=texts)
    np.testing.assert_allclose(np.array([d.embedding for d in default.data]), direct, rtol=1e-6)
    ids = client.embeddings.create(model=MODEL_ID, input=server.served.llm.tokenize("Hello"), encoding_format="float")
    np.testing.assert_allclose(ids.data[0].embedding, direct[1], rtol=1e-6)


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    listed = client.models.list()
    assert [m.id for m in listed.data] == [MODEL_ID] and listed.data[0].created > 0
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("org/missing-model")
    assert MODEL_ID in e.value.message and e.value.code == "model_not_found"


def test_encoded_and_absolute_form_paths_reach_the_api(server: Running) -> None:
    for target in ("/v1/%6Dodels", f"http://127.0.0.1:{server.port}/v1/models", f"/v1/models/{MODEL_ID}"):
        with connect(server.port) as s:
            s.sendall(request_bytes("GET", target))
            status, _, body = read_response(s)
        assert status == 200 and MODEL_ID in body.decode(), target
    r = httpx.get(f"{server.url}/v1/models/org%2Fmissing")
    assert r.status_code == 404 and "'org/missing'" in r.json()["error"]["message"]


def test_responses_matches_chat(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=6, seed=4)
    r = client.responses.create(model=MODEL_ID, instructions="You are terse.", input="The cat sat on the mat",
                                max_output_tokens=6, extra_body={"seed": 4})
    assert r.object == "response" and r.output_text == chat.choices[0].message.content
    assert r.status == ("incomplete" if chat.choices[0].finish_reason == "length" else "completed")
    assert r.usage.input_tokens == chat.usage.prompt_tokens and r.usage.output_tokens == chat.usage.completion_tokens
    messages = client.responses.create(model=MODEL_ID, max_output_tokens=6, extra_body={"seed": 4}, input=[
        {"role": "system", "content": "You are terse."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "The cat sat on the mat"}]}])
    assert messages.output_text == r.output_text


def test_responses_stream_events(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model=MODEL_ID, input="Hello", max_output_tokens=5, stream=True,
                                          extra_body={"ignore_eos": True, "seed": 9}))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.incomplete"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert final.output_text == deltas == events[-4].text and final.usage.output_tokens == 5
    assert final.incomplete_details.reason == "max_output_tokens"


def test_tokenize_and_detokenize(server: Running) -> None:
    llm = server.served.llm
    r = httpx.post(f"{server.url}/tokenize", json={"model": MODEL_ID, "prompt": "Hello, world!", "with_pieces": True}).json()
    assert r["tokens"] == llm.tokenize("Hello, world!") and r["count"] == len(r["tokens"]) and r["max_model_len"] == 512
    chat = httpx.post(f"{server.url}/tokenize", json={"model": MODEL_ID, "messages": MESSAGES}).json()
    assert chat["tokens"] == llm.tokenize(llm.chat_prompt(MESSAGES), add_special=False)
    back = httpx.post(f"{server.url}/detokenize", json={"model": MODEL_ID, "tokens": r["tokens"][1:]}).json()
    assert back == {"prompt": "Hello, world!"}


# -- errors: the status and the client's exception class --------------------------------------


def test_wrong_types_and_values_are_400_naming_the_field(client: openai.OpenAI) -> None:
    cases = [({"temperature": "hot"}, "temperature", "invalid_type"), ({"temperature": 7}, "temperature", "invalid_value"),
             ({"n": 0}, "n", "invalid_value"), ({"top_logprobs": 50, "logprobs": True}, "top_logprobs", "invalid_value"),
             ({"stop": 5}, "stop", "invalid_type"), ({"logit_bias": {"abc": 1}}, "logit_bias", "invalid_value")]
    for extra, param, code in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, extra_body=extra)
        assert (e.value.param, e.value.code) == (param, code), extra
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_ID, messages=[{"role": "robot", "content": "x"}])
    assert e.value.param == "messages[0].role"


GENERATING = {"/v1/chat/completions": {"messages": MESSAGES}, "/v1/completions": {"prompt": "The cat"},
              "/v1/responses": {"input": "The cat"}}


@pytest.mark.parametrize("extra,param", [
    ({"repetition_penalty": 100.5}, "repetition_penalty"), ({"repetition_penalty": 0.0009}, "repetition_penalty"),
    ({"top_k": 2**31}, "top_k"), ({"seed": 2**63}, "seed"), ({"seed": -(2**63) - 1}, "seed"),
    ({"logit_bias": {"\u00b9": 1}}, "logit_bias"), ({"logit_bias": {"-1": 1}}, "logit_bias"),
])
def test_values_the_engine_refuses_are_400_before_a_stream_starts(server: Running, extra: dict, param: str) -> None:
    for path, body in GENERATING.items():
        r = httpx.post(f"{server.url}{path}", json={"model": MODEL_ID, "max_tokens": 2, **body, **extra, "stream": True})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (path, extra, r.text)


@pytest.mark.parametrize("extra", [
    {"repetition_penalty": 0.001}, {"repetition_penalty": 100}, {"top_k": 2**31 - 1}, {"seed": 2**63 - 1},
    {"seed": -(2**63)}, {"top_p": 0}, {"top_p": 1e-50}, {"min_p": 1}, {"temperature": 2},
    {"presence_penalty": -2, "frequency_penalty": 2}, {"logit_bias": {"0": -100, "1": 100}}, {"max_tokens": 10**30},
])
def test_values_at_the_bounds_stream_to_the_end(server: Running, extra: dict) -> None:
    for path, body in GENERATING.items():
        limit = {"max_output_tokens" if path == "/v1/responses" else "max_tokens": extra.get("max_tokens", 2)}
        r = httpx.post(f"{server.url}{path}", json={"model": MODEL_ID, **body, **extra, **limit, "stream": True})
        assert r.status_code == 200 and r.text.endswith(("[DONE]\n\n", "}}\n\n")), (path, extra, r.text[-300:])
        assert 'data: {"error"' not in r.text and "event: error" not in r.text, (path, extra)


def test_top_p_zero_keeps_only_the_most_likely_token(client: openai.OpenAI) -> None:
    greedy = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=12, temperature=0,
                                            extra_body={"ignore_eos": True}).choices[0].message.content
    for seed in (1, 2):
        r = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=12, temperature=1.5, top_p=0,
                                           seed=seed, extra_body={"ignore_eos": True, "top_k": 0, "min_p": 0})
        assert r.choices[0].message.content == greedy


@pytest.mark.parametrize("path,cls,body", [
    ("/v1/chat/completions", ChatCompletionRequest, {"messages": [{"role": "user", "content": "Hi", "name": None}]}),
    ("/v1/completions", CompletionRequest, {"prompt": "The cat"}),
    ("/v1/embeddings", EmbeddingRequest, {"input": "The cat"}),
    ("/v1/responses", ResponsesRequest, {"input": "The cat"}),
])
def test_null_for_any_optional_field_means_its_default(server: Running, path: str, cls: type, body: dict) -> None:
    nulls = {k: None for k, f in cls.model_fields.items() if not f.is_required() and k not in body}
    assert {"stream", "n", "ignore_eos"} <= set(nulls) or cls is EmbeddingRequest
    r = httpx.post(f"{server.url}{path}", json={"model": MODEL_ID, **body, **nulls})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text


def test_unsupported_fields_are_400_naming_the_field(client: openai.OpenAI) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, tools=[tool])
    assert e.value.param == "tools" and e.value.code == "unsupported_parameter"
    for field, value in (("suffix", "end"), ("best_of", 3)):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model=MODEL_ID, prompt="x", **{field: value})
        assert e.value.param == field
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL_ID, input="x", previous_response_id="resp_1")
    assert e.value.param == "previous_response_id"


def test_images_and_tool_messages_are_refused_saying_so(client: openai.OpenAI, server: Running) -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    tool_turn = [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"}]
    cases = [([{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}],
              "messages[0].content[1].type", "image inputs are not supported"),
             ([MESSAGES[1], *tool_turn], "messages[2].role", "'tool' messages are not supported")]
    for messages, param, says in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=MODEL_ID, messages=messages, stream=True)
        assert (e.value.param, e.value.code) == (param, "invalid_value") and says in e.value.message
        r = httpx.post(f"{server.url}/tokenize", json={"model": MODEL_ID, "messages": messages})
        assert r.status_code == 400 and r.json()["error"]["param"] == param
    for item, param, says in ((
            {"role": "user", "content": [{"type": "input_image", "image_url": "https://example.com/cat.png"}]},
            "input[0].content[0].type", "image inputs are not supported"),
            ({"type": "function_call_output", "call_id": "c1", "output": "42"}, "input[0].type", "not supported")):
        with pytest.raises(openai.BadRequestError) as e:
            client.responses.create(model=MODEL_ID, input=[item])
        assert (e.value.param, e.value.code) == (param, "invalid_value") and says in e.value.message


def test_prompt_longer_than_context_is_400_naming_the_field(client: openai.OpenAI, server: Running) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "word " * 2000}], stream=True)
    assert e.value.code == "context_length_exceeded" and "512" in e.value.message
    assert e.value.param == "messages"
    long = "word " * 2000
    for path, body, param in (("/v1/completions", {"prompt": [5] * 600}, "prompt"),
                              ("/v1/completions", {"prompt": ["short", long]}, "prompt"),
                              ("/v1/embeddings", {"input": long}, "input"),
                              ("/v1/responses", {"input": long, "stream": True}, "input"),
                              ("/v1/responses", {"messages": [{"role": "user", "content": long}]}, "messages")):
        error = httpx.post(f"{server.url}{path}", json={"model": MODEL_ID, **body}).json()["error"]
        assert (error["code"], error["param"]) == ("context_length_exceeded", param), (path, error)


def test_an_embedding_input_may_fill_all_but_the_engines_one_free_position(server: Running) -> None:
    assert httpx.post(f"{server.url}/v1/embeddings", json={"model": MODEL_ID, "input": [5] * 511}).status_code == 200
    r = httpx.post(f"{server.url}/v1/embeddings", json={"model": MODEL_ID, "input": [5] * 512})
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == "input" and error["code"] == "context_length_exceeded"
    assert "answer" not in error["message"] and "511" in error["message"]


def test_malformed_json_is_400(server: Running) -> None:
    for body in (b"{not json", b"", b"[1, 2]"):
        r = httpx.post(f"{server.url}/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json", body


def test_unknown_route_model_and_method(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert "tiny" in e.value.message
    with pytest.raises(openai.NotFoundError):
        client.get("/no/such/route", cast_to=object)
    with pytest.raises(openai.APIStatusError) as e:
        client.delete("/chat/completions", cast_to=object)
    assert e.value.status_code == 405 and e.value.response.headers["allow"] == "POST"


def test_body_too_large_is_413(model) -> None:
    with running(with_limits(config_for(model), max_body_bytes=2048)) as s:
        with pytest.raises(openai.APIStatusError) as e:
            make_client(s).chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "x" * 5000}])
        assert e.value.status_code == 413 and e.value.code == "request_too_large"


def test_api_keys(model) -> None:
    with running(replace(config_for(model), api_keys=("sk-right", "sk-other"))) as s:
        with pytest.raises(openai.AuthenticationError) as e:
            make_client(s, "sk-wrong").models.list()
        assert e.value.code == "invalid_api_key"
        assert make_client(s, "sk-right").models.list().data[0].id == MODEL_ID
        assert make_client(s, "sk-other").models.list().data[0].id == MODEL_ID
        assert httpx.get(f"{s.url}/v1/models", headers={"Authorization": "Api-Key sk-right"}).status_code == 200
        assert httpx.get(f"{s.url}/v1/models").status_code == 401
        assert httpx.get(f"{s.url}/metrics").status_code == 401
        assert httpx.get(f"{s.url}/health").status_code == 200  # probes need no key


def test_queue_full_is_429_with_retry_after(model) -> None:
    with running(replace(config_for(model), max_running=1, max_waiting=0)) as s:
        c = make_client(s)
        long = c.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=3000, stream=True,
                                         extra_body={"ignore_eos": True})
        next(iter(long))  # the slot is taken
        with pytest.raises(openai.RateLimitError) as e:
            c.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=2)
        assert int(e.value.response.headers["retry-after"]) >= 1 and e.value.code == "rate_limit_exceeded"
        long.close()


def test_engine_fault_is_500_and_loading_is_503(server: Running, client: openai.OpenAI) -> None:
    served = server.served
    real = served.llm

    class Broken:
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        async def astream(self, *a: object, **k: object):
            raise RuntimeError("the kernel failed")
            yield  # pragma: no cover

    server.call(setattr, served, "llm", Broken())
    try:
        with pytest.raises(openai.InternalServerError) as e:
            client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=2)
        assert e.value.status_code == 500 and "the kernel failed" in e.value.message
        with pytest.raises(openai.APIError, match="the kernel failed"):
            list(client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=2, stream=True))
    finally:
        server.call(setattr, served, "llm", real)
    server.call(setattr, served, "state", "loading")
    try:
        with pytest.raises(openai.InternalServerError) as e:
            client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=2)
        assert e.value.status_code == 503 and e.value.code == "model_not_ready"
        health = httpx.get(f"{server.url}/health")
        assert health.status_code == 503 and health.json()["status"] == "loading"
    finally:
        server.call(setattr, served, "state", "ready")


def test_model_uses_are_enforced(model) -> None:
    with running(config_for(model, uses=("embedding",))) as s:
        c = make_client(s)
        assert len(c.embeddings.create(model=MODEL_ID, input="hi", encoding_format="float").data) == 1
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model=MODEL_ID, messages=MESSAGES)
        assert e.value.param == "model"


def test_model_defaults_fill_unset_fields(model) -> None:
    with running(config_for(model, defaults={"max_tokens": 5, "temperature": 0.0})) as s:
        c = make_client(s)
        r = c.chat.completions.create(model=MODEL_ID, messages=MESSAGES, extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 5
        greedy = s.served.llm.chat(MESSAGES, max_tokens=5, temperature=0.0, ignore_eos=True)
        assert r.choices[0].message.content == greedy.text
        assert c.completions.create(model=MODEL_ID, prompt="x", max_tokens=2,
                                    extra_body={"ignore_eos": True}).usage.completion_tokens == 2


def test_ops_endpoints(server: Running, client: openai.OpenAI) -> None:
    client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=3, extra_body={"ignore_eos": True})
    health = httpx.get(f"{server.url}/v1/health").json()
    assert health["status"] == "ok" and health["models"] == [{"id": MODEL_ID, "state": "ready"}] and health["uptime_s"] > 0
    status = httpx.get(f"{server.url}/v1/status").json()
    assert status["backend"] == "native" and status["isa"] in status["available_isas"]
    (m,) = status["models"]
    assert m["threads"] == tritlm.get_num_threads()  # none configured: the kernels' default
    assert m["n_ctx"] == 512 and m["total_bytes"] == m["linear_bytes"] + m["embedding_bytes"] + m["head_bytes"] > 0
    metrics = httpx.get(f"{server.url}/metrics")
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = metrics.text
    for name in ("tritlm_requests_total", "tritlm_prompt_tokens_total", "tritlm_generation_tokens_total",
                 "tritlm_time_to_first_token_seconds_bucket", "tritlm_inter_token_latency_seconds_bucket",
                 "tritlm_requests_running", "tritlm_requests_waiting", "tritlm_kv_cache_usage_ratio",
                 "process_cpu_seconds_total"):
        assert name in text, name
    assert 'tritlm_requests_total{endpoint="/v1/chat/completions",method="POST",status="200"}' in text
    assert server.metric("tritlm_kv_cache_used_tokens", model=MODEL_ID) > 0
    energy = httpx.get(f"{server.url}/v1/energy").json()
    assert energy["generated_tokens"] > 0 and energy["cpu_seconds"] > 0
    assert isinstance(energy["energy_measurable"], bool)
    if not energy["energy_measurable"]:
        assert "joules" not in energy and "not measurable" in energy["energy_note"]


def test_metric_labels_never_take_what_a_client_sends(server: Running) -> None:
    with connect(server.port) as s:
        s.sendall(request_bytes("FOOA", "/v1/xFOOB"))
        assert read_response(s)[0] == 404
    httpx.get(f"{server.url}/v1/models/FOOC")
    httpx.post(f"{server.url}/v1/chat/completions", json={"model": "FOOD", "messages": MESSAGES})
    httpx.post(f"{server.url}/v1/embeddings", json={"model": "FOOE", "input": "x"})
    assert "FOO" not in httpx.get(f"{server.url}/metrics").text
    assert server.metric("tritlm_requests_total", endpoint="unmatched", method="other", status="404") >= 1


def test_status_reports_the_threads_a_model_runs_on(model) -> None:
    with running(config_for(model, threads=1)) as s:
        status = httpx.get(f"{s.url}/v1/status").json()
        assert [m["threads"] for m in status["models"]] == [1] and "threads" not in status


def test_a_refused_cors_preflight_gets_the_error_envelope(model) -> None:
    with running(replace(config_for(model), cors_origins=("https://app.example",))) as s:
        preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        r = httpx.options(f"{s.url}/v1/chat/completions", headers=preflight)
        assert r.status_code == 403 and r.headers["vary"] == "Origin"
        assert r.json() == {"error": {"message": "origin 'https://evil.example' is not allowed to call this server",
                                      "type": "invalid_request_error", "param": None, "code": "origin_not_allowed"}}
        allowed = httpx.options(f"{s.url}/v1/chat/completions", headers={**preflight, "Origin": "https://app.example"})
        assert allowed.status_code == 204 and allowed.headers["access-control-allow-origin"] == "https://app.example"


def test_error_envelope_shape(server: Running) -> None:
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"model": MODEL_ID})
    assert r.status_code == 400
    assert json.loads(r.content) == {"error": {"message": "Missing required parameter: 'messages'.",
                                               "type": "invalid_request_error", "param": "messages",
                                               "code": "missing_required_parameter"}}


def test_a_model_that_fails_to_load_is_unhealthy(model, tmp_path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    config = config_for(model)
    config = replace(config, models=(*config.models, replace(config.models[0], id="broken", path=str(broken))))
    with running(config, wait_ready=False) as s:
        deadline = time.monotonic() + 30
        while (health := httpx.get(f"{s.url}/health")).json()["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert health.status_code == 503 and health.json()["status"] == "unhealthy"
        bad = {m["id"]: m for m in health.json()["models"]}["broken"]
        assert bad["state"] == "failed" and "config.json" in bad["error"]
        with pytest.raises(openai.InternalServerError) as e:
            make_client(s).chat.completions.create(model="broken", messages=MESSAGES)
        assert e.value.status_code == 503 and "failed to load" in e.value.message
        assert make_client(s).chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=2).choices
