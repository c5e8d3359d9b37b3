"""Log-probabilities in OpenAI's two shapes: the chat / Responses shape (token, logprob, bytes,
top_logprobs) and the legacy completions shape (parallel lists plus character offsets), and the
prompt's own log-probabilities for ``echo``."""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..results import TokenLogprob as EngineLogprob
from .wire.common import TokenLogprob, TopLogprob
from .wire.completions import CompletionLogprobs


def to_wire(llm: Any, entries: Sequence[EngineLogprob] | None) -> list[TokenLogprob]:
    def raw(token_id: int) -> list[int]:
        return list(llm.tokenizer.token_bytes(token_id))

    return [
        TokenLogprob(token=e.token, logprob=e.logprob, bytes=list(e.bytes),
                     top_logprobs=[TopLogprob(token=t, logprob=lp, bytes=raw(tid)) for t, tid, lp in e.top])
        for e in entries or []
    ]


class LegacyLogprobs:
    """Builds the completions ``logprobs`` object token by token; offsets count characters of the
    returned text (the echoed prompt included), bytes of split UTF-8 characters counted once."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._offset = 0
        self.tokens: list[str] = []
        self.token_logprobs: list[float | None] = []
        self.top_logprobs: list[dict[str, float] | None] = []
        self.text_offset: list[int] = []

    def add(self, token: str, raw: bytes, logprob: float | None, top: dict[str, float] | None) -> None:
        self.tokens.append(token)
        self.token_logprobs.append(logprob)
        self.top_logprobs.append(top)
        self.text_offset.append(self._offset)
        self._offset += len(self._decoder.decode(raw))

    def add_generated(self, entries: Sequence[EngineLogprob] | None) -> None:
        for e in entries or []:
            self.add(e.token, bytes(e.bytes), e.logprob, {t: lp for t, _, lp in e.top})

    def take(self) -> CompletionLogprobs:
        """What was added since the last take (a stream sends each token's once)."""
        out = CompletionLogprobs(tokens=self.tokens, token_logprobs=self.token_logprobs,
                                 top_logprobs=self.top_logprobs, text_offset=self.text_offset)
        self.tokens, self.token_logprobs, self.top_logprobs, self.text_offset = [], [], [], []
        return out


def add_prompt_logprobs(llm: Any, ids: list[int], n_special: int, top: int, out: LegacyLogprobs) -> None:
    """Each echoed prompt token's log-probability given the tokens before it (none for a first
    token with nothing before it). ``n_special`` leading tokens (BOS) are context, not text.
    Blocking: call from a worker thread."""
    logits = np.asarray(llm.eval_logits(ids), dtype=np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    for pos in range(n_special, len(ids)):
        raw = llm.tokenizer.token_bytes(ids[pos])
        piece = raw.decode("utf-8", errors="replace")
        if pos == 0:
            out.add(piece, raw, None, None)
            continue
        row = logp[pos - 1]
        best = np.argsort(-row, kind="stable")[:top]
        out.add(piece, raw, float(row[ids[pos]]),
                {llm.tokenizer.token_bytes(int(t)).decode("utf-8", errors="replace"): float(row[t]) for t in best})
