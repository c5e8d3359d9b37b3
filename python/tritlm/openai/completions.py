"""POST /v1/completions: one or several prompts (text or token ids), n choices each, echo and
legacy logprobs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio.to_thread

from ..errors import RequestError
from ..http import EventSender, Request, Response, StreamingResponse, sse_response
from ..results import Completion, Delta
from .context import Context, json_response, new_id, note_usage, now, reject_unsupported, stream_guarded, vocab_size
from .generation import cached_tokens, engine_kwargs, jobs_for, prompt_ids, run_jobs
from .logprobs import LegacyLogprobs, PromptEntry, prompt_logprobs
from .wire.common import Usage
from .wire.completions import CompletionChoice, CompletionRequest, CompletionResponse

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..llm import LLM

DEFAULT_MAX_TOKENS = 16  # OpenAI's, for this endpoint


async def create(ctx: Context, request: Request) -> Response | StreamingResponse:
    req = CompletionRequest.parse(request.body)
    reject_unsupported(req.unsupported())
    served = ctx.catalog.get(req.model)
    llm = served.ready_llm("chat")
    prompts = req.prompts()
    if not prompts:
        raise RequestError("Invalid value for 'prompt': no prompt given", param="prompt")
    vocab = vocab_size(llm)
    ids_list = [await prompt_ids(llm, p, vocab) for p in prompts]
    max_tokens = req.max_tokens if req.max_tokens is not None else served.defaults.get("max_tokens", DEFAULT_MAX_TOKENS)
    kwargs = engine_kwargs(req, served.defaults, max_tokens=max_tokens, logprobs=req.logprobs, vocab_size=vocab)
    jobs = [job for ids in ids_list for job in jobs_for(ids, kwargs, req.seed, req.n)]  # choice = prompt * n + i
    ticket = served.admission.enter(len(jobs))
    request.on_finish(ticket.release)
    ident, created = new_id("cmpl"), now()
    echoes = [await _echo_text(llm, p, ids) for p, ids in zip(prompts, ids_list, strict=True)] if req.echo else [""] * len(prompts)

    def prompt_of(choice: int) -> int:
        return choice // req.n

    async def legacy_logprobs() -> list[LegacyLogprobs | None]:
        if req.logprobs is None:
            return [None] * len(jobs)
        echoed: list[list[PromptEntry]] = [[] for _ in prompts]
        if req.echo:  # scored once a prompt, not once a choice (n of them)
            for p, (text, ids) in enumerate(zip(prompts, ids_list, strict=True)):
                special = await _leading_specials(llm, text, ids)
                echoed[p] = await anyio.to_thread.run_sync(prompt_logprobs, llm, ids, special, req.logprobs)
        out: list[LegacyLogprobs | None] = []
        for choice in range(len(jobs)):
            lp = LegacyLogprobs()
            for entry in echoed[prompt_of(choice)]:
                lp.add(*entry)
            out.append(lp)
        return out

    async def generate(
        on_delta: Callable[[int, Delta, LegacyLogprobs | None], Awaitable[None]] | None = None,
        on_start: Callable[[list[LegacyLogprobs | None]], Awaitable[None]] | None = None,
    ) -> tuple[list[Completion], Usage, list[LegacyLogprobs | None]]:
        async with ticket:
            ctx.observer.prompt_tokens(served.id, sum(len(ids) for ids in ids_list))
            logprobs = await legacy_logprobs()
            if on_start is not None:
                await on_start(logprobs)
            done = await run_jobs(llm, jobs, model=served.id, started=request.received_at, observer=ctx.observer,
                                  on_delta=None if on_delta is None else lambda i, d: on_delta(i, d, logprobs[i]))
        cached = sum(cached_tokens(done[p * req.n:(p + 1) * req.n]) for p in range(len(prompts)))
        usage = Usage.of(sum(len(ids) for ids in ids_list), sum(c.usage.completion_tokens for c in done), cached)
        note_usage(request, usage.prompt_tokens, usage.completion_tokens)
        return done, usage, logprobs

    def response(choices: list[CompletionChoice], usage: Usage | None = None) -> CompletionResponse:
        return CompletionResponse(id=ident, created=created, model=served.id, system_fingerprint=served.fingerprint,
                                  choices=choices, usage=usage)

    if not req.stream:
        done, usage, logprobs = await generate()
        choices = []
        for i, (c, lp) in enumerate(zip(done, logprobs, strict=True)):
            if lp is not None:
                lp.add_generated(c.logprobs)
            choices.append(CompletionChoice(index=i, text=echoes[prompt_of(i)] + c.text, finish_reason=c.finish_reason,
                                            logprobs=lp.take() if lp is not None else None))
        return json_response(response(choices, usage))

    include_usage = req.stream_options is not None and req.stream_options.include_usage

    def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> str:
        return response(choices, usage).model_dump_json(exclude=None if include_usage else {"usage"})

    async def produce(events: EventSender) -> None:
        async def on_start(logprobs: list[LegacyLogprobs | None]) -> None:
            if req.echo:
                for i, lp in enumerate(logprobs):
                    await events.send(chunk([CompletionChoice(index=i, text=echoes[prompt_of(i)], finish_reason=None,
                                                              logprobs=lp.take() if lp is not None else None)]))

        async def on_delta(index: int, delta: Delta, lp: LegacyLogprobs | None) -> None:
            if lp is not None:
                lp.add_generated(delta.logprobs)
            if delta.text or delta.logprobs or delta.finish_reason:
                await events.send(chunk([CompletionChoice(index=index, text=delta.text, finish_reason=delta.finish_reason,
                                                          logprobs=lp.take() if lp is not None else None)]))

        async def body() -> None:
            _, usage, _ = await generate(on_delta, on_start)
            if include_usage:
                await events.send(chunk([], usage))
            await events.send("[DONE]")

        await stream_guarded(events, body)

    return sse_response(produce, ping_interval=ctx.ping_interval)


async def _echo_text(llm: LLM, prompt: str | list[int], ids: list[int]) -> str:
    return prompt if isinstance(prompt, str) else await anyio.to_thread.run_sync(llm.detokenize, ids)


async def _leading_specials(llm: LLM, prompt: str | list[int], ids: list[int]) -> int:
    """Tokens the tokenizer put before a text prompt (BOS): context for the echo, not its text."""
    if not isinstance(prompt, str):
        return 0
    plain = await anyio.to_thread.run_sync(lambda: llm.tokenize(prompt, add_special=False))
    return len(ids) - len(plain)
