"""POST /tokenize and /detokenize."""

from __future__ import annotations

import anyio.to_thread

from ..errors import RequestError
from ..http import Request, Response
from .context import Context, json_response, vocab_size
from .wire.tokens import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse


async def tokenize(ctx: Context, request: Request) -> Response:
    req = TokenizeRequest.parse(request.body)
    served = ctx.catalog.get(req.model)
    llm = served.ready_llm("chat")
    if (req.prompt is None) == (req.messages is None):
        raise RequestError("give exactly one of 'prompt' and 'messages'", param="prompt")

    def run() -> list[int]:
        if req.messages is not None:  # the template writes BOS itself
            return llm.tokenize(llm.chat_prompt([m.plain() for m in req.messages]), add_special=False)
        assert req.prompt is not None  # exactly one of the two: checked above
        return llm.tokenize(req.prompt, add_special=req.add_special_tokens)

    ids = await anyio.to_thread.run_sync(run)
    pieces = [llm.tokenizer.token_bytes(t).decode("utf-8", errors="replace") for t in ids] if req.with_pieces else None
    return json_response(TokenizeResponse(tokens=ids, count=len(ids), max_model_len=llm.n_ctx, pieces=pieces),
                         exclude_none=True)


async def detokenize(ctx: Context, request: Request) -> Response:
    req = DetokenizeRequest.parse(request.body)
    served = ctx.catalog.get(req.model)
    llm = served.ready_llm("chat")
    vocab = vocab_size(llm)
    bad = [t for t in req.tokens if t >= vocab]
    if bad:
        raise RequestError(f"Invalid value for 'tokens': token id {bad[0]} is outside the vocabulary (0..{vocab - 1})",
                           param="tokens")
    text = await anyio.to_thread.run_sync(llm.detokenize, req.tokens)
    return json_response(DetokenizeResponse(prompt=text))
