"""POST /v1/chat/completions."""

from __future__ import annotations

from ..errors import RequestError
from ..http import EventSender, Request, Response, StreamingResponse, sse_response
from ..results import Completion, Delta
from .context import Context, json_response, new_id, note_usage, now, reject_unsupported, stream_guarded, vocab_size
from .generation import OnDelta, cached_tokens, chat_ids, engine_kwargs, jobs_for, run_jobs
from .logprobs import to_wire
from .wire.chat import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChoiceLogprobs,
    ChunkChoice,
    ChunkDelta,
)
from .wire.common import Usage


async def create(ctx: Context, request: Request) -> Response | StreamingResponse:
    req = ChatCompletionRequest.parse(request.body)
    reject_unsupported(req.unsupported())
    if req.top_logprobs is not None and not req.logprobs:
        raise RequestError("Invalid value for 'top_logprobs': it requires 'logprobs' to be true.", param="top_logprobs")
    served = ctx.catalog.get(req.model)
    llm = served.ready_llm("chat")
    ids = await chat_ids(llm, [m.plain() for m in req.messages])
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    kwargs = engine_kwargs(req, served.defaults, max_tokens=req.token_limit, logprobs=logprobs, vocab_size=vocab_size(llm))
    jobs = jobs_for(ids, kwargs, req.seed, req.n)
    ticket = served.admission.enter(req.n)
    request.on_finish(ticket.release)
    ident, created = new_id("chatcmpl"), now()

    def logprobs_of(delta: Delta) -> ChoiceLogprobs | None:
        return ChoiceLogprobs(content=to_wire(llm, delta.logprobs)) if req.logprobs else None

    async def generate(on_delta: OnDelta | None = None) -> tuple[list[Completion], Usage]:
        async with ticket:
            ctx.observer.prompt_tokens(served.id, len(ids))
            done = await run_jobs(llm, jobs, model=served.id, started=request.received_at, observer=ctx.observer,
                                  on_delta=on_delta)
        usage = Usage.of(len(ids), sum(c.usage.completion_tokens for c in done), cached_tokens(done))
        note_usage(request, usage.prompt_tokens, usage.completion_tokens)
        return done, usage

    if not req.stream:
        done, usage = await generate()
        return json_response(ChatCompletion(
            id=ident, created=created, model=served.id, system_fingerprint=served.fingerprint, usage=usage,
            choices=[ChatChoice(index=i, message=AssistantMessage(content=c.text), finish_reason=c.finish_reason,
                                logprobs=ChoiceLogprobs(content=to_wire(llm, c.logprobs)) if req.logprobs else None)
                     for i, c in enumerate(done)],
        ))

    include_usage = req.stream_options is not None and req.stream_options.include_usage

    def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        return ChatCompletionChunk(id=ident, created=created, model=served.id, system_fingerprint=served.fingerprint,
                                   choices=choices, usage=usage).model_dump_json(exclude=None if include_usage else {"usage"})

    async def produce(events: EventSender) -> None:
        async def body() -> None:
            async def on_delta(index: int, delta: Delta) -> None:
                if delta.finish_reason is not None:
                    await events.send(chunk([ChunkChoice(index=index, delta=ChunkDelta(),
                                                         finish_reason=delta.finish_reason)]))
                elif delta.text or delta.logprobs:
                    await events.send(chunk([ChunkChoice(index=index, delta=ChunkDelta(content=delta.text),
                                                         logprobs=logprobs_of(delta))]))

            for index in range(req.n):
                await events.send(chunk([ChunkChoice(index=index, delta=ChunkDelta(role="assistant", content=""))]))
            _, usage = await generate(on_delta)
            if include_usage:
                await events.send(chunk([], usage))
            await events.send("[DONE]")

        await stream_guarded(events, body)

    return sse_response(produce, ping_interval=ctx.ping_interval)
