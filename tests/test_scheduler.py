"""Continuous batching and the prompt prefix cache, through the public API: batched greedy
outputs equal one-at-a-time outputs, cancellation leaves the other sequences untouched, cached
prefixes are reused exactly, and admission control and backpressure hold."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import model_factory as mf  # noqa: E402

import tritlm  # noqa: E402
import tritlm.scheduler  # noqa: E402
from tritlm.errors import EngineClosedError, GenerationError, QueueFullError  # noqa: E402
from tritlm.stop import StopMatcher  # noqa: E402

PROMPTS = [
    "In the beginning",
    "The cat sat on the mat; the dog ran after the ball and the bird flew over the house",
    "x",
    "Numbers: 1 2 3 4 5 6 7 8 9 10 11 12",
    "A much longer prompt. " * 12,
    "Hello there",
    "Once upon a time, in a land far away",
    "Q: what is two plus two? A:",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory):
    return mf.build_master(tmp_path_factory.mktemp("model"), dtype="bfloat16", seed=3)


@pytest.fixture(scope="module")
def llm(folder) -> tritlm.LLM:
    return tritlm.LLM(folder, n_ctx=256, max_seqs=8, max_batch_tokens=64)


def _returns(fn: Callable[[], Any], timeout: float = 120.0) -> Any:
    """fn()'s result (or its exception), run in a thread so that a hang fails the test instead of
    stopping the run; the timeout is far beyond what the call needs, so it never decides a pass."""
    out: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            out.append((True, fn()))
        except BaseException as e:  # noqa: BLE001 - re-raised below
            out.append((False, e))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert out, f"the call did not return within {timeout} s (a hang)"
    ok, value = out[0]
    if not ok:
        raise value
    return value


def _kwargs(i: int, llm: tritlm.LLM) -> dict:
    """Different lengths and stop conditions per prompt: some end on max_tokens, some on a stop
    string taken from their own greedy output, some on end-of-sequence."""
    kw: dict = {"max_tokens": 6 + 3 * i, "temperature": 0}
    if i % 3 == 0:
        kw["ignore_eos"] = True
    if i % 3 == 1:
        full = llm.generate(PROMPTS[i], max_tokens=kw["max_tokens"], temperature=0, ignore_eos=True).text
        kw["stop"] = [full[len(full) // 2 : len(full) // 2 + 2] or "zz"]
        kw["ignore_eos"] = True
    return kw


def test_batched_greedy_equals_one_at_a_time(folder, llm: tritlm.LLM) -> None:
    alone = tritlm.LLM(folder, n_ctx=256, max_seqs=1)
    kwargs = [_kwargs(i, llm) for i in range(len(PROMPTS))]
    want = [alone.generate(p, **kw) for p, kw in zip(PROMPTS, kwargs)]
    for n in range(1, len(PROMPTS) + 1):
        before = llm.stats()["steps"]
        results: list = [None] * n

        def run(i: int) -> None:
            results[i] = llm.generate(PROMPTS[i], **kwargs[i])

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for got, exp in zip(results, want):
            assert got.token_ids == exp.token_ids and got.text == exp.text and got.finish_reason == exp.finish_reason
        assert llm.stats()["steps"] > before
    assert llm.stats()["peak_batch_seqs"] > 1  # threads calling at once were stepped together
    alone.close()


def test_generate_with_a_list_batches(llm: tritlm.LLM) -> None:
    before = llm.stats()
    outs = llm.generate(PROMPTS[:4], max_tokens=10, temperature=0, ignore_eos=True)
    after = llm.stats()
    assert [o.token_ids for o in outs] == [
        llm.generate(p, max_tokens=10, temperature=0, ignore_eos=True).token_ids for p in PROMPTS[:4]
    ]
    # 40 generated tokens took fewer steps than 40: the four sequences decoded together.
    assert after["steps"] - before["steps"] < 20


def test_cancelling_one_stream_leaves_the_others_unchanged(llm: tritlm.LLM) -> None:
    want = [llm.generate(p, max_tokens=20, temperature=0, ignore_eos=True).token_ids for p in PROMPTS[:3]]
    streams = [llm.stream(p, max_tokens=20, temperature=0, ignore_eos=True) for p in PROMPTS[:3]]
    next(streams[1])
    streams[1].close()
    got = []
    for s in (streams[0], streams[2]):
        final = [d for d in s][-1]
        got.append(final.completion.token_ids)
    assert got == [want[0], want[2]]
    deadline = time.monotonic() + 5
    while llm.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert llm.stats()["running"] == 0  # the cancelled sequence's slot was freed


def test_second_chat_turn_processes_only_new_tokens(folder) -> None:
    llm = tritlm.LLM(folder, n_ctx=512, max_seqs=2)
    history = [{"role": "system", "content": "You answer briefly. " * 20}, {"role": "user", "content": "Hi there"}]
    first = llm.chat(history, max_tokens=8, temperature=0, ignore_eos=True)
    history += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And then?"}]
    before = llm.stats()["prompt_tokens_evaluated"]
    second = llm.chat(history, max_tokens=8, temperature=0, ignore_eos=True)
    evaluated = llm.stats()["prompt_tokens_evaluated"] - before
    assert second.usage.cached_tokens >= first.usage.prompt_tokens
    assert evaluated == second.usage.prompt_tokens - second.usage.cached_tokens
    fresh = tritlm.LLM(folder, n_ctx=512, max_seqs=1)
    assert fresh.chat(history, max_tokens=8, temperature=0, ignore_eos=True).token_ids == second.token_ids
    fresh.close()
    llm.close()


def test_a_shared_prefix_is_copied_from_a_busy_slot(llm: tritlm.LLM) -> None:
    system = "Shared system prompt with many words in it. " * 6
    busy = llm.stream(system + "first question", max_tokens=50, temperature=0, ignore_eos=True)
    next(busy)  # its prompt is in a slot, and the slot is busy
    out = llm.generate(system + "second question", max_tokens=4, temperature=0, ignore_eos=True)
    busy.close()
    assert out.usage.cached_tokens >= len(llm.tokenize(system)) - 2
    cold = tritlm.LLM(llm.spec.path, n_ctx=256, max_seqs=1)
    assert cold.generate(system + "second question", max_tokens=4, temperature=0, ignore_eos=True).token_ids == out.token_ids
    cold.close()


def test_queue_full_and_backpressure(folder) -> None:
    llm = tritlm.LLM(folder, n_ctx=256, max_seqs=1, max_waiting=0)
    slow = llm.stream(PROMPTS[0], max_tokens=200, temperature=0, ignore_eos=True)
    next(slow)
    time.sleep(0.5)
    # The unread stream is paused once its buffer is full, rather than running to the end.
    used = llm.stats()["kv_tokens_used"]
    assert used <= len(llm.tokenize(PROMPTS[0])) + tritlm.llm.STREAM_BUFFER + 3
    with pytest.raises(QueueFullError, match="max_waiting=0") as e:
        llm.generate("another", max_tokens=2)
    assert e.value.retry_after >= 1
    assert len([d for d in slow][-1].completion.token_ids) == 200  # reading resumes it
    assert llm.generate("another", max_tokens=2, temperature=0).usage.completion_tokens <= 2
    llm.close()


def test_close_ends_running_streams_with_a_clear_error(folder) -> None:
    llm = tritlm.LLM(folder, n_ctx=256, max_seqs=1)
    s = llm.stream(PROMPTS[1], max_tokens=200, temperature=0, ignore_eos=True)
    next(s)
    llm.close()
    with pytest.raises(EngineClosedError):
        for _ in s:
            pass
    with pytest.raises(EngineClosedError):
        llm.generate("x", max_tokens=1)


def test_bad_scheduler_settings_name_the_field(folder) -> None:
    with pytest.raises(ValueError, match="max_seqs must be at least 1"):
        tritlm.LLM(folder, max_seqs=0)
    with pytest.raises(ValueError, match="max_batch_tokens"):
        tritlm.LLM(folder, max_seqs=8, max_batch_tokens=4)


def test_a_failing_request_ends_alone_and_the_engine_goes_on(folder, monkeypatch: pytest.MonkeyPatch) -> None:
    class Exploding(StopMatcher):
        def push(self, text: str) -> tuple[str, bool]:
            if "BOOM" in self.stops:
                raise RuntimeError("boom")
            return super().push(text)

    monkeypatch.setattr(tritlm.scheduler, "StopMatcher", Exploding)
    llm = tritlm.LLM(folder, n_ctx=256, max_seqs=2)
    good = llm.stream(PROMPTS[0], max_tokens=8, temperature=0, ignore_eos=True)
    bad = llm.stream(PROMPTS[1], max_tokens=8, temperature=0, ignore_eos=True, stop=["BOOM"])
    with pytest.raises(GenerationError, match="RuntimeError: boom") as e:
        _returns(lambda: list(bad))
    assert isinstance(e.value.__cause__, RuntimeError)
    assert len(_returns(lambda: list(good))[-1].completion.token_ids) == 8
    later = _returns(lambda: llm.generate(PROMPTS[2], max_tokens=3, temperature=0, ignore_eos=True))
    assert later.usage.completion_tokens == 3
    llm.close()


def _broken_engine(folder, monkeypatch: pytest.MonkeyPatch, method: str, message: str) -> tritlm.LLM:
    """An LLM whose scheduler's ``method`` raises RuntimeError(message), as a bug in it would."""
    llm = tritlm.LLM(folder, n_ctx=256, max_seqs=1)

    def broken(*_: object) -> list:
        raise RuntimeError(message)

    monkeypatch.setattr(llm._scheduler, method, broken)
    return llm


def test_a_dead_engine_fails_every_call_instead_of_hanging(folder, monkeypatch: pytest.MonkeyPatch) -> None:
    llm = _broken_engine(folder, monkeypatch, "_plan", "a scheduler bug")
    with pytest.raises(EngineClosedError, match=r"internal error \(RuntimeError: a scheduler bug\)"):
        _returns(lambda: llm.generate(PROMPTS[0], max_tokens=3))
    with pytest.raises(EngineClosedError, match="a scheduler bug"):
        _returns(lambda: llm.generate(PROMPTS[0], max_tokens=3))
    with pytest.raises(EngineClosedError, match="a scheduler bug"):
        _returns(lambda: llm.eval_logits(llm.tokenize(PROMPTS[0])))
    llm.close()



def test_a_batch_failure_ends_only_the_sequence_that_fails_alone(folder, monkeypatch: pytest.MonkeyPatch) -> None:
    llm = tritlm.LLM(folder, n_ctx=256, max_seqs=4)
    prompts = [llm.tokenize(p) for p in PROMPTS[:3]]
    want = [llm.generate(p, max_tokens=8, temperature=0, ignore_eos=True).token_ids for p in prompts]
    seen = {t for ids in prompts + want for t in ids}
    poison = next(t for t in range(10, 300) if t not in seen)
    prompts[1] = prompts[1] + [poison]
    real = tritlm.scheduler._core.eval_batch
    batch_sizes: list[int] = []

    def eval_batch(sessions: list, tokens: list, n_threads: int | None) -> list:
        batch_sizes.append(len(sessions))
        if any(poison in t for t in tokens):  # as a token whose embedding row is not finite
            raise ValueError("x: row 0 holds a NaN or an infinity")
        return real(sessions, tokens, n_threads)

    monkeypatch.setattr(tritlm.scheduler._core, "eval_batch", eval_batch)
    # The engine waits inside a job while the three requests queue, so they share one step.
    release = threading.Event()
    waiting = threading.Thread(target=llm._scheduler.call, args=(lambda _: release.wait(60),))
    waiting.start()
    streams = [llm.stream(p, max_tokens=8, temperature=0, ignore_eos=True) for p in prompts]
    release.set()
    waiting.join()
    with pytest.raises(GenerationError, match="could not evaluate this request's tokens: ValueError: x: row 0"):
        _returns(lambda: list(streams[1]))
    got = [_returns(lambda: list(s))[-1].completion.token_ids for s in (streams[0], streams[2])]
    assert got == [want[0], want[2]]
    assert 3 in batch_sizes  # the failure happened in a batch, and only its culprit ended
    assert _returns(lambda: llm.generate(prompts[0], max_tokens=8, temperature=0, ignore_eos=True)).token_ids == want[0]
    llm.close()


def test_generate_runs_a_batch_larger_than_the_queue_holds(folder, llm: tritlm.LLM) -> None:
    small = tritlm.LLM(folder, n_ctx=256, max_seqs=2, max_batch_tokens=2, max_waiting=0)
    kw = dict(max_tokens=5, temperature=0, ignore_eos=True)
    want = [llm.generate(p, **kw).token_ids for p in PROMPTS]
    got = _returns(lambda: small.generate(PROMPTS, **kw))
    assert [c.token_ids for c in got] == want
    got_async = _returns(lambda: anyio.run(lambda: small.agenerate(PROMPTS[:5], **kw)))
    assert [c.token_ids for c in got_async] == want[:5]
    assert small.stats()["peak_batch_seqs"] == 2 and small.stats()["waiting"] == 0
    small.close()


def test_an_abandoned_batch_stops_waiting_for_room(folder, monkeypatch: pytest.MonkeyPatch) -> None:
    """agenerate(list) cancelled while its worker thread waits for room: the worker returns
    then, rather than when room frees or the engine next steps (here neither happens: the slot's
    stream is left unread, and the engine waits inside a call)."""
    llm = tritlm.LLM(folder, n_ctx=256, max_seqs=1, max_waiting=0)
    holder = llm.stream(PROMPTS[0], max_tokens=200, temperature=0, ignore_eos=True)
    next(holder)  # it holds the only slot
    release = threading.Event()
    engine_held = threading.Thread(target=llm._scheduler.call, args=(lambda _: release.wait(120),))
    engine_held.start()
    entered, returned = threading.Event(), threading.Event()
    submit_all = llm._scheduler.submit_all

    def watched(reqs: list) -> None:
        entered.set()
        try:
            submit_all(reqs)
        finally:
            returned.set()

    monkeypatch.setattr(llm._scheduler, "submit_all", watched)

    async def give_up() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: llm.agenerate(PROMPTS[1:3], max_tokens=2))
            assert await anyio.to_thread.run_sync(entered.wait, 60)
            tg.cancel_scope.cancel()

    _returns(lambda: anyio.run(give_up))
    assert returned.wait(60), "the abandoned batch still waits for room"
    release.set()
    engine_held.join()
    assert llm.stats()["waiting"] == 0  # its requests were never queued
    assert len([d for d in holder][-1].completion.token_ids) == 200
    llm.close()


def test_a_crash_before_a_queued_call_runs_fails_the_call(folder, monkeypatch: pytest.MonkeyPatch) -> None:
    llm = _broken_engine(folder, monkeypatch, "_admit", "an admission bug")
    with pytest.raises(EngineClosedError, match="an admission bug"):
        _returns(lambda: llm.eval_logits(llm.tokenize(PROMPTS[0])))
    llm.close()


# A stream, and so its LLM, that only a reference cycle keeps is collected wherever a garbage
# collection happens to run: here on the engine thread while it holds the scheduler's lock.
# Stream.__del__ (cancel) and LLM.__del__ (close) take that lock and must not deadlock there.
# A subprocess, since a deadlocked engine would hang this interpreter's exit.
_COLLECTED_ON_THE_ENGINE = """
import gc, sys
import tritlm, tritlm.scheduler
from tritlm.errors import EngineClosedError

drop_cancelled = tritlm.scheduler.Scheduler._drop_cancelled

def collecting(self):
    gc.collect()
    drop_cancelled(self)

tritlm.scheduler.Scheduler._drop_cancelled = collecting  # called with the lock held
gc.disable()  # collections happen only there
llm = tritlm.LLM(sys.argv[1], n_ctx=64, max_seqs=1)
scheduler = llm._scheduler

class Cycle:
    pass

cycle = Cycle()
cycle.me = cycle
cycle.stream = llm.stream("x", max_tokens=50, ignore_eos=True)
del cycle, llm
try:
    scheduler.call(lambda session: None)  # an engine step, if the collection has not closed it yet
except EngineClosedError:
    pass
scheduler._thread.join(60)
print("engine thread alive:", scheduler._thread.is_alive())
"""


def test_finalizers_collected_on_the_engine_thread_do_not_deadlock(folder) -> None:
    try:
        run = subprocess.run([sys.executable, "-c", _COLLECTED_ON_THE_ENGINE, str(folder)],
                             capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the engine deadlocked in a finalizer")
    assert run.returncode == 0 and "Exception ignored" not in run.stderr, run.stderr
    assert "engine thread alive: False" in run.stdout  # the collected LLM closed its engine
