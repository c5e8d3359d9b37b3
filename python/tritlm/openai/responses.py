"""POST /v1/responses: the Responses API over the chat template, with its stream of typed events
(response.created ... response.output_text.delta ... response.completed)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from ..errors import RequestError
from ..http import EventSender, Request, Response, StreamingResponse, sse_response
from ..results import Completion, Delta
from .context import Context, json_response, new_id, note_usage, now, reject_unsupported, stream_guarded, vocab_size
from .errors import classify
from .generation import OnDelta, chat_ids, engine_kwargs, jobs_for, run_jobs
from .logprobs import to_wire
from .wire.common import TokenLogprob
from .wire.responses import (
    ContentPartEvent,
    ErrorEvent,
    IncompleteDetails,
    InputTokensDetails,
    OutputItemEvent,
    OutputMessage,
    OutputText,
    ResponseLifecycleEvent,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
    Status,
    TextDeltaEvent,
    TextDoneEvent,
)


async def create(ctx: Context, request: Request) -> Response | StreamingResponse:
    req = ResponsesRequest.parse(request.body)
    reject_unsupported(req.unsupported())
    served = ctx.catalog.get(req.model)
    llm = served.ready_llm("chat")
    messages = req.chat_messages()
    if not messages:
        raise RequestError("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    ids = await chat_ids(llm, messages, "input" if req.input is not None else "messages")
    logprobs = (req.top_logprobs or 0) if req.wants_logprobs else None
    kwargs = engine_kwargs(req, served.defaults, max_tokens=req.max_output_tokens, logprobs=logprobs,
                           vocab_size=vocab_size(llm))
    jobs = jobs_for(ids, kwargs, req.seed, 1)
    ticket = served.admission.enter(1)
    request.on_finish(ticket.release)
    response_id, message_id, created = new_id("resp"), new_id("msg"), now()

    def response(status: Status, output: list[OutputMessage], done: Completion | None = None) -> ResponseObject:
        usage = None
        if done is not None:
            u = done.usage
            usage = ResponseUsage(
                input_tokens=u.prompt_tokens, output_tokens=u.completion_tokens, total_tokens=u.total_tokens,
                input_tokens_details=InputTokensDetails(cached_tokens=u.cached_tokens,
                                                        cache_write_tokens=u.prompt_tokens - u.cached_tokens))
        return ResponseObject(
            id=response_id, created_at=created, status=status, model=served.id, output=output,
            incomplete_details=IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None,
            instructions=req.instructions, max_output_tokens=req.max_output_tokens, metadata=req.metadata or {},
            temperature=req.temperature, top_p=req.top_p, top_logprobs=req.top_logprobs, usage=usage, user=req.user,
        )

    def message(status: Status, text: str | None = None, lps: list[TokenLogprob] | None = None) -> OutputMessage:
        content = [] if text is None else [OutputText(text=text, logprobs=lps or [])]
        return OutputMessage(id=message_id, status=status, content=content)

    def final_status(done: Completion) -> Status:
        return "incomplete" if done.finish_reason == "length" else "completed"

    async def generate(on_delta: OnDelta | None = None) -> Completion:
        async with ticket:
            ctx.observer.prompt_tokens(served.id, len(ids))
            (done,) = await run_jobs(llm, jobs, model=served.id, started=request.received_at, observer=ctx.observer,
                                     on_delta=on_delta)
        note_usage(request, done.usage.prompt_tokens, done.usage.completion_tokens)
        return done

    if not req.stream:
        done = await generate()
        status = final_status(done)
        return json_response(response(status, [message(status, done.text, to_wire(llm, done.logprobs))], done))

    async def produce(events: EventSender) -> None:
        sequence = 0

        async def emit(event: BaseModel) -> None:
            nonlocal sequence
            payload: Any = event
            payload.sequence_number = sequence
            sequence += 1
            await events.send(event.model_dump_json(), event=payload.type)

        async def on_error(error: BaseException) -> None:
            _, err, _ = classify(error)
            await emit(ErrorEvent(sequence_number=0, code=err.code, message=err.message, param=err.param))

        async def body() -> None:
            where: dict[str, Any] = dict(item_id=message_id, output_index=0, content_index=0)
            await emit(ResponseLifecycleEvent(type="response.created", sequence_number=0, response=response("in_progress", [])))
            await emit(ResponseLifecycleEvent(type="response.in_progress", sequence_number=0, response=response("in_progress", [])))
            await emit(OutputItemEvent(type="response.output_item.added", sequence_number=0, output_index=0,
                                       item=message("in_progress")))
            await emit(ContentPartEvent(type="response.content_part.added", sequence_number=0, part=OutputText(text=""), **where))

            async def on_delta(index: int, delta: Delta) -> None:
                if delta.text or delta.logprobs:
                    await emit(TextDeltaEvent(sequence_number=0, delta=delta.text, logprobs=to_wire(llm, delta.logprobs), **where))

            done = await generate(on_delta)
            status = final_status(done)
            lps = to_wire(llm, done.logprobs)
            await emit(TextDoneEvent(sequence_number=0, text=done.text, logprobs=lps, **where))
            await emit(ContentPartEvent(type="response.content_part.done", sequence_number=0,
                                        part=OutputText(text=done.text, logprobs=lps), **where))
            item = message(status, done.text, lps)
            await emit(OutputItemEvent(type="response.output_item.done", sequence_number=0, output_index=0, item=item))
            kind: Literal["response.completed", "response.incomplete"] = (
                "response.completed" if status == "completed" else "response.incomplete")
            await emit(ResponseLifecycleEvent(type=kind, sequence_number=0, response=response(status, [item], done)))

        await stream_guarded(events, body, on_error)

    return sse_response(produce, ping_interval=ctx.ping_interval)
