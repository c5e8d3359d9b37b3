"""The Python generation API on a small random model: results, streaming, stop strings, seeds,
logprobs, chat, async twins, embeddings, errors and the command line."""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable

import anyio
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import model_factory as mf  # noqa: E402

import tritlm  # noqa: E402
import tritlm.scheduler  # noqa: E402
from tritlm.errors import (  # noqa: E402
    ChatTemplateError, ConfigurationError, ContextOverflowError, EngineClosedError, InvalidArgumentError,
    InvalidMessagesError, ModelLoadError,
)

PROMPT = "The cat sat on the mat; the dog"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory):
    return mf.build_master(tmp_path_factory.mktemp("model"), dtype="bfloat16", seed=3)


@pytest.fixture(scope="module")
def llm(folder) -> tritlm.LLM:
    return tritlm.LLM(folder, n_ctx=256)


def test_generate_returns_text_tokens_usage_and_timings(llm: tritlm.LLM) -> None:
    out = llm.generate(PROMPT, max_tokens=12, temperature=0, ignore_eos=True)
    assert out.finish_reason == "length"
    assert len(out.token_ids) == 12
    assert out.text == llm.detokenize(out.token_ids)
    assert out.usage.prompt_tokens == len(llm.tokenize(PROMPT))
    assert out.usage.completion_tokens == 12 and out.usage.total_tokens == out.usage.prompt_tokens + 12
    t = out.timings
    assert 0 < t.time_to_first_token_s <= t.total_s and t.generation_tokens_per_s > 0 and t.prompt_tokens_per_s > 0


def test_stream_concatenates_to_generate(llm: tritlm.LLM) -> None:
    deltas = list(llm.stream(PROMPT, max_tokens=10, temperature=0, ignore_eos=True))
    final = deltas[-1]
    assert final.finish_reason == "length" and final.completion is not None
    assert "".join(d.text for d in deltas) == final.completion.text
    assert final.completion.text == llm.generate(PROMPT, max_tokens=10, temperature=0, ignore_eos=True).text


def test_same_seed_same_output_and_prefix_cache_is_exact(llm: tritlm.LLM) -> None:
    a = llm.generate(PROMPT, max_tokens=16, temperature=1.0, seed=123, ignore_eos=True)
    llm.generate("Something else entirely", max_tokens=3, temperature=0)
    b = llm.generate(PROMPT, max_tokens=16, temperature=1.0, seed=123, ignore_eos=True)
    c = llm.generate(PROMPT, max_tokens=16, temperature=1.0, seed=123, ignore_eos=True)
    assert a.token_ids == b.token_ids == c.token_ids
    assert c.usage.cached_tokens == c.usage.prompt_tokens - 1  # the whole prompt but its last token


def test_stop_strings_end_the_text_without_leaking(llm: tritlm.LLM) -> None:
    full = llm.generate(PROMPT, max_tokens=20, temperature=0, ignore_eos=True).text
    cut = full[3:6]
    assert cut
    out = llm.generate(PROMPT, max_tokens=20, temperature=0, ignore_eos=True, stop=[cut])
    assert out.finish_reason == "stop"
    assert out.text == full[: full.index(cut)]
    streamed = "".join(d.text for d in llm.stream(PROMPT, max_tokens=20, temperature=0, ignore_eos=True, stop=cut))
    assert streamed == out.text


def test_logprobs_have_the_openai_pieces(llm: tritlm.LLM) -> None:
    out = llm.generate(PROMPT, max_tokens=5, temperature=0, ignore_eos=True, logprobs=3)
    assert out.logprobs is not None and len(out.logprobs) == 5
    for entry, token in zip(out.logprobs, out.token_ids):
        assert entry.token_id == token and entry.logprob <= 0
        assert len(entry.top) == 3 and entry.top[0][1] == token  # greedy picks the most likely
        assert bytes(entry.bytes) == llm.tokenizer.token_bytes(token)


def test_prompt_logprobs_match_the_logits_across_chunks(llm: tritlm.LLM) -> None:
    # 200 positions: the logits come in two chunks of at most 128
    ids = np.random.default_rng(5).integers(0, llm.info["config"]["vocab_size"], 200).tolist()
    logits = llm.eval_logits(ids).astype(np.float64)
    logp = logits - logits.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    got = llm.prompt_logprobs(ids, top=3)
    assert len(got) == len(ids) - 1
    for pos, (lp, best) in enumerate(got, start=1):
        row = logp[pos - 1]
        assert lp == pytest.approx(row[ids[pos]], abs=1e-9)
        want = np.argsort(-row, kind="stable")[:3]
        assert [t for t, _ in best] == want.tolist()
        assert [v for _, v in best] == pytest.approx(row[want].tolist(), abs=1e-9)
    assert all(best == [] for _, best in llm.prompt_logprobs(ids[:5]))
    with pytest.raises(ValueError, match="top"):
        llm.prompt_logprobs(ids, top=-1)


def test_top_entries_break_ties_by_id() -> None:
    from tritlm.llm import _top_entries

    row = np.array([0.5, 2.0, 1.0, 2.0, 1.0, 1.0, -3.0])
    assert _top_entries(row, 4) == [(1, 2.0), (3, 2.0), (2, 1.0), (4, 1.0)]
    assert _top_entries(row, 7)[-1] == (6, -3.0) and _top_entries(row, 0) == []


@pytest.fixture(scope="module")
def padded(tmp_path_factory: pytest.TempPathFactory) -> tritlm.LLM:
    """A model with 320 rows and a tokenizer of 300 ids, as HF configs that pad vocab_size."""
    folder = mf.build_master(tmp_path_factory.mktemp("padded"), dtype="bfloat16", seed=5, vocab=320)
    ids = mf.write_tokenizer(folder, 300)
    config = json.loads((folder / "config.json").read_text())
    config.update(bos_token_id=ids["<|begin_of_text|>"], eos_token_id=ids["<|end_of_text|>"])
    (folder / "config.json").write_text(json.dumps(config))
    return tritlm.LLM(folder, n_ctx=256)


def test_a_padded_vocabulary_never_yields_ids_the_tokenizer_lacks(padded: tritlm.LLM) -> None:
    assert padded.spec.config["vocab_size"] == 320 and padded.n_vocab == 300
    flat = dict(temperature=2.0, top_k=0, top_p=1.0, min_p=0.0, ignore_eos=True)
    outs = padded.generate([PROMPT] * 4, max_tokens=100, logprobs=20, seed=1, **flat)
    ids = [t for o in outs for t in o.token_ids]
    assert len(ids) == 400 and max(ids) < 300
    assert all(t < 300 for o in outs for e in o.logprobs for _, t, _ in e.top)
    assert all(t < 300 for _, top in padded.prompt_logprobs(padded.tokenize(PROMPT), top=20) for t, _ in top)
    with pytest.raises(ValueError, match=r"token id 310 is outside the vocabulary \(0..299\)"):
        padded.generate([1, 310], max_tokens=1)


def test_prompt_as_token_ids_and_bad_ids(llm: tritlm.LLM) -> None:
    ids = llm.tokenize(PROMPT)
    assert llm.generate(ids, max_tokens=4, temperature=0).token_ids == llm.generate(PROMPT, max_tokens=4, temperature=0).token_ids
    with pytest.raises(ValueError, match="outside the vocabulary"):
        llm.generate([1, 10**6], max_tokens=2)
    with pytest.raises(ValueError, match="prompt is empty"):
        llm.generate([], max_tokens=2)


def test_odd_prompts_work_or_are_refused_by_name(llm: tritlm.LLM) -> None:
    ids = llm.tokenize(PROMPT)
    want = llm.generate(ids, max_tokens=3, temperature=0, ignore_eos=True).token_ids
    for array in (np.array(ids), np.array(ids, dtype=np.int16), tuple(ids)):
        assert llm.generate(array, max_tokens=3, temperature=0, ignore_eos=True).token_ids == want
    two = llm.generate(np.array([ids, ids]), max_tokens=3, temperature=0, ignore_eos=True)
    assert [c.token_ids for c in two] == [want, want]
    refused = [
        (b"hello", "prompt is bytes"), (None, "got NoneType"), (5, "got int"),
        ([1.5, 2.7], "prompt token ids must be integers, got 1.5 at index 0"), ([1, True], "got True at index 1"),
        (np.array([1.5]), "1-D integer array, got 1-D float64"),
    ]
    for prompt, message in refused:
        with pytest.raises(InvalidArgumentError, match=message) as e:
            llm.generate(prompt, max_tokens=2)
        assert e.value.param == "prompt"
    with pytest.raises(InvalidArgumentError, match="a list of prompts is generate"):
        llm.stream(["a", "b"])
    with pytest.raises(InvalidArgumentError, match=r"lone surrogate '\\ud800' at index 1") as e:
        llm.generate("a\ud800b", max_tokens=2)
    with pytest.raises(InvalidArgumentError, match="lone surrogate"):
        llm.chat([{"role": "user", "content": "\udcff"}], max_tokens=2)
    with pytest.raises(InvalidArgumentError, match="must be a str, got int"):
        llm.tokenize(123)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="top must be at least 0"):
        llm.prompt_logprobs(ids, top=-1)


def test_context_overflow_names_both_lengths(folder) -> None:
    small = tritlm.LLM(folder, n_ctx=16)
    with pytest.raises(ContextOverflowError, match=r"prompt of \d+ tokens does not fit the context of 16 tokens"):
        small.generate("word " * 40, max_tokens=2)
    out = small.generate("Hello", max_tokens=100, temperature=0, ignore_eos=True)
    assert out.finish_reason == "length" and out.usage.total_tokens == 16


def test_the_default_context_is_the_models_own_capped_at_4096(folder, tmp_path) -> None:
    assert tritlm.LLM(folder).n_ctx == 512  # max_position_embeddings
    for stated, want in ((40960, 4096), (None, 4096)):
        copy = shutil.copytree(folder, tmp_path / str(stated))
        config = json.loads((copy / "config.json").read_text())
        config["max_position_embeddings"] = stated
        (copy / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
        assert tritlm.LLM(copy, max_seqs=1).n_ctx == want


def test_a_context_beyond_the_trained_one_warns(folder) -> None:
    with pytest.warns(RuntimeWarning, match="n_ctx=1024 is beyond the 512 positions this model was trained on"):
        llm = tritlm.LLM(folder, n_ctx=1024, max_seqs=1)
    assert llm.n_ctx == 1024


@pytest.mark.parametrize("n_ctx, message", [
    (0, "n_ctx must be between 1 and 2147483647, got 0"), (2**31, "n_ctx must be between 1 and 2147483647"),
    (64.5, "n_ctx must be an integer, got 64.5"), ("64", "n_ctx must be an integer"), (True, "n_ctx must be an integer"),
])
def test_bad_n_ctx_is_named(folder, n_ctx: object, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        tritlm.LLM(folder, n_ctx=n_ctx)


def test_a_context_too_large_to_reserve_says_how_much_it_needs(folder, monkeypatch: pytest.MonkeyPatch) -> None:
    def session(*args: object) -> None:
        raise MemoryError("std::bad_alloc")  # what a reservation beyond the address space gives

    monkeypatch.setattr(tritlm.scheduler._core, "Session", session)
    with pytest.raises(ConfigurationError, match=r"n_ctx=400 needs 0.4 MiB of KV cache for each of max_seqs=2 "):
        tritlm.LLM(folder, n_ctx=400, max_seqs=2)


NAN = float("nan")


@pytest.mark.parametrize(
    "kwargs, message",
    [({"temperature": -0.5}, "temperature must be between 0 and 100, got -0.5"),
     ({"temperature": NAN}, "temperature must be between 0 and 100, got nan"),
     ({"temperature": "0.5"}, "temperature must be a number, got '0.5'"),
     ({"top_p": 0.0}, "top_p must be above 0 and at most 1"), ({"top_p": NAN}, "top_p must be above 0"),
     ({"min_p": 1.5}, "min_p must be between 0 and 1"), ({"min_p": NAN}, "min_p"),
     ({"repetition_penalty": float("inf")}, "repetition_penalty must be between 0.001 and 100, got inf"),
     ({"presence_penalty": 5}, "presence_penalty"), ({"frequency_penalty": NAN}, "frequency_penalty"),
     ({"top_k": -1}, "top_k must be at least 0"), ({"top_k": 2.0}, "top_k must be an integer, got 2.0"),
     ({"max_tokens": 0}, "max_tokens must be at least 1"), ({"max_tokens": 2.5}, "max_tokens must be an integer, got 2.5"),
     ({"max_tokens": True}, "max_tokens must be an integer, got True"),
     ({"logprobs": 21}, "logprobs must be between 0 and 20"), ({"logprobs": 1.0}, "logprobs must be an integer"),
     ({"seed": 1.5}, "seed must be an integer, got 1.5"), ({"ignore_eos": "yes"}, "ignore_eos must be a bool"),
     ({"stop": b"x"}, "stop must be a string or a list of strings"), ({"stop": ["a", 1]}, "stop must be"),
     ({"logit_bias": {3: 500}}, r"logit_bias\[3\] must be between -100 and 100, got 500"),
     ({"logit_bias": {3: NAN}}, r"logit_bias\[3\] must be between"),
     ({"logit_bias": {10**6: 1.0}}, r"logit_bias key 1000000 is not a token id \(0..299\)"),
     ({"logit_bias": {-1: 1.0}}, "logit_bias key -1 is not a token id"),
     ({"logit_bias": {"x": 1.0}}, "logit_bias key 'x' must be an integer"),
     ({"logit_bias": [(3, 1.0)]}, "logit_bias must be a dict")],
)
def test_invalid_sampling_values_name_the_field(llm: tritlm.LLM, kwargs: dict, message: str) -> None:
    """Checked before any work, in Python, so nothing reaches the native sampler as a TypeError
    about its signature; ValueError and TypeError both catch it."""
    field = next(iter(kwargs))
    with pytest.raises(InvalidArgumentError, match=message) as e:
        llm.generate(PROMPT, **kwargs)
    assert e.value.param == field and isinstance(e.value, ValueError) and isinstance(e.value, TypeError)
    with pytest.raises(InvalidArgumentError, match=message):
        llm.generate([PROMPT, PROMPT], **kwargs)


def test_sampling_values_at_the_edges_work(llm: tritlm.LLM) -> None:
    greedy = llm.generate(PROMPT, max_tokens=4, temperature=0, ignore_eos=True).token_ids
    # A top_k past the vocabulary keeps all of it (2**31 no longer overflows the native int).
    assert llm.generate(PROMPT, max_tokens=4, temperature=0, top_k=2**31, ignore_eos=True).token_ids == greedy
    forced = llm.generate(PROMPT, max_tokens=2, temperature=0, logit_bias={"42": 100, np.int64(43): -100}, ignore_eos=True)
    assert forced.token_ids == [42, 42]  # OpenAI's JSON gives string keys; numpy ints are ints
    seeded = dict(max_tokens=4, temperature=1.0, ignore_eos=True)
    assert llm.generate(PROMPT, seed=-1, **seeded).token_ids == llm.generate(PROMPT, seed=2**64 - 1, **seeded).token_ids
    assert llm.generate(PROMPT, max_tokens=np.int32(3), temperature=np.float32(0), ignore_eos=np.bool_(True)).token_ids == greedy[:3]


def test_chat_uses_the_template_and_validates_messages(llm: tritlm.LLM) -> None:
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    prompt = llm.chat_prompt(messages)
    assert prompt.startswith("<|begin_of_text|>") and prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    out = llm.chat(messages, max_tokens=4, temperature=0, ignore_eos=True)
    assert out.usage.prompt_tokens == len(llm.tokenizer.encode(prompt, add_special=False))
    with pytest.raises(InvalidMessagesError, match="role"):
        llm.chat([{"role": "wizard", "content": "x"}], max_tokens=1)
    with pytest.raises(InvalidMessagesError):
        llm.chat([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}], max_tokens=1)
    assert issubclass(ChatTemplateError, ValueError)


def test_async_twins_match_sync_and_do_not_block(llm: tritlm.LLM) -> None:
    want = llm.generate(PROMPT, max_tokens=6, temperature=0, ignore_eos=True)

    async def main() -> tuple[str, str, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await anyio.sleep(0)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            got = await llm.agenerate(PROMPT, max_tokens=6, temperature=0, ignore_eos=True)
            streamed = "".join([d.text async for d in llm.astream(PROMPT, max_tokens=6, temperature=0, ignore_eos=True)])
            tg.cancel_scope.cancel()
        return got.text, streamed, ticks

    text, streamed, ticks = anyio.run(main)
    assert text == streamed == want.text
    assert ticks > 6  # the event loop kept running while tokens were computed


def test_batches_waiting_for_room_leave_async_streams_their_readers(folder, monkeypatch: pytest.MonkeyPatch) -> None:
    """agenerate(list) calls waiting for room wait on the requests running, which may be async
    streams that end only as they are read: the waiting calls must not hold the worker threads
    those streams' readers need. Here more of them wait than the readers' limiter has tokens,
    for the one slot, held by a stream longer than its buffer."""
    llm = tritlm.LLM(folder, n_ctx=256, max_seqs=1, max_waiting=0)
    n_batches = int(llm._readers.total_tokens) + 1
    entered = threading.Semaphore(0)
    submit_all = llm._scheduler.submit_all

    def counted(reqs: list) -> None:
        entered.release()
        submit_all(reqs)

    monkeypatch.setattr(llm._scheduler, "submit_all", counted)

    async def main() -> tuple[list, list]:
        stream = llm.astream(PROMPT, max_tokens=100, temperature=0, ignore_eos=True)
        first = await stream.__anext__()  # its sequence holds the only slot
        results: list = [None] * n_batches
        async with anyio.create_task_group() as tg:
            async def batch(i: int) -> None:
                results[i] = await llm.agenerate([f"prompt {i}"], max_tokens=2, temperature=0, ignore_eos=True)

            for i in range(n_batches):
                tg.start_soon(batch, i)
            # As many wait for room as the readers have tokens; reading on takes one more.
            for _ in range(n_batches - 1):
                assert await anyio.to_thread.run_sync(entered.acquire, True, 60)
            deltas = [first] + [d async for d in stream]
        return deltas, results

    out: list = []
    thread = threading.Thread(target=lambda: out.append(anyio.run(main)), daemon=True)
    thread.start()
    thread.join(120)  # far beyond what the calls need: a bound on a hang, not a timing check
    assert out, "the stream and the batches waiting for its slot hang"
    deltas, results = out[0]
    assert len(deltas[-1].completion.token_ids) == 100
    assert all(len(r) == 1 and r[0].usage.completion_tokens == 2 for r in results)
    llm.close()


def test_embed_is_normalized_and_distinguishes_texts(llm: tritlm.LLM) -> None:
    e = llm.embed(["the cat sat", "the cat sat", "numbers 12345"])
    assert e.shape == (3, llm.spec.config["dim"]) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(e[0], e[1])
    assert e[0] @ e[2] < 0.9999
    np.testing.assert_array_equal(llm.embed(["numbers 12345"])[0], e[2])
    empty = llm.embed([])
    assert empty.shape == (0, llm.spec.config["dim"]) and empty.dtype == np.float32


def test_close_and_context_manager(folder) -> None:
    with tritlm.LLM(folder, n_ctx=32) as m:
        assert m.generate("Hi", max_tokens=2, temperature=0).usage.completion_tokens <= 2
    ids = m.tokenize("Hi")  # the tokenizer is Python and outlives the engine
    calls = {
        "info": lambda: m.info, "eval_logits": lambda: m.eval_logits(ids),
        "prompt_logprobs": lambda: m.prompt_logprobs(ids), "embed": lambda: m.embed("Hi"),
        "generate(text)": lambda: m.generate("Hi", max_tokens=2), "generate(ids)": lambda: m.generate(ids, max_tokens=2),
        "generate(list)": lambda: m.generate(["Hi", ids], max_tokens=2), "stream": lambda: m.stream(ids),
        "chat": lambda: m.chat([{"role": "user", "content": "Hi"}], max_tokens=2),
        "agenerate": lambda: anyio.run(lambda: m.agenerate(ids, max_tokens=2)),
    }
    for name, call in calls.items():
        with pytest.raises(EngineClosedError, match="closed"):
            call()
            pytest.fail(f"{name} worked after close()")


def test_closing_while_others_call_gives_only_engine_closed_errors(folder) -> None:
    m = tritlm.LLM(folder, n_ctx=64)
    ids = m.tokenize(PROMPT)
    unexpected: list[BaseException] = []
    start = threading.Barrier(5)

    def call(fn: Callable[[], object]) -> None:
        start.wait()
        for _ in range(50):
            try:
                fn()
            except EngineClosedError:
                return
            except BaseException as e:  # noqa: BLE001 - collected for the assertion
                unexpected.append(e)
                return

    fns: list[Callable[[], object]] = [lambda: m.info, lambda: m.eval_logits(ids),
                                       lambda: m.generate(ids, max_tokens=2), lambda: m.embed(PROMPT)]
    threads = [threading.Thread(target=call, args=(fn,)) for fn in fns]
    for t in threads:
        t.start()
    start.wait()
    m.close()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads) and unexpected == []


def test_a_stream_keeps_its_model_alive(folder) -> None:
    """LLM.__del__ closes the engine: a stream of an unnamed LLM must keep it alive until read."""
    stream = tritlm.LLM(folder, n_ctx=64).stream(PROMPT, max_tokens=4, temperature=0, ignore_eos=True)
    chat = tritlm.LLM(folder, n_ctx=64).chat_stream([{"role": "user", "content": "Hi"}], max_tokens=3,
                                                     temperature=0, ignore_eos=True)

    async def read_async() -> list:
        return [d async for d in tritlm.LLM(folder, n_ctx=64).astream(PROMPT, max_tokens=2, temperature=0, ignore_eos=True)]

    gc.collect()
    assert len([d for d in stream][-1].completion.token_ids) == 4
    assert len([d for d in chat][-1].completion.token_ids) == 3
    assert len(anyio.run(read_async)[-1].completion.token_ids) == 2


def test_missing_model_is_a_load_error(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="nope"):
        tritlm.LLM(tmp_path / "nope")


def test_info_reports_how_linears_run(llm: tritlm.LLM) -> None:
    info = llm.info
    assert set(info["linears"].values()) == {"ternary"}
    assert info["config"]["activation"] == "relu2" and info["linear_bytes"] > 0


def test_a_bf16_checkpoints_untied_head_runs_in_f16(llm: tritlm.LLM) -> None:
    """The folder's bf16 head (held as f32 by the loader) runs on the f16 kernel: half the bytes,
    and not the plain f32 loop (10x slower at 2B4T's size). The embedding keeps f32."""
    c = llm.info["config"]
    assert llm.info["head_dtype"] == "f16" and llm.info["head_bytes"] == c["vocab_size"] * c["dim"] * 2
    assert llm.spec.weights["token_embd"].dtype == np.float32


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tritlm", *args], capture_output=True, text=True, timeout=180)


def test_cli_generate_info_and_bench(folder) -> None:
    r = _cli("generate", "-m", str(folder), "-n", "8", "--temperature", "0", "Hello")
    assert r.returncode == 0, r.stderr
    assert "tok/s" in r.stderr
    r = _cli("info", str(folder))
    assert r.returncode == 0, r.stderr
    assert "bitnet-b1.58" in r.stdout and "ternary" in r.stdout
    r = _cli("bench", "-m", str(folder), "-p", "16", "-n", "8", "-r", "2")
    assert r.returncode == 0, r.stderr
    assert "pp16" in r.stdout and "tg8" in r.stdout and "% of roofline" in r.stdout
    r = _cli("generate", "-m", str(folder / "missing"), "x")
    assert r.returncode == 2 and "error:" in r.stderr


def test_cli_reports_bad_sampling_values_without_a_traceback(folder) -> None:
    r = _cli("generate", "-m", str(folder), "-n", "2", "--temperature", "0", "--top-k", str(2**31), "Hello")
    assert r.returncode == 0, r.stderr
    r = _cli("generate", "-m", str(folder), "-n", "2", "--temperature", "nan", "Hello")
    assert r.returncode == 2 and "error: temperature must be between 0 and 100, got nan" in r.stderr
    assert "Traceback" not in r.stderr


def test_q8_head_option(folder) -> None:
    llm = tritlm.LLM(folder, n_ctx=64, head="q8")
    assert llm.info["head_dtype"] == "q8"
    out = llm.generate(PROMPT, max_tokens=4, temperature=0, ignore_eos=True)
    assert len(out.token_ids) == 4
    with pytest.raises(ValueError, match="head must be 'f16' or 'q8'"):
        tritlm.LLM(folder, head="q4")


_GENERATE_AFTER_TRUNCATION = """
import sys
import tritlm
llm = tritlm.LLM(sys.argv[1], n_ctx=64, use_mmap=False)
before = llm.generate("The cat", max_tokens=4, temperature=0, ignore_eos=True).text
open(sys.argv[1], "r+b").truncate(0)
print("same" if llm.generate("The cat", max_tokens=4, temperature=0, ignore_eos=True).text == before else "changed")
"""


def test_use_mmap_false_outlives_the_file(folder, tmp_path) -> None:
    """LLM(use_mmap=False) copies a GGUF file's in-place tensors (I2_S codes here), so the
    model keeps working when the file is truncated; run apart, as the mapped default would
    die of SIGBUS (tests/test_loaders.py pins that)."""
    path = mf.build_gguf(folder, tmp_path / "model.gguf", "i2_s")
    p = subprocess.run([sys.executable, "-c", _GENERATE_AFTER_TRUNCATION, str(path)], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == "same", (p.returncode, p.stdout, p.stderr[-2000:])
