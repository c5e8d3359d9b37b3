"""POST /v1/embeddings: mean-pooled, L2-normalized final hidden states."""

from __future__ import annotations

import base64

import anyio.to_thread
import numpy as np

from ..errors import RequestError
from ..http import Request, Response
from .context import Context, json_response, note_usage, vocab_size
from .generation import prompt_ids
from .wire.embeddings import Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage


async def create(ctx: Context, request: Request) -> Response:
    req = EmbeddingRequest.parse(request.body)
    served = ctx.catalog.get(req.model)
    llm = served.ready_llm("embedding")
    inputs = req.inputs()
    if not inputs:
        raise RequestError("Invalid value for 'input': no input given", param="input")
    dim = int(llm.info["config"]["dim"])
    if req.dimensions is not None and req.dimensions != dim:
        raise RequestError(f"Invalid value for 'dimensions': model {served.id!r} embeds in {dim} dimensions only",
                           param="dimensions")
    vocab = vocab_size(llm)
    ids_list = [await prompt_ids(llm, x, vocab, "input", generating=False) for x in inputs]
    ticket = served.admission.enter(1)
    request.on_finish(ticket.release)
    async with ticket:
        ctx.observer.prompt_tokens(served.id, sum(len(ids) for ids in ids_list))
        vectors = await anyio.to_thread.run_sync(llm.embed, ids_list)
    tokens = sum(len(ids) for ids in ids_list)
    note_usage(request, tokens, 0)
    return json_response(EmbeddingResponse(
        model=served.id,
        usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
        data=[Embedding(index=i, embedding=_encode(v, req.encoding_format)) for i, v in enumerate(vectors)],
    ))


def _encode(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":  # what the official clients request by default: little-endian float32
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]
