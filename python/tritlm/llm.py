"""tritlm.LLM: load a ternary model and generate text, in-process.

One LLM owns one native Session (the KV cache of one sequence); calls are serialized by a lock
and a new prompt reuses the cached prefix it shares with the previous one. Sampling runs in C++;
this module turns tokens into text, applies stop strings and builds the results.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import numpy as np

from . import _core, kernels
from .bundled import default_model_path
from .chat_template import render_chat
from .errors import ContextOverflowError
from .loaders import load_model
from .results import Completion, Delta, TokenLogprob, Timings, Usage
from .stop import StopMatcher
from .tokenizer import IncrementalDecoder, Tokenizer

Prompt = str | Sequence[int]
Message = dict[str, Any]


class LLM:
    """A loaded model. ``path`` is a GGUF file or a Hugging Face folder; None (the default) is
    the small model bundled with tritlm (``tritlm.default_model_path()``)."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        n_threads: int | None = None,
        n_ctx: int = 4096,
        kv_f16: bool = True,
        head: str = "f16",
    ) -> None:
        """``head="q8"`` keeps the output head as int8 rows with a scale each: half the bytes of
        f16, and at 2B4T size the head is the largest tensor read per token."""
        if n_ctx < 1:
            raise ValueError(f"n_ctx must be positive, got {n_ctx}")
        if head not in ("f16", "q8"):
            raise ValueError(f"head must be 'f16' or 'q8', got {head!r}")
        self.spec = load_model(default_model_path() if path is None else os.fspath(path))
        if head == "q8":
            table = self.spec.weights.pop("output", None)
            q8, scale = kernels.quantize_rows_q8(table if table is not None else self.spec.weights["token_embd"])
            self.spec.weights["output.q8"], self.spec.weights["output.q8_scale"] = q8, scale
        self.tokenizer = Tokenizer(self.spec.tokenizer)
        self._model = _core.Model(self.spec.config, self.spec.weights)
        self._session = _core.Session(self._model, n_ctx, kv_f16, n_threads)
        self._cached: list[int] = []  # tokens whose keys and values the session holds
        self._lock = threading.Lock()
        self.n_ctx = n_ctx

    # -- information ---------------------------------------------------------------------------

    @property
    def info(self) -> dict[str, Any]:
        """Architecture, sizes, tensor types, how each linear runs, and the chat template."""
        native = self._model.info()
        return {
            "path": self.spec.path,
            "config": dict(self.spec.config),
            "tensor_types": dict(self.spec.tensor_types),
            "linears": native["linears"],
            "linear_bytes": native["linear_bytes"],
            "embedding_bytes": native["embedding_bytes"],
            "tied_head": native["tied_head"],
            "head_bytes": native["head_bytes"],
            "head_dtype": native["head_dtype"],
            "chat_template": self.spec.chat_template,
            "n_ctx": self.n_ctx,
        }

    # -- tokens --------------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special=add_special)

    def detokenize(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special=skip_special)

    def _prompt_ids(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenize(prompt)
        else:
            ids = [int(t) for t in prompt]
            bad = [t for t in ids if not 0 <= t < self._model.vocab_size]
            if bad:
                raise ValueError(f"prompt token id {bad[0]} is outside the vocabulary (0..{self._model.vocab_size - 1})")
        if not ids:
            raise ValueError("prompt is empty")
        if len(ids) >= self.n_ctx:
            raise ContextOverflowError(
                f"prompt of {len(ids)} tokens does not fit the context of {self.n_ctx} tokens "
                "(at least one position must remain for the answer)"
            )
        return ids

    # -- the forward pass ----------------------------------------------------------------------

    def _prefill(self, ids: list[int]) -> tuple[np.ndarray, int]:
        """Logits after ``ids``, reusing the longest cached prefix; returns (logits, reused)."""
        reuse = 0
        for a, b in zip(self._cached, ids[:-1]):
            if a != b:
                break
            reuse += 1
        self._session.truncate(reuse)
        self._cached = self._cached[:reuse]
        logits = self._session.eval(np.asarray(ids[reuse:], dtype=np.int32), "last")
        self._cached = list(ids)
        return logits, reuse

    def eval_logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits at every position of ``ids`` [n, vocab], from an empty cache (tests, perplexity)."""
        ids = self._prompt_ids(ids)
        with self._lock:
            self._session.truncate(0)
            self._cached = []
            out = self._session.eval(np.asarray(ids, dtype=np.int32), "all")
            self._cached = list(ids)
        return out

    def embed(self, texts: str | Sequence[str]) -> np.ndarray:
        """Mean-pooled final hidden states, L2-normalized: [len(texts), dim] float32."""
        batch = [texts] if isinstance(texts, str) else list(texts)
        rows = []
        with self._lock:
            for text in batch:
                ids = self._prompt_ids(text)
                self._session.truncate(0)
                self._cached = []
                hidden = self._session.eval(np.asarray(ids, dtype=np.int32), "hidden")
                self._cached = list(ids)
                v = hidden.mean(axis=0)
                rows.append(v / max(float(np.linalg.norm(v)), 1e-12))
        return np.stack(rows).astype(np.float32)

    # -- generation ----------------------------------------------------------------------------

    def stream(
        self,
        prompt: Prompt,
        *,
        max_tokens: int | None = 256,
        temperature: float = 0.8,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        logprobs: int | None = None,
        repetition_penalty: float = 1.0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        logit_bias: dict[int, float] | None = None,
        ignore_eos: bool = False,
    ) -> Iterator[Delta]:
        """Yield text deltas as they are decoded; the last Delta carries the finish reason and the
        whole Completion. Closing the iterator stops generation at the next token."""
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        if logprobs is not None and not 0 <= logprobs <= 20:
            raise ValueError(f"logprobs must be between 0 and 20, got {logprobs}")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if any(not isinstance(s, str) for s in stops):
            raise TypeError("stop must be a string or a list of strings")
        sampler = _core.Sampler(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repetition_penalty=repetition_penalty,
            presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty,
            logit_bias=[(int(t), float(b)) for t, b in (logit_bias or {}).items()],
            seed=int.from_bytes(os.urandom(8), "little") if seed is None else seed & (2**64 - 1),
        )
        ids = self._prompt_ids(prompt)
        return self._generate(ids, sampler, max_tokens, stops, logprobs, ignore_eos)

    def _generate(
        self,
        ids: list[int],
        sampler: Any,
        max_tokens: int | None,
        stops: list[str],
        logprobs: int | None,
        ignore_eos: bool,
    ) -> Iterator[Delta]:
        with self._lock:
            start = time.perf_counter()
            logits, reused = self._prefill(ids)
            prefill_s = time.perf_counter() - start
            history = list(ids)
            generated: list[int] = []
            decoder = IncrementalDecoder(self.tokenizer)
            matcher = StopMatcher(stops)
            text_parts: list[str] = []
            all_logprobs: list[TokenLogprob] | None = [] if logprobs is not None else None
            finish = "length"
            hit = False
            first_token_s = 0.0
            budget = self.n_ctx - len(ids) if max_tokens is None else min(max_tokens, self.n_ctx - len(ids))
            while len(generated) < budget:
                token, lp, top = sampler.sample(logits, np.asarray(history, dtype=np.int32), logprobs or 0)
                if not first_token_s:
                    first_token_s = time.perf_counter() - start
                if token in self.tokenizer.eos_ids and not ignore_eos:
                    finish = "stop"
                    break
                generated.append(token)
                history.append(token)
                piece_lp = self._logprob_entry(token, lp, top) if all_logprobs is not None else None
                if piece_lp is not None and all_logprobs is not None:
                    all_logprobs.append(piece_lp)
                text, hit = matcher.push(decoder.feed(token))
                text_parts.append(text)
                if hit:
                    finish = "stop"
                    if text:
                        yield Delta(text, [token], [piece_lp] if piece_lp else None)
                    break
                yield Delta(text, [token], [piece_lp] if piece_lp else None)
                if len(generated) >= budget:
                    break
                logits = self._session.eval(np.asarray([token], dtype=np.int32), "last")
                self._cached.append(token)
            if not hit:  # release bytes and text held back for UTF-8 and stop strings
                tail, hit = matcher.push(decoder.flush())
                tail += "" if hit else matcher.flush()
                finish = "stop" if hit else finish
                if tail:
                    text_parts.append(tail)
                    yield Delta(tail, [])
            total = time.perf_counter() - start
            gen_s = max(total - prefill_s, 1e-9)
            completion = Completion(
                text="".join(text_parts),
                token_ids=generated,
                finish_reason=finish,
                usage=Usage(len(ids), len(generated), reused),
                timings=Timings(
                    time_to_first_token_s=first_token_s,
                    prompt_tokens_per_s=(len(ids) - reused) / max(prefill_s, 1e-9),
                    generation_tokens_per_s=max(len(generated) - 1, 0) / gen_s if len(generated) > 1 else 0.0,
                    total_s=total,
                ),
                logprobs=all_logprobs,
            )
            yield Delta("", [], None, finish, completion)

    def _logprob_entry(self, token: int, lp: float, top: list[tuple[int, float]]) -> TokenLogprob:
        def piece(t: int) -> str:
            return self.tokenizer.token_bytes(t).decode("utf-8", errors="replace")

        return TokenLogprob(
            token=piece(token),
            token_id=token,
            logprob=lp,
            bytes=list(self.tokenizer.token_bytes(token)),
            top=[(piece(t), t, p) for t, p in top],
        )

    def generate(self, prompt: Prompt, **kwargs: Any) -> Completion:
        """Generate to completion; the same keyword arguments as ``stream``."""
        completion = None
        for delta in self.stream(prompt, **kwargs):
            completion = delta.completion or completion
        assert completion is not None
        return completion

    # -- chat ----------------------------------------------------------------------------------

    def chat_prompt(self, messages: Sequence[Message]) -> str:
        """The model's chat template applied to ``messages``, ready for generation."""
        tok = self.tokenizer
        return render_chat(
            self.spec.chat_template,
            list(messages),
            add_generation_prompt=True,
            bos_token=tok.id_to_piece(tok.bos_id) if tok.bos_id is not None else "",
            eos_token=tok.id_to_piece(tok.eos_id) if tok.eos_id is not None else "",
        )

    def _chat_ids(self, messages: Sequence[Message]) -> list[int]:
        # The template writes BOS itself when the model wants it.
        return self.tokenizer.encode(self.chat_prompt(messages), add_special=False)

    def chat(self, messages: Sequence[Message], **kwargs: Any) -> Completion:
        return self.generate(self._chat_ids(messages), **kwargs)

    def chat_stream(self, messages: Sequence[Message], **kwargs: Any) -> Iterator[Delta]:
        return self.stream(self._chat_ids(messages), **kwargs)

    # -- async twins: every native call runs in a worker thread, one token at a time --------

    async def astream(self, prompt: Prompt, **kwargs: Any) -> AsyncIterator[Delta]:
        import anyio.to_thread

        it = await anyio.to_thread.run_sync(lambda: self.stream(prompt, **kwargs))
        sentinel = object()
        try:
            while (delta := await anyio.to_thread.run_sync(next, it, sentinel)) is not sentinel:
                yield delta  # type: ignore[misc]
        finally:
            await anyio.to_thread.run_sync(it.close)

    async def agenerate(self, prompt: Prompt, **kwargs: Any) -> Completion:
        completion = None
        async for delta in self.astream(prompt, **kwargs):
            completion = delta.completion or completion
        assert completion is not None
        return completion

    async def achat(self, messages: Sequence[Message], **kwargs: Any) -> Completion:
        return await self.agenerate(self._chat_ids(messages), **kwargs)

    async def achat_stream(self, messages: Sequence[Message], **kwargs: Any) -> AsyncIterator[Delta]:
        async for delta in self.astream(self._chat_ids(messages), **kwargs):
            yield delta

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Free the KV cache and the weights now rather than at garbage collection."""
        with self._lock:
            self._session = None  # type: ignore[assignment]
            self._model = None  # type: ignore[assignment]
            self.spec.weights.clear()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
