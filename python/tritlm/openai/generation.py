"""What every generating endpoint shares: engine keyword arguments from a request and the
model's defaults, per-choice seeds, prompt preparation with the context check done before any
response starts, and running a request's sequences concurrently with timing reported.

Blocking engine work (tokenizing, templates) runs in worker threads; generation runs through
``LLM.astream``, whose every step is a worker-thread call, so the event loop stays free.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import numpy as np

from ..errors import ClientDisconnected, RequestError
from ..results import Completion, Delta
from .served import Observer
from .wire.common import SamplingFields

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..llm import LLM

# Request fields passed to the engine as they are, when set (else the model's default, if any).
ENGINE_FIELDS = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                 "repetition_penalty")
# Keys a model's [defaults] table may hold (checked when the configuration is read).
DEFAULT_KEYS = frozenset((*ENGINE_FIELDS, "max_tokens", "stop", "ignore_eos"))

OnDelta = Callable[[int, Delta], Awaitable[None]]


@dataclass
class Job:
    """One sequence to generate: the prompt's tokens and the engine's keyword arguments."""

    ids: list[int]
    kwargs: dict[str, Any]


def engine_kwargs(
    req: SamplingFields, defaults: dict[str, Any], *, max_tokens: int | None, logprobs: int | None, vocab_size: int
) -> dict[str, Any]:
    kw: dict[str, Any] = {k: v for k, v in defaults.items() if k in DEFAULT_KEYS}
    for name in ENGINE_FIELDS:
        value = getattr(req, name)
        if value is not None:
            kw[name] = value
    if kw.get("top_k") == -1:
        kw["top_k"] = 0  # vLLM's spelling of "no top-k"
    if "top_p" in kw and np.float32(kw["top_p"]) == 0:
        # OpenAI's top_p=0 keeps only the most likely token. The engine wants top_p > 0 in
        # float32 (where 1e-50 is 0 too); top_k=1 is the same cut, ties to the lower id as greedy.
        kw["top_p"], kw["top_k"] = 1.0, 1
    if max_tokens is not None:
        kw["max_tokens"] = max_tokens
    kw.setdefault("max_tokens", None)  # until the context is full, as OpenAI's chat default
    if req.stop is not None:
        kw["stop"] = req.stop
    if req.ignore_eos:
        kw["ignore_eos"] = True
    if req.logit_bias:
        kw["logit_bias"] = _logit_bias(req.logit_bias, vocab_size)
    kw["logprobs"] = logprobs
    return kw


def _logit_bias(bias: dict[str, float], vocab_size: int) -> dict[int, float]:
    out = {}
    for key, value in bias.items():
        if not (key.isascii() and key.isdigit()) or int(key) >= vocab_size:  # "¹" is a digit to isdigit
            raise RequestError(
                f"Invalid value for 'logit_bias': key {key!r} is not a token id (0..{vocab_size - 1})",
                param="logit_bias",
            )
        out[int(key)] = value
    return out


def choice_seeds(seed: int | None, n: int) -> list[int | None]:
    """Choice 0 uses the request's seed itself (so n=1 matches the Python API with that seed);
    choice i > 0 a seed hashed from it, so the whole response is reproducible."""
    if seed is None:
        return [None] * n
    return [seed if i == 0 else int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(), "little")
            for i in range(n)]


def jobs_for(ids: list[int], kwargs: dict[str, Any], seed: int | None, n: int) -> list[Job]:
    return [Job(ids, {**kwargs, "seed": s}) for s in choice_seeds(seed, n)]


async def chat_ids(llm: LLM, messages: list[dict[str, Any]], param: str = "messages") -> list[int]:
    """The chat template applied and tokenized (the template writes BOS itself), context checked;
    ``param`` is the request field the messages came from."""
    def render() -> list[int]:
        return llm.tokenize(llm.chat_prompt(messages), add_special=False)

    return check_fits(llm, await anyio.to_thread.run_sync(render), param)


async def prompt_ids(llm: LLM, prompt: str | list[int], vocab_size: int, param: str = "prompt", *,
                     generating: bool = True) -> list[int]:
    if isinstance(prompt, str):
        ids = await anyio.to_thread.run_sync(llm.tokenize, prompt)
    else:
        bad = [t for t in prompt if not 0 <= t < vocab_size]
        if bad:
            raise RequestError(f"Invalid value for '{param}': token id {bad[0]} is outside the vocabulary "
                               f"(0..{vocab_size - 1})", param=param)
        ids = list(prompt)
    return check_fits(llm, ids, param, generating=generating)


def check_fits(llm: LLM, ids: list[int], param: str, *, generating: bool = True) -> list[int]:
    """``ids`` if they leave the engine a free position: for the answer of a generation, and (the
    engine's rule, LLM._prompt_ids) for an embedding too, though that generates nothing."""
    if not ids:
        raise RequestError(f"Invalid value for '{param}': the prompt is empty", param=param)
    if len(ids) >= llm.n_ctx:
        why = "leaving no room for the answer" if generating else f"more than the {llm.n_ctx - 1} an input may use"
        raise RequestError(
            f"This model's maximum context length is {llm.n_ctx} tokens. However, your {param} resulted in "
            f"{len(ids)} tokens, {why}. Please reduce the length of the {param}.",
            param=param, code="context_length_exceeded",
        )
    return ids


async def run_jobs(
    llm: LLM, jobs: Sequence[Job], *, model: str, started: float, observer: Observer, on_delta: OnDelta | None = None
) -> list[Completion]:
    """Generate every job concurrently; ``on_delta(index, delta)`` sees each piece as it comes.

    Cancelling the caller (a client that left) closes every engine stream, which stops
    generation at the next token. The first failure cancels the others and is raised as is."""
    results: list[Completion | None] = [None] * len(jobs)
    failures: list[Exception] = []

    async def one(index: int, job: Job) -> None:
        last: float | None = None
        try:
            async for delta in llm.astream(job.ids, **job.kwargs):
                if delta.token_ids:
                    now = time.monotonic()
                    if last is None:
                        observer.first_token(model, now - started)
                    else:
                        observer.next_token(model, now - last)
                    last = now
                if delta.completion is not None:
                    results[index] = delta.completion
                if on_delta is not None:
                    await on_delta(index, delta)
        except Exception as e:
            failures.append(e)
            tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        for index, job in enumerate(jobs):
            tg.start_soon(one, index, job)
    if failures:  # a client gone matters more than the engine errors its cancellation caused
        raise next((f for f in failures if isinstance(f, ClientDisconnected)), failures[0])
    done = [r for r in results if r is not None]
    assert len(done) == len(jobs), "every engine stream ends with a Completion"
    return done


def cached_tokens(completions: Sequence[Completion]) -> int:
    """Prompt tokens already in the cache for every copy of the prompt."""
    return min(c.usage.cached_tokens for c in completions)
