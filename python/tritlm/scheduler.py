"""Continuous batching: one engine thread runs every active sequence in one forward step.

Decoding one sequence on a CPU is bound by reading the weights; a step that decodes eight
sequences reads them once. The engine thread owns a fixed set of slots (a native Session, i.e.
a KV cache, each). Requests wait in a bounded FIFO queue, take a free slot at a step boundary,
and have their prompts processed in chunks interleaved with the running decodes, so a long new
prompt never stalls the streams already running for more than one step.

A slot that finishes keeps its cached tokens: the next request whose prompt shares a prefix
with any slot continues from there (a prompt prefix cache, bounded by the slots and evicted
least-recently-used first).

Everything that touches slots runs on the engine thread; other threads only submit, cancel
and read their request's channel. The channel is bounded, so a slow reader throttles its own
sequence (it is left out of steps while its channel is full) and never the others or memory.
"""

from __future__ import annotations

import atexit
import collections
import logging
import threading
import weakref
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from . import _core
from .errors import ContextOverflowError, EngineClosedError, GenerationError, QueueFullError
from .results import Completion, Delta, FinishReason, Timings, TokenLogprob, Usage
from .stop import StopMatcher
from .tokenizer import IncrementalDecoder, Tokenizer

T = TypeVar("T")
log = logging.getLogger("tritlm.engine")


@dataclass(frozen=True)
class SchedulerSettings:
    """How much work one engine takes on at a time."""

    max_seqs: int = 8  # sequences decoded together in one step (and KV caches kept)
    max_batch_tokens: int = 128  # tokens per step: running decodes first, then prompt chunks
    max_waiting: int = 256  # requests queued beyond max_seqs before QueueFullError
    kv_budget_tokens: int | None = None  # prompt + max_tokens summed over running requests

    def check(self) -> None:
        for name in ("max_seqs", "max_batch_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_batch_tokens < self.max_seqs:
            raise ValueError(
                f"max_batch_tokens ({self.max_batch_tokens}) must be at least max_seqs ({self.max_seqs}): "
                "every running sequence decodes one token per step"
            )
        if self.max_batch_tokens > 8192:
            raise ValueError(f"max_batch_tokens must be at most 8192, got {self.max_batch_tokens}")
        if self.max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {self.max_waiting}")
        if self.kv_budget_tokens is not None and self.kv_budget_tokens < 1:
            raise ValueError(f"kv_budget_tokens must be positive, got {self.kv_budget_tokens}")


class Channel:
    """What the engine thread sends one reader: Deltas, then the end (or an exception)."""

    _END = object()

    def __init__(self, capacity: int | None) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._capacity = capacity
        self._cv = threading.Condition()
        self._closed = False

    def room(self) -> bool:
        """Room for one more step's output (a delta and possibly the final one)."""
        return self._capacity is None or len(self._items) + 2 <= self._capacity

    def put(self, item: Delta | BaseException) -> None:
        with self._cv:
            self._items.append(item)
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def get(self) -> Delta | BaseException | None:
        """The next item; None once the channel is closed and drained."""
        with self._cv:
            while not self._items and not self._closed:
                self._cv.wait()
            return self._items.popleft() if self._items else None


@dataclass(eq=False)
class Request:
    """One generation: its prompt and rules, its slot and progress (engine thread only), and
    the channel its reader takes Deltas from."""

    ids: list[int]
    sampler: _core.Sampler  # seeded per request
    max_new: int
    stops: list[str]
    logprobs: int | None
    ignore_eos: bool
    channel: Channel
    cancelled: bool = False
    # Engine-side state.
    slot: Slot | None = None
    done: int = 0  # prompt tokens whose keys and values are in the slot
    reused: int = 0
    pending: int | None = None  # the sampled token not yet run through the model
    generated: list[int] = field(default_factory=list)
    text_parts: list[str] = field(default_factory=list)
    token_logprobs: list[TokenLogprob] | None = None
    decoder: IncrementalDecoder | None = None
    matcher: StopMatcher | None = None
    t_submit: float = 0.0
    t_admit: float = 0.0
    t_prompt_done: float = 0.0
    t_first: float = 0.0

    @property
    def reservation(self) -> int:
        return len(self.ids) + self.max_new


@dataclass(eq=False)
class Slot:
    session: _core.Session
    tokens: list[int] = field(default_factory=list)  # what its KV cache holds, position by position
    busy: bool = False
    last_used: float = 0.0


def logprob_entry(tokenizer: Tokenizer, token: int, lp: float, top: list[tuple[int, float]]) -> TokenLogprob:
    def piece(t: int) -> str:
        return tokenizer.token_bytes(t).decode("utf-8", errors="replace")

    return TokenLogprob(
        token=piece(token),
        token_id=token,
        logprob=lp,
        bytes=list(tokenizer.token_bytes(token)),
        top=[(piece(t), t, p) for t, p in top],
    )


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class Scheduler:
    def __init__(
        self,
        model: _core.Model,
        tokenizer: Tokenizer,
        *,
        n_ctx: int,
        kv_f16: bool,
        n_threads: int | None,
        settings: SchedulerSettings,
    ) -> None:
        settings.check()
        self.settings = settings
        self.n_ctx = n_ctx
        self._model = model
        self._tokenizer = tokenizer
        self._n_threads = n_threads
        # Ids sampling may choose. A model's vocabulary is often padded past its tokenizer's (HF
        # configs round vocab_size up); a padded row was never a training target and has no text,
        # so sampling one would only spend a token on nothing. Only ids both know are candidates.
        self.n_vocab = min(model.vocab_size, tokenizer.vocab_size)
        self._slots = [Slot(_core.Session(model, n_ctx, kv_f16, n_threads)) for _ in range(settings.max_seqs)]
        self._kv_f16 = kv_f16
        self._aux: _core.Session | None = None  # a session for whole-text evaluations (perplexity, embeddings)
        # Reentrant: a finalizer run by a garbage collection (Stream.__del__ cancels, LLM.__del__
        # closes) may take it on a thread that already holds it, e.g. the engine thread mid-loop.
        lock = threading.RLock()
        self._cv = threading.Condition(lock)  # the engine waits on it for work
        self._room_freed = threading.Condition(lock)  # submit_all waits on it for room in the queue
        self._waiting: collections.deque[Request] = collections.deque()
        self._running: list[Request] = []
        self._jobs: collections.deque[tuple[Callable[[], Any], list[Any], threading.Event]] = collections.deque()
        self._closed = False
        self._crash: BaseException | None = None  # what stopped the engine thread, if not close()
        # Counters since start, for monitoring and for tests that check batching happened.
        self._counters = {"steps": 0, "tokens_evaluated": 0, "prompt_tokens_evaluated": 0, "peak_batch_seqs": 0}
        self._thread = threading.Thread(target=self._loop, name="tritlm-engine", daemon=True)
        self._thread.start()
        _live.add(self)

    # -- called from any thread ----------------------------------------------------------------

    def submit(self, req: Request) -> None:
        """Queue a request, or raise QueueFullError when the queue is full."""
        self._check_fits(req)
        with self._cv:
            if self._closed:
                raise self._closed_error(running=False)
            if self._room() < 1:
                raise QueueFullError(
                    f"{len(self._waiting)} requests are already waiting (max_waiting={self.settings.max_waiting})",
                    retry_after=self._retry_after(),
                )
            self._enqueue([req])

    def submit_all(self, reqs: list[Request]) -> None:
        """Queue every request, as many at a time as there is room for (those start in the same
        step), waiting for room as earlier requests end: a batch larger than max_seqs +
        max_waiting still runs whole. Requests cancelled before their turn are skipped, and once
        all that remain are, it returns: a caller that gave up (an abandoned agenerate's worker
        thread) does not stay blocked until room frees."""
        for req in reqs:
            self._check_fits(req)
        pending = list(reqs)
        with self._cv:
            while pending := [r for r in pending if not r.cancelled]:
                if self._closed:
                    raise self._closed_error(running=False)
                room = self._room()
                if room < 1:
                    self._room_freed.wait()  # notified as requests end, on cancel(), close and a crash
                    continue
                self._enqueue(pending[:room])
                pending = pending[room:]

    def _check_fits(self, req: Request) -> None:
        if req.reservation > self.n_ctx:
            raise ContextOverflowError(
                f"prompt of {len(req.ids)} tokens plus {req.max_new} new tokens does not fit the context "
                f"of {self.n_ctx} tokens"
            )

    def _room(self) -> int:
        """Requests the queue takes now: free slots (taken at the next step boundary, so not
        waiting) plus free places among the max_waiting. Counted from the running list, which
        admission fills under the lock, rather than from slots, which are taken outside it."""
        s = self.settings
        return s.max_seqs - len(self._running) + s.max_waiting - len(self._waiting)

    def _enqueue(self, reqs: list[Request]) -> None:
        now = time.perf_counter()
        for req in reqs:
            req.t_submit = now
        self._waiting.extend(reqs)
        self._cv.notify()

    def cancel(self, req: Request) -> None:
        """Stop a request at the next step boundary and free its slot."""
        with self._cv:
            req.cancelled = True
            self._cv.notify()
            self._room_freed.notify_all()  # submit_all drops it if it has not queued it yet

    def wake(self) -> None:
        """A reader made room in its channel: a throttled sequence may step again."""
        with self._cv:
            self._cv.notify()

    def call(self, fn: Callable[[_core.Session], T]) -> T:
        """Run fn(aux_session) on the engine thread between steps, for whole-text evaluations
        that need a cache of their own; returns its result or raises its exception."""
        box: list[Any] = []
        done = threading.Event()
        with self._cv:
            if self._closed:
                raise self._closed_error(running=False)
            self._jobs.append((lambda: fn(self._aux_session()), box, done))
            self._cv.notify()
        done.wait()
        if isinstance(box[0], BaseException):
            raise box[0]
        result: T = box[0]
        return result

    def stats(self) -> dict[str, int]:
        """Requests running and waiting, KV cache positions in use (by running requests) and
        cached (by all slots) out of the capacity, and step and token counters."""
        with self._cv:
            return {
                "running": len(self._running),
                "waiting": len(self._waiting),
                "kv_tokens_used": sum(len(s.tokens) for s in self._slots if s.busy),
                "kv_tokens_cached": sum(len(s.tokens) for s in self._slots),
                "kv_tokens_capacity": self.n_ctx * len(self._slots),
                **self._counters,
            }

    def close(self) -> None:
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._cv.notify()
            self._room_freed.notify_all()
        # On the engine thread (LLM.__del__ run by a collection there) the loop ends by itself once
        # this returns; a thread cannot join itself.
        if threading.current_thread() is not self._thread:
            self._thread.join()

    # -- the engine thread ---------------------------------------------------------------------

    def _free_slots(self) -> int:
        return sum(not s.busy for s in self._slots)

    def _retry_after(self) -> int:
        """Seconds a client should wait: roughly one queue's worth of short requests."""
        return max(1, len(self._waiting) // max(1, self.settings.max_seqs))

    def _aux_session(self) -> _core.Session:
        if self._aux is None:
            self._aux = _core.Session(self._model, self.n_ctx, self._kv_f16, self._n_threads)
        return self._aux

    def _runnable(self) -> bool:
        if any(r.cancelled for r in self._running):
            return True
        if self._waiting and (self._free_slots() or any(r.cancelled for r in self._waiting)):
            return True
        return any(r.pending is None or r.channel.room() for r in self._running)

    def _loop(self) -> None:
        """The engine thread. A failure tied to one request ends only that request (see _fail);
        anything else leaves the engine's state unknown, so it stops, and every request and every
        later call gets EngineClosedError naming the failure rather than waiting forever."""
        try:
            while True:
                with self._cv:
                    self._room_freed.notify_all()  # the last step may have ended requests
                    while not (self._closed or self._jobs or self._runnable()):
                        self._cv.wait()
                    if self._closed:
                        break
                    self._drop_cancelled()
                    admitted = self._admit()
                    # Taken last, so that a crash in the calls above leaves them queued for
                    # _shutdown to fail: taken and then dropped, their callers would wait forever.
                    jobs = list(self._jobs)
                    self._jobs.clear()
                for fn, box, done in jobs:
                    try:
                        box.append(fn())
                    except BaseException as e:  # noqa: BLE001 - handed to the caller
                        box.append(e)
                    done.set()
                for req in admitted:
                    self._guarded(req, self._place, req)
                self._step()
        except BaseException as e:  # noqa: BLE001 - reported to every caller by _shutdown
            log.error("the engine stopped after an internal error", exc_info=e)
            self._crash = e
        finally:
            self._shutdown()

    def _guarded(self, req: Request, fn: Callable[..., None], *args: Any) -> None:
        """Run one request's part of a step; if it raises, end that request with the error."""
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - handed to the request's reader
            self._fail(req, f"generation failed: {type(e).__name__}: {e}", e)

    def _fail(self, req: Request, message: str, cause: BaseException) -> None:
        error = GenerationError(message)
        error.__cause__ = cause
        req.channel.put(error)
        self._release(req)

    def _drop_cancelled(self) -> None:
        for req in [r for r in self._waiting if r.cancelled]:
            self._waiting.remove(req)
            req.channel.close()
        for req in [r for r in self._running if r.cancelled]:
            self._release(req)

    def _admit(self) -> list[Request]:
        """Move waiting requests into free slots while the KV budget allows (FIFO)."""
        admitted: list[Request] = []
        budget = self.settings.kv_budget_tokens
        reserved = sum(r.reservation for r in self._running)
        while self._waiting and self._free_slots() > len(admitted):
            req = self._waiting[0]
            if budget is not None and self._running and reserved + req.reservation > budget:
                break
            self._waiting.popleft()
            reserved += req.reservation
            self._running.append(req)
            admitted.append(req)
        return admitted

    def _place(self, req: Request) -> None:
        """Give a request the free slot that already holds the longest prefix of its prompt,
        or copy that prefix from whichever slot holds it (busy ones included)."""
        prompt = req.ids[:-1]  # the last prompt token always runs, to produce logits
        free = [s for s in self._slots if not s.busy]
        target = max(free, key=lambda s: (common_prefix(s.tokens, prompt), -s.last_used))
        keep = common_prefix(target.tokens, prompt)
        source = max(self._slots, key=lambda s: common_prefix(s.tokens, prompt))
        best = common_prefix(source.tokens, prompt)
        if best > keep:
            target.session.copy_prefix(source.session, best)
            target.tokens = source.tokens[:best]
            keep = best
        else:
            target.session.truncate(keep)
            del target.tokens[keep:]
        target.busy = True
        req.slot, req.done, req.reused = target, keep, keep
        req.t_admit = time.perf_counter()
        req.decoder = IncrementalDecoder(self._tokenizer)
        req.matcher = StopMatcher(req.stops)
        req.token_logprobs = [] if req.logprobs is not None else None

    def _release(self, req: Request) -> None:
        if req in self._running:
            self._running.remove(req)
        if req.slot is not None:
            req.slot.busy = False
            req.slot.last_used = time.perf_counter()
            req.slot = None
        req.channel.close()

    def _plan(self) -> list[tuple[Request, list[int]]]:
        """This step's tokens: one for each decoding sequence whose reader keeps up, then chunks
        of waiting prompts, oldest first, up to max_batch_tokens."""
        plan: list[tuple[Request, list[int]]] = []
        budget = self.settings.max_batch_tokens
        for req in self._running:
            if req.pending is not None and req.channel.room():
                plan.append((req, [req.pending]))
                budget -= 1
        for req in self._running:
            if req.pending is None and req.done < len(req.ids) and budget > 0:
                chunk = req.ids[req.done : req.done + budget]
                plan.append((req, chunk))
                budget -= len(chunk)
        return plan

    def _step(self) -> None:
        plan = self._plan()
        if not plan:
            return
        evaluated = self._evaluate(plan)
        now = time.perf_counter()
        c = self._counters
        c["steps"] += 1
        c["tokens_evaluated"] += sum(len(t) for (_, t), _ in evaluated)
        c["prompt_tokens_evaluated"] += sum(len(t) for (r, t), _ in evaluated if r.pending is None)
        c["peak_batch_seqs"] = max(c["peak_batch_seqs"], len(plan))
        for (req, tokens), row in evaluated:
            assert req.slot is not None
            req.slot.tokens.extend(tokens)
            if req.pending is None:
                req.done += len(tokens)
                if req.done < len(req.ids):
                    continue  # more prompt to go: no token to sample yet
                req.t_prompt_done = now
            self._guarded(req, self._advance, req, row)

    def _evaluate(self, plan: list[tuple[Request, list[int]]]) -> list[tuple[tuple[Request, list[int]], np.ndarray]]:
        """The plan's sequences with their logits, from one forward pass. When the pass fails,
        its error cannot be pinned on a sequence (a non-finite value shows up as a row of some
        intermediate matrix), so each sequence runs again alone: those that fail alone end with
        the error, and the others go on with logits identical to the batch's (rows are exact)."""
        try:
            return list(zip(plan, self._eval(plan)))
        except Exception:  # noqa: BLE001 - retried one sequence at a time below
            pass
        evaluated = []
        for item in plan:
            req, tokens = item
            assert req.slot is not None
            req.slot.session.truncate(len(req.slot.tokens))  # a failed pass may have advanced it
            try:
                evaluated.append((item, self._eval([item])[0]))
            except Exception as e:  # noqa: BLE001 - handed to the request's reader
                self._fail(req, f"the model could not evaluate this request's tokens: {type(e).__name__}: {e}", e)
        return evaluated

    def _eval(self, plan: list[tuple[Request, list[int]]]) -> list[np.ndarray]:
        sessions = []
        for r, _ in plan:
            assert r.slot is not None  # planned requests hold slots
            sessions.append(r.slot.session)
        return _core.eval_batch(sessions, [np.asarray(t, np.int32) for _, t in plan], self._n_threads)

    def _advance(self, req: Request, logits: np.ndarray) -> None:
        """Sample the next token of a request and send its text; finish it when it is done."""
        assert req.decoder is not None and req.matcher is not None
        history = np.asarray(req.ids + req.generated, dtype=np.int32)
        token, lp, top = req.sampler.sample(logits[: self.n_vocab], history, req.logprobs or 0)
        if not req.t_first:
            req.t_first = time.perf_counter()
        if token in self._tokenizer.eos_ids and not req.ignore_eos:
            self._finish(req, "stop")
            return
        req.generated.append(token)
        entry = logprob_entry(self._tokenizer, token, lp, top) if req.token_logprobs is not None else None
        if entry is not None and req.token_logprobs is not None:
            req.token_logprobs.append(entry)
        text, hit = req.matcher.push(req.decoder.feed(token))
        req.text_parts.append(text)
        if text or not hit:
            req.channel.put(Delta(text, [token], [entry] if entry else None))
        if hit:
            self._finish(req, "stop", flushed=True)
        elif len(req.generated) >= req.max_new:
            self._finish(req, "length")
        else:
            req.pending = token

    def _finish(self, req: Request, reason: FinishReason, flushed: bool = False) -> None:
        assert req.decoder is not None and req.matcher is not None
        if not flushed:  # release bytes and text held back for UTF-8 and stop strings
            tail, hit = req.matcher.push(req.decoder.flush())
            tail += "" if hit else req.matcher.flush()
            reason = "stop" if hit else reason
            if tail:
                req.text_parts.append(tail)
                req.channel.put(Delta(tail, []))
        end = time.perf_counter()
        prompt_s = max(req.t_prompt_done - req.t_admit, 1e-9)
        gen_s = max(end - req.t_prompt_done, 1e-9)
        n = len(req.generated)
        completion = Completion(
            text="".join(req.text_parts),
            token_ids=list(req.generated),
            finish_reason=reason,
            usage=Usage(len(req.ids), n, req.reused),
            timings=Timings(
                time_to_first_token_s=req.t_first - req.t_submit,
                prompt_tokens_per_s=(len(req.ids) - req.reused) / prompt_s,
                generation_tokens_per_s=(n - 1) / gen_s if n > 1 else 0.0,
                total_s=end - req.t_submit,
            ),
            logprobs=req.token_logprobs,
        )
        req.channel.put(Delta("", [], None, reason, completion))
        self._release(req)

    def _closed_error(self, running: bool) -> EngineClosedError:
        if self._crash is not None:
            error = EngineClosedError(
                f"the engine stopped after an internal error ({type(self._crash).__name__}: {self._crash})"
            )
            error.__cause__ = self._crash
            return error
        return EngineClosedError("the model was closed while this request ran" if running else "the model is closed")

    def _shutdown(self) -> None:
        with self._cv:
            self._closed = True
            self._room_freed.notify_all()
            for req in list(self._waiting) + list(self._running):
                req.channel.put(self._closed_error(running=True))
                req.channel.close()
            self._waiting.clear()
            self._running.clear()
            jobs = list(self._jobs)
            self._jobs.clear()
        for _, box, done in jobs:
            box.append(self._closed_error(running=False))
            done.set()


# Engines still running at interpreter exit are stopped first, so no engine thread is inside
# native code (or holding the model) while the interpreter tears down.
_live: weakref.WeakSet[Scheduler] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for scheduler in list(_live):
        scheduler.close()


class Stream(Iterator[Delta]):
    """The Deltas of one request. Closing it (or dropping it) cancels the request, which frees
    its slot at the next step boundary.

    ``owner`` is kept for as long as the stream: the object whose end closes the scheduler (an
    LLM closes it when collected), so that ``LLM(...).stream(...)`` can still be read."""

    def __init__(self, scheduler: Scheduler, req: Request, owner: object) -> None:
        self._scheduler = scheduler
        self._req = req
        self._owner = owner
        self._finished = False

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Delta:
        item = self.next_or_none()
        if item is None:
            raise StopIteration
        return item

    def next_or_none(self) -> Delta | None:
        """The next Delta, or None at the end (for callers that cannot catch StopIteration
        across a thread hop)."""
        if self._finished:
            return None
        item = self._req.channel.get()
        self._scheduler.wake()
        if item is None:
            self._finished = True
            if self._req.cancelled:
                return None
            raise EngineClosedError("the request ended without a result")
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        if item.completion is not None:
            self._finished = True
        return item

    def close(self) -> None:
        if not self._finished:
            self._finished = True
            self._scheduler.cancel(self._req)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
