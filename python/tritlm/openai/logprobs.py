"""Log-probabilities in OpenAI's two shapes: the chat / Responses shape (token, logprob, bytes,
top_logprobs) and the legacy completions shape (parallel lists plus character offsets), and the
prompt's own log-probabilities for ``echo``."""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..results import TokenLogprob as EngineLogprob
from .wire.common import TokenLogprob, TopLogprob
from .wire.completions import CompletionLogprobs

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..llm import LLM


def to_wire(llm: LLM, entries: Sequence[EngineLogprob] | None) -> list[TokenLogprob]:
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


PromptEntry = tuple[str, bytes, float | None, dict[str, float] | None]


def prompt_logprobs(llm: LLM, ids: list[int], n_special: int, top: int) -> list[PromptEntry]:
    """Each echoed prompt token with its log-probability given the tokens before it (none for a
    first token with nothing before it), for ``LegacyLogprobs.add``. ``n_special`` leading tokens
    (BOS) are context, not text. Computed once per prompt, however many choices echo it.
    Blocking: call from a worker thread."""
    def piece(token_id: int) -> tuple[str, bytes]:
        raw = llm.tokenizer.token_bytes(token_id)
        return raw.decode("utf-8", errors="replace"), raw

    scored = llm.prompt_logprobs(ids, top) if len(ids) > 1 else []
    entries: list[PromptEntry] = []
    for pos in range(n_special, len(ids)):
        text, raw = piece(ids[pos])
        if pos == 0:
            entries.append((text, raw, None, None))
            continue
        logprob, best = scored[pos - 1]
        entries.append((text, raw, logprob, {piece(t)[0]: lp for t, lp in best}))
    return entries
