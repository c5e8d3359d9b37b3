"""tritlm.LLM: load a ternary model and generate text, in-process.

Generation goes through a continuous-batching scheduler (tritlm.scheduler): calls from many
threads or tasks at once, and ``generate([p1, p2, ...])``, are decoded together in one forward
step rather than one after another, and a prompt continues from the longest cached prefix any
earlier request left behind. Sampling runs in C++; the scheduler turns tokens into text and
applies stop strings.
"""

from __future__ import annotations

import numbers
import os
import warnings
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast, overload

import anyio
import anyio.to_thread
import numpy as np

from . import _core, kernels
from .bundled import default_model_path
from .chat_template import render_chat
from .errors import ConfigurationError, ContextOverflowError, EngineClosedError, InvalidArgumentError
from .loaders import load_model
from .results import Completion, Delta
from .scheduler import Channel, Request, Scheduler, SchedulerSettings, Stream
from .tokenizer import Tokenizer

Prompt = str | Sequence[int] | np.ndarray  # text, or token ids
Message = dict[str, Any]

# A stream's reader may fall this many deltas behind before its sequence is paused.
STREAM_BUFFER = 32
# The context when n_ctx is not given and the model states none, and the most it then takes from
# the model's own (a KV cache per sequence of 40k positions, as Qwen3 states, is rarely wanted).
DEFAULT_CTX = 4096


def _integer(name: str, value: object, low: int | None = None, high: int | None = None, *, param: str = "") -> int:
    """``value`` as an int, or InvalidArgumentError naming ``name``: not an integer (a float
    would be truncated silently, a bool is a mistake), or outside low..high."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidArgumentError(f"{name} must be an integer, got {value!r}", param=param or name)
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise InvalidArgumentError(f"{name} must be {bounds}, got {value}", param=param or name)
    return v


def _real(name: str, value: object, low: float, high: float, *, above_low: bool = False, param: str = "") -> float:
    """``value`` as a float, or InvalidArgumentError naming ``name``: not a number, NaN, or
    outside low..high (``above_low``: low itself excluded)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(f"{name} must be a number, got {value!r}", param=param or name)
    v = float(value)
    if not ((low < v) if above_low else (low <= v)) or not v <= high:
        bounds = f"above {low:g} and at most {high:g}" if above_low else f"between {low:g} and {high:g}"
        raise InvalidArgumentError(f"{name} must be {bounds}, got {v!r}", param=param or name)
    return v


# The float sampling settings' ranges (_core.Sampler's own); top_p must also be above 0.
_REAL_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 100.0),
    "top_p": (0.0, 1.0),
    "min_p": (0.0, 1.0),
    "repetition_penalty": (1e-3, 100.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}
MAX_LOGIT_BIAS = 100.0
MAX_LOGPROBS = 20


@dataclass(frozen=True)
class _Sampling:
    """A request's sampling settings once checked."""

    sampler: _core.Sampler  # seeded
    max_tokens: int | None
    stops: list[str]
    logprobs: int | None
    ignore_eos: bool


def _sampling(params: dict[str, Any], n_vocab: int) -> _Sampling:
    """Every sampling setting checked for type and range, here and only here, so a bad one
    raises InvalidArgumentError naming it before any work starts (and never reaches the native
    sampler as a TypeError about its signature)."""
    reals = {
        name: _real(name, params[name], low, high, above_low=name == "top_p")
        for name, (low, high) in _REAL_RANGES.items()
    }
    max_tokens, logprobs, seed = params["max_tokens"], params["logprobs"], params["seed"]
    if not isinstance(params["ignore_eos"], (bool, np.bool_)):
        raise InvalidArgumentError(f"ignore_eos must be a bool, got {params['ignore_eos']!r}", param="ignore_eos")
    sampler = _core.Sampler(
        # A top_k past the vocabulary keeps all of it, as 0 does.
        top_k=min(_integer("top_k", params["top_k"], 0), n_vocab),
        logit_bias=_logit_bias(params["logit_bias"], n_vocab),
        seed=int.from_bytes(os.urandom(8), "little") if seed is None else _integer("seed", seed) & (2**64 - 1),
        **reals,
    )
    return _Sampling(
        sampler=sampler,
        max_tokens=None if max_tokens is None else _integer("max_tokens", max_tokens, 1),
        stops=_stops(params["stop"]),
        logprobs=None if logprobs is None else _integer("logprobs", logprobs, 0, MAX_LOGPROBS),
        ignore_eos=bool(params["ignore_eos"]),
    )


def _logit_bias(bias: object, n_vocab: int) -> list[tuple[int, float]]:
    """(token, bias) pairs. Keys may be ints or, as in OpenAI's JSON, strings of them; a key that
    is no token id is refused rather than ignored, since the caller meant some token."""
    if bias is None:
        return []
    if not isinstance(bias, Mapping):
        raise InvalidArgumentError(f"logit_bias must be a dict of token id to bias, got {bias!r}", param="logit_bias")
    out = []
    for key, value in bias.items():
        token = int(key) if isinstance(key, str) and key.strip().lstrip("-").isdecimal() else key
        token = _integer(f"logit_bias key {key!r}", token, param="logit_bias")
        if not 0 <= token < n_vocab:
            raise InvalidArgumentError(
                f"logit_bias key {key!r} is not a token id (0..{n_vocab - 1})", param="logit_bias"
            )
        out.append((token, _real(f"logit_bias[{key!r}]", value, -MAX_LOGIT_BIAS, MAX_LOGIT_BIAS, param="logit_bias")))
    return out


def _stops(stop: object) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, (list, tuple)) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise InvalidArgumentError(f"stop must be a string or a list of strings, got {stop!r}", param="stop")


def _token_ids(prompt: object) -> list[int]:
    """A prompt given as token ids: a sequence or a 1-D numpy array of integers."""
    if isinstance(prompt, np.ndarray):
        if prompt.ndim != 1 or not np.issubdtype(prompt.dtype, np.integer):
            raise InvalidArgumentError(
                f"prompt token ids must be a 1-D integer array, got {prompt.ndim}-D {prompt.dtype}", param="prompt"
            )
        ids: list[int] = prompt.tolist()
        return ids
    if isinstance(prompt, (bytes, bytearray, memoryview)):
        raise InvalidArgumentError("prompt is bytes: pass text (str) or token ids (a list of ints)", param="prompt")
    if not isinstance(prompt, Sequence):
        raise InvalidArgumentError(
            f"prompt must be text (str) or token ids (a list of ints), got {type(prompt).__name__}", param="prompt"
        )
    for i, t in enumerate(prompt):
        if isinstance(t, bool) or not isinstance(t, numbers.Integral):
            several = isinstance(t, (str, Sequence, np.ndarray))
            raise InvalidArgumentError(
                f"prompt token ids must be integers, got {t!r} at index {i}"
                + ("; a list of prompts is generate()'s (or agenerate()'s), not this call's" if several else ""),
                param="prompt",
            )
    return [int(t) for t in prompt]


def _is_batch(prompt: object) -> bool:
    """Whether generate() was given several prompts: a list whose items are prompts themselves
    (texts or token lists), or a 2-D array of token ids."""
    if isinstance(prompt, np.ndarray):
        return prompt.ndim == 2
    if isinstance(prompt, (str, bytes, bytearray, memoryview)) or not isinstance(prompt, Sequence) or not prompt:
        return False
    return isinstance(prompt[0], (str, bytes, Sequence, np.ndarray))


def _top_entries(logp: np.ndarray, top: int) -> list[tuple[int, float]]:
    """The ``top`` largest entries of ``logp`` as (index, value), largest first, ties by index."""
    if top == 0:
        return []
    threshold = np.partition(logp, logp.size - top)[logp.size - top]
    candidates = np.flatnonzero(logp >= threshold)  # every tie at the threshold, so the order is exact
    order = np.lexsort((candidates, -logp[candidates]))[:top]
    return [(int(candidates[j]), float(logp[candidates[j]])) for j in order]


class LLM:
    """A loaded model. ``path`` is a GGUF file or a Hugging Face folder; None (the default) is
    the small model bundled with tritlm (``tritlm.default_model_path()``)."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        n_threads: int | None = None,
        n_ctx: int | None = None,
        kv_f16: bool = True,
        head: str = "f16",
        max_seqs: int = 8,
        max_batch_tokens: int = 128,
        max_waiting: int = 256,
        kv_budget_tokens: int | None = None,
        use_mmap: bool = True,
    ) -> None:
        """``head="q8"`` keeps the output head as int8 rows with a scale each: half the bytes of
        f16, and at 2B4T size the head is the largest tensor read per token. A 1-bit head (GGUF
        Q1_0) runs on the binary kernel whatever ``head`` says.

        ``max_seqs`` sequences run together (each with a KV cache of ``n_ctx`` positions, whose
        memory is only touched as it fills); ``max_batch_tokens`` bounds one step, and so the
        pause a new prompt causes the running streams; beyond ``max_waiting`` queued requests
        ``QueueFullError`` is raised; ``kv_budget_tokens`` bounds prompt + max_tokens summed
        over the running requests.

        ``n_ctx`` None (the default) is the context the model states, at most 4096 (4096 when it
        states none). A larger one than the model's is allowed with a warning, as llama.cpp
        does: tritlm applies no RoPE scaling, so text past the trained context degrades.

        ``use_mmap`` (llama.cpp's option of the name): a GGUF file's I2_S codes and F16 tables
        are used in place in the file's mapping, so the file must not be modified or truncated
        while the model is loaded (deleting it, or renaming another over it, is safe).
        ``use_mmap=False`` copies them: more memory, and the file may then change."""
        if n_ctx is not None:
            n_ctx = _integer("n_ctx", n_ctx, 1, 2**31 - 1)  # the native sessions' int
        if head not in ("f16", "q8"):
            raise ValueError(f"head must be 'f16' or 'q8', got {head!r}")
        settings = SchedulerSettings(max_seqs, max_batch_tokens, max_waiting, kv_budget_tokens)
        settings.check()
        self.spec = load_model(default_model_path() if path is None else os.fspath(path), use_mmap=use_mmap)
        n_ctx = self._context(n_ctx)
        table = self.spec.weights.get("output", self.spec.weights["token_embd"])  # the head: tied or not
        if head == "q8" and isinstance(table, np.ndarray):  # a packed (1-bit) head stays as it is
            self.spec.weights.pop("output", None)
            q8, scale = kernels.quantize_rows_q8(table)
            self.spec.weights["output.q8"], self.spec.weights["output.q8_scale"] = q8, scale
        elif head == "f16":
            self._f16_head()
        self.tokenizer = Tokenizer(self.spec.tokenizer)
        model = _core.Model(self.spec.config, self.spec.weights)
        self._model: _core.Model | None = model  # None once closed
        self.n_ctx = n_ctx
        try:
            self._scheduler = Scheduler(
                model, self.tokenizer,
                n_ctx=n_ctx, kv_f16=kv_f16, n_threads=n_threads, settings=settings,
            )
        except MemoryError as e:  # the caches are reserved up front (touched only as they fill)
            c = self.spec.config
            per_seq = 2 * c["n_layers"] * c["n_kv_heads"] * c["head_dim"] * (2 if kv_f16 else 4) * n_ctx
            size = f"{per_seq / 2**30:.1f} GiB" if per_seq >= 2**30 else f"{per_seq / 2**20:.1f} MiB"
            raise ConfigurationError(
                f"n_ctx={n_ctx} needs {size} of KV cache for each of max_seqs={max_seqs} "
                "sequences, more than this machine can reserve: lower n_ctx or max_seqs"
            ) from e
        # Async readers wait for their next delta in worker threads; a limiter of their own
        # keeps many open streams from starving other to_thread users. It has a token for each
        # request the queue holds, so a stream's reader always gets one.
        self._readers = anyio.CapacityLimiter(max_seqs + max_waiting + 8)
        # agenerate(list) waits in a worker thread for room in the queue, i.e. for other requests
        # to end, some of them streams that end only as they are read: holding readers' tokens
        # while it waits, enough such calls would leave those streams no reader, and all would
        # wait forever. Its own requests need no reader (their channels are unbounded), so no
        # batch waits on another's token: this limiter bounds threads, never progress.
        self._batch_waiters = anyio.CapacityLimiter(max_seqs + max_waiting + 8)

    def _f16_head(self) -> None:
        """A head held as f32 (an F32, BF16, Q8_0 or Q6_K table: a Hugging Face checkpoint's bf16
        one, the bundled model's) is rounded to f16 for the f16 kernel: the f32 one ran as a plain
        loop, and a 2B4T-sized head took 269 ms a token instead of 28. A tied head is rounded in
        the embedding itself, so it stays one table (half the memory, as a GGUF file's F16
        embedding is); a width the kernel cannot take (not a multiple of 16) keeps f32."""
        w = self.spec.weights
        key = "output" if "output" in w else "token_embd"
        table = w[key]
        if isinstance(table, np.ndarray) and table.dtype == np.float32 and table.shape[1] % 16 == 0:
            w[key] = table.astype(np.float16)

    def _context(self, n_ctx: int | None) -> int:
        """n_ctx, or the default for this model; a warning when it exceeds the trained context."""
        trained = self.spec.config.get("max_position")
        if n_ctx is None:
            return min(trained, DEFAULT_CTX) if trained else DEFAULT_CTX
        if trained and n_ctx > trained:
            warnings.warn(
                f"n_ctx={n_ctx} is beyond the {trained} positions this model was trained on; tritlm applies no "
                "RoPE scaling, so text past that point is likely to degrade",
                RuntimeWarning, stacklevel=3,
            )
        return n_ctx

    # -- information ---------------------------------------------------------------------------

    @property
    def info(self) -> dict[str, Any]:
        """Architecture, sizes, tensor types, how each linear runs, and the chat template."""
        model = self._model  # read once: close() may drop it from another thread meanwhile
        if model is None:
            raise EngineClosedError("the model is closed")
        native = model.info()
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
            "scheduler": vars(self._scheduler.settings),
        }

    @property
    def n_vocab(self) -> int:
        """Token ids this model takes and produces: 0..n_vocab-1, those both the model and its
        tokenizer know (a padded model vocabulary's extra rows are never used)."""
        return self._scheduler.n_vocab

    def stats(self) -> dict[str, int]:
        """Requests running and waiting now, and KV cache positions in use (for monitoring)."""
        return self._scheduler.stats()

    # -- tokens --------------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special=add_special)

    def detokenize(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special=skip_special)

    def _prompt_ids(self, prompt: Prompt) -> list[int]:
        ids = self.tokenize(prompt) if isinstance(prompt, str) else _token_ids(prompt)
        bad = [t for t in ids if not 0 <= t < self.n_vocab]
        if bad:
            raise InvalidArgumentError(
                f"prompt token id {bad[0]} is outside the vocabulary (0..{self.n_vocab - 1})", param="prompt"
            )
        if not ids:
            raise InvalidArgumentError("prompt is empty", param="prompt")
        if len(ids) >= self.n_ctx:
            raise ContextOverflowError(
                f"prompt of {len(ids)} tokens does not fit the context of {self.n_ctx} tokens "
                "(at least one position must remain for the answer)"
            )
        return ids

    # -- whole-text evaluation ------------------------------------------------------------------

    def eval_logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits at every position of ``ids`` [n, vocab], from an empty cache (tests, perplexity)."""
        ids = self._prompt_ids(ids)

        def run(session: _core.Session) -> np.ndarray:
            session.truncate(0)
            return session.eval(np.asarray(ids, dtype=np.int32), "all")

        return self._scheduler.call(run)

    def prompt_logprobs(self, ids: Sequence[int], top: int = 0) -> list[tuple[float, list[tuple[int, float]]]]:
        """For each position p >= 1 of ``ids``: log P(ids[p] | ids[:p]) and the ``top`` most
        likely tokens there as (id, log-probability), most likely first (ties: lower id first).

        The logits go 128 positions at a time, so memory stays at 128 rows of the vocabulary
        however long the prompt (eval_logits holds every row: 2.5 GB at 4096 positions and a
        150k vocabulary), and the top entries are chosen by partition, not a sort of each row."""
        ids = self._prompt_ids(ids)
        vocab = self.n_vocab
        top = min(_integer("top", top, 0), vocab)
        chunk = 128

        def run(session: Any) -> list[tuple[float, list[tuple[int, float]]]]:
            session.truncate(0)
            out: list[tuple[float, list[tuple[int, float]]]] = []
            for start in range(0, len(ids) - 1, chunk):  # the last position predicts nothing asked for
                rows = session.eval(np.asarray(ids[start:start + chunk], dtype=np.int32), "all")
                for i, row in enumerate(rows[: len(ids) - 1 - start]):
                    logp = row[:vocab].astype(np.float64)  # as sampling sees the vocabulary
                    logp -= logp.max()
                    logp -= np.log(np.exp(logp).sum())
                    out.append((float(logp[ids[start + i + 1]]), _top_entries(logp, top)))
            return out

        return self._scheduler.call(run)

    def embed(self, texts: str | Sequence[Prompt]) -> np.ndarray:
        """Mean-pooled final hidden states, L2-normalized: [len(texts), dim] float32. An empty
        list gives [0, dim], as numpy does for an empty batch, so a caller embedding a list
        that may be empty (a filtered set of documents) needs no special case."""
        batch = [self._prompt_ids(t) for t in ([texts] if isinstance(texts, str) else list(texts))]
        dim = self.spec.config["dim"]

        def run(session: _core.Session) -> np.ndarray:
            out = np.empty((len(batch), dim), np.float32)
            for row, ids in enumerate(batch):
                session.truncate(0)
                v = session.eval(np.asarray(ids, dtype=np.int32), "hidden").mean(axis=0)
                out[row] = v / max(float(np.linalg.norm(v)), 1e-12)
            return out

        return self._scheduler.call(run)

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
    ) -> Stream:
        """Yield text deltas as they are decoded; the last Delta carries the finish reason and the
        whole Completion. Closing the stream stops generation at the next step."""
        req = self._request(prompt, STREAM_BUFFER, locals())
        self._scheduler.submit(req)
        return Stream(self._scheduler, req, self)

    def _request(self, prompt: Prompt, buffer: int | None, params: dict[str, Any]) -> Request:
        """A request for a prompt, its sampling settings checked (not queued yet)."""
        sampling = _sampling(params, self.n_vocab)
        ids = self._prompt_ids(prompt)
        room = self.n_ctx - len(ids)
        req = Request(
            ids=ids,
            sampler=sampling.sampler,
            max_new=room if sampling.max_tokens is None else min(sampling.max_tokens, room),
            stops=sampling.stops,
            logprobs=sampling.logprobs,
            ignore_eos=sampling.ignore_eos,
            channel=Channel(buffer),
        )
        return req

    @overload
    def generate(self, prompt: str | Sequence[int], **kwargs: Any) -> Completion: ...
    @overload
    def generate(self, prompt: Sequence[Prompt], **kwargs: Any) -> list[Completion]: ...
    @overload
    def generate(self, prompt: np.ndarray, **kwargs: Any) -> Completion | list[Completion]: ...

    def generate(self, prompt: Prompt | Sequence[Prompt], **kwargs: Any) -> Completion | list[Completion]:
        """Generate to completion; the same keyword arguments as ``stream``. ``prompt`` may be a
        list of prompts (strings or token lists): they run together, batched, and a list of
        Completions comes back in the same order. However many there are: beyond what the
        queue holds (max_seqs + max_waiting), the rest are queued as earlier ones end."""
        if not _is_batch(prompt):
            return _collect(self.stream(cast(Prompt, prompt), **kwargs))
        reqs, streams = self._batch(prompt, kwargs)
        try:
            return self._run_batch(reqs, streams)
        finally:
            for s in streams:
                s.close()

    def _batch(self, prompts: Any, kwargs: dict[str, Any]) -> tuple[list[Request], list[Stream]]:
        """Requests (and their streams) for several prompts, every one checked before any runs."""
        unknown = set(kwargs) - set(_stream_defaults())
        if unknown:
            raise TypeError(f"generate() got unexpected keyword arguments: {sorted(unknown)}")
        params = {**_stream_defaults(), **kwargs}
        reqs = [self._request(p, None, params) for p in prompts]
        return reqs, [Stream(self._scheduler, r, self) for r in reqs]

    def _run_batch(self, reqs: list[Request], streams: list[Stream]) -> list[Completion]:
        self._scheduler.submit_all(reqs)
        return [_collect(s) for s in streams]

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

    def chat_stream(self, messages: Sequence[Message], **kwargs: Any) -> Stream:
        return self.stream(self._chat_ids(messages), **kwargs)

    # -- async twins: a worker thread waits for each delta; the event loop never blocks -------

    async def astream(self, prompt: Prompt, **kwargs: Any) -> AsyncIterator[Delta]:
        stream = await anyio.to_thread.run_sync(lambda: self.stream(prompt, **kwargs))
        try:
            while (delta := await anyio.to_thread.run_sync(
                stream.next_or_none, abandon_on_cancel=True, limiter=self._readers
            )) is not None:
                yield delta
        finally:
            stream.close()

    @overload
    async def agenerate(self, prompt: str | Sequence[int], **kwargs: Any) -> Completion: ...
    @overload
    async def agenerate(self, prompt: Sequence[Prompt], **kwargs: Any) -> list[Completion]: ...
    @overload
    async def agenerate(self, prompt: np.ndarray, **kwargs: Any) -> Completion | list[Completion]: ...

    async def agenerate(self, prompt: Prompt | Sequence[Prompt], **kwargs: Any) -> Completion | list[Completion]:
        """``generate``'s twin, a list of prompts included."""
        if _is_batch(prompt):
            reqs, streams = await anyio.to_thread.run_sync(lambda: self._batch(prompt, kwargs))
            try:
                return await anyio.to_thread.run_sync(
                    lambda: self._run_batch(reqs, streams), abandon_on_cancel=True, limiter=self._batch_waiters
                )
            finally:  # on cancellation too: the requests stop at the next step
                for s in streams:
                    s.close()
        completion = None
        async for delta in self.astream(cast(Prompt, prompt), **kwargs):
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
        """Stop the engine (requests still running end with EngineClosedError) and free the KV
        caches and the weights now rather than at garbage collection."""
        self._scheduler.close()
        self._model = None
        self.spec.weights.clear()

    def __del__(self) -> None:
        scheduler = getattr(self, "_scheduler", None)
        if scheduler is not None:
            scheduler.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stream_defaults() -> dict[str, Any]:
    """stream()'s keyword arguments and their defaults."""
    import inspect

    return {
        name: p.default
        for name, p in inspect.signature(LLM.stream).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def _collect(stream: Stream) -> Completion:
    with stream:
        for delta in stream:
            if delta.completion is not None:
                return delta.completion
    raise AssertionError("a stream ended without its completion")
