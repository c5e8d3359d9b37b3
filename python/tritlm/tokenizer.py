"""Text <-> token ids for the models tritlm runs, built on the ``tokenizers`` library.

A model's tokenizer comes either as a Hugging Face ``tokenizer.json`` (run as is) or as the
vocabulary fields of a GGUF file, which are rebuilt into an equivalent ``tokenizers`` pipeline:

* ``tokenizer.ggml.model = "gpt2"``: byte-level BPE from the vocab and merges, split first by the
  regex the ``tokenizer.ggml.pre`` name stands for (llama.cpp compiles those regexes in and stores
  only the name, so they are repeated here, taken from the models' own tokenizer.json files).
* ``tokenizer.ggml.model = "llama"``: SentencePiece with byte fallback. llama.cpp encodes these by
  repeatedly merging the adjacent pair whose concatenation is the highest-scoring vocabulary
  piece, which is BPE whose merge ranks are the pieces' scores; the merges are derived from the
  scores the way transformers' converter derives them, so ids match llama.cpp and transformers.

Decoding does not go through ``tokenizers``: every token is turned into its exact bytes
(``token_bytes``), because the OpenAI API reports those bytes, because streaming must hold back a
UTF-8 character split across tokens, and because one byte path keeps ``decode`` and
``IncrementalDecoder`` identical by construction.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as _HFTokenizer

from .errors import InvalidArgumentError, ModelLoadError

__all__ = ["IncrementalDecoder", "Tokenizer", "TokenizerSource"]

# llama.cpp's token types (tokenizer.ggml.token_type); 5, "unused", needs no handling.
TYPE_NORMAL, TYPE_UNKNOWN, TYPE_CONTROL, TYPE_USER_DEFINED, TYPE_BYTE = 1, 2, 3, 4, 6

# Split regexes, verbatim from the models' tokenizer.json (llama.cpp's llama-vocab.cpp keeps them as
# comments above its hand-expanded copies). They differ only in digits: runs of up to three for
# Llama-3, one at a time for Qwen2.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre names, grouped the way llama.cpp's llama-vocab.cpp groups them.
_LLAMA3_PRES = frozenset({"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"})
_QWEN2_PRES = frozenset({"qwen2", "deepseek-r1-qwen", "megrez", "stablelm2", "hunyuan"})
_GPT2_PRES = frozenset({"default", "gpt2", "gpt-2", "mpt", "olmo", "jais"})

# Texts of control tokens that end a turn in common vocabularies; generation stops on them even
# when the file names a different eos (Llama-3 instruct ends turns with <|eot_id|>, while its
# tokenizer.ggml.eos_token_id may be <|end_of_text|>). A subset of llama.cpp's list.
_END_OF_GENERATION_TEXTS = frozenset({
    "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>", "<|end|>",
    "<end_of_turn>", "<EOT>",
})

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SPM_SPACE = "\u2581"  # "▁", SentencePiece's visible space


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, which byte-level vocabularies are
    written in (space is "Ġ", newline "Ċ")."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


_BYTE_DECODER = {c: b for b, c in _bytes_to_unicode().items()}


@dataclass
class TokenizerSource:
    """What a loader found about a model's tokenizer: exactly one of a tokenizer.json text, or the
    GGUF vocabulary fields (``model`` and ``tokens``, plus ``merges`` for "gpt2", ``scores`` for
    "llama").

    ``add_bos`` / ``add_eos`` = None mean "the default for this tokenizer": for tokenizer.json,
    whatever its post-processor adds; for GGUF, llama.cpp's default (BOS for "llama" vocabularies
    and Llama-3-style "gpt2" ones). A loader passes a bool only when the file states one
    (tokenizer.ggml.add_bos_token, tokenizer_config.json add_bos_token).
    """

    tokenizer_json: str | None = None
    model: str | None = None                 # tokenizer.ggml.model: "gpt2" or "llama"
    tokens: list[str] | None = None
    merges: list[str] | None = None          # "gpt2": "left right" strings, best first
    scores: list[float] | None = None        # "llama": higher scores merge first
    token_types: list[int] | None = None     # llama.cpp's types, see TYPE_*
    pre: str | None = None                   # tokenizer.ggml.pre
    add_space_prefix: bool = True            # "llama": tokenizer.ggml.add_space_prefix
    bos_id: int | None = None
    eos_id: int | None = None
    eot_id: int | None = None
    unk_id: int | None = None
    extra_eos_ids: list[int] = field(default_factory=list)  # e.g. generation_config.json's eos list
    add_bos: bool | None = None
    add_eos: bool | None = None

    def __post_init__(self) -> None:
        has_json = self.tokenizer_json is not None
        has_vocab = self.model is not None or self.tokens is not None
        if has_json == has_vocab:
            raise ValueError("TokenizerSource needs exactly one of tokenizer_json or the GGUF fields (model, tokens)")
        if has_vocab and (self.model is None or self.tokens is None):
            raise ValueError("TokenizerSource from GGUF fields needs both model and tokens")


class Tokenizer:
    """A model's tokenizer: ``encode`` text to ids, ``decode`` ids (or ``token_bytes`` of one id) back.

    Special tokens (GGUF control/unknown tokens, tokenizer.json special added tokens) and
    user-defined tokens are matched whole wherever they appear in the text, so a rendered chat
    template's markers become their single ids.

    Attributes: ``bos_id`` / ``eos_id`` (or None; their pieces are a chat template's
    ``bos_token`` / ``eos_token``), ``add_bos`` / ``add_eos`` (what ``encode`` adds), ``eos_ids``
    (every id that ends generation: eos, the end-of-turn ids and control tokens known to end a
    turn), ``special_ids`` (what ``skip_special`` drops).
    """

    special_ids: frozenset[int]

    def __init__(self, source: TokenizerSource) -> None:
        if source.tokenizer_json is not None:
            self._init_from_json(source.tokenizer_json)
        elif source.model == "gpt2":
            self._init_gpt2(source)
        elif source.model == "llama":
            self._init_llama(source)
        else:
            raise ModelLoadError(
                f"tokenizer model {source.model!r} is not supported (supported: 'gpt2' byte-level BPE, "
                "'llama' SentencePiece)"
            )
        self._bytes_cache: dict[int, bytes] = {}
        self.bos_id: int | None = source.bos_id if source.bos_id is not None else self._default_bos
        add_bos = source.add_bos if source.add_bos is not None else self._default_add_bos
        self.add_bos: bool = add_bos and self.bos_id is not None
        eos_id = source.eos_id if source.eos_id is not None else self._default_eos
        add_eos = source.add_eos if source.add_eos is not None else self._default_add_eos
        self.eos_id: int | None = eos_id
        self.add_eos: bool = add_eos and eos_id is not None
        named = {"bos_id": self.bos_id, "eos_id": eos_id, "eot_id": source.eot_id}
        named.update({f"extra_eos_ids[{k}]": i for k, i in enumerate(source.extra_eos_ids)})
        for name, value in named.items():
            if value is not None and not 0 <= value < self.vocab_size:
                raise ModelLoadError(f"tokenizer {name} = {value} is outside the vocabulary (size {self.vocab_size})")
        found = [i for i in self.special_ids if self._added.get(i) in _END_OF_GENERATION_TEXTS]
        ends = [eos_id, source.eot_id, *source.extra_eos_ids, *found]
        self.eos_ids: frozenset[int] = frozenset(i for i in ends if i is not None)

    # ----- construction -------------------------------------------------------------------------

    def _init_from_json(self, text: str) -> None:
        try:
            tk = _HFTokenizer.from_str(text)
            decoder = json.loads(text).get("decoder")
        except Exception as e:  # tokenizers raises plain Exception subclasses for bad files
            raise ModelLoadError(f"tokenizer.json cannot be read: {e}") from e
        kinds = _decoder_types(decoder)
        if "ByteLevel" in kinds:
            self._byte_level = True
            self._strip_leading_space = False
        elif kinds & {"ByteFallback", "Metaspace", "Replace"}:
            self._byte_level = False
            self._strip_leading_space = _decoder_strips_leading_space(decoder)
        else:
            raise ModelLoadError(
                f"tokenizer.json decoder {sorted(kinds) or None} is not supported: tritlm decodes byte-level "
                "BPE (ByteLevel) and SentencePiece-style (Metaspace / Replace + ByteFallback) tokenizers"
            )
        added = tk.get_added_tokens_decoder()
        vocab = tk.get_vocab(with_added_tokens=True)
        size = max(vocab.values(), default=-1) + 1
        pieces: list[str | None] = [None] * size
        for piece, i in vocab.items():
            pieces[i] = piece
        self._tk = tk
        self._pieces = pieces
        self._added = {i: t.content for i, t in added.items()}
        self.special_ids = frozenset(i for i, t in added.items() if t.special)
        self._byte_ids: frozenset[int] = frozenset()
        if "ByteFallback" in kinds:
            self._byte_ids = frozenset(
                i for i, p in enumerate(pieces) if p and _BYTE_PIECE.fullmatch(p) and i not in added
            )
        # What the post-processor adds around a text (transformers' add_special_tokens=True) is this
        # tokenizer's own BOS/EOS policy; encode() adds them itself so it can avoid doubling a BOS.
        bare = tk.encode("a", add_special_tokens=False).ids
        full = tk.encode("a", add_special_tokens=True).ids
        start = next((k for k in range(len(full) - len(bare) + 1) if full[k:k + len(bare)] == bare), 0)
        prefix, suffix = full[:start], full[start + len(bare):]
        self._default_bos = prefix[-1] if prefix else None
        self._default_add_bos = len(prefix) == 1
        self._default_eos = suffix[0] if suffix else None
        self._default_add_eos = len(suffix) == 1

    def _init_gguf_common(self, source: TokenizerSource) -> tuple[list[int], list[str]]:
        """Checks shared by both GGUF vocabularies; returns the token types (NORMAL where absent)
        and the tokens (every id has one, unlike a tokenizer.json vocabulary's)."""
        tokens = source.tokens or []
        if not tokens:
            raise ModelLoadError("tokenizer has an empty vocabulary")
        types = source.token_types
        if types is None:
            types = [TYPE_NORMAL] * len(tokens)
            for i in (source.bos_id, source.eos_id, source.eot_id):
                if i is not None and 0 <= i < len(tokens):
                    types[i] = TYPE_CONTROL
            if source.unk_id is not None and 0 <= source.unk_id < len(tokens):
                types[source.unk_id] = TYPE_UNKNOWN
        elif len(types) != len(tokens):
            raise ModelLoadError(f"tokenizer has {len(tokens)} tokens but {len(types)} token types")
        if source.unk_id is not None and not 0 <= source.unk_id < len(tokens):
            raise ModelLoadError(f"tokenizer unk_id = {source.unk_id} is outside the vocabulary (size {len(tokens)})")
        self._pieces = list(tokens)
        kept_whole = (TYPE_UNKNOWN, TYPE_CONTROL, TYPE_USER_DEFINED)
        self._added = {i: t for i, t in enumerate(tokens) if types[i] in kept_whole}
        self.special_ids = frozenset(i for i in self._added if types[i] != TYPE_USER_DEFINED)
        self._default_bos = None
        self._default_eos = None
        self._default_add_eos = False
        return types, tokens

    def _add_gguf_added_tokens(self, types: list[int]) -> None:
        # normalized=False: matched in the raw text, before SentencePiece's space rewriting.
        self._tk.add_special_tokens(
            [AddedToken(self._pieces[i], special=True, normalized=False) for i in sorted(self.special_ids)]
        )
        self._tk.add_tokens([
            AddedToken(self._pieces[i], special=False, normalized=False)
            for i in sorted(self._added) if types[i] == TYPE_USER_DEFINED
        ])

    def _init_gpt2(self, source: TokenizerSource) -> None:
        types, pieces = self._init_gguf_common(source)
        pre = source.pre
        if pre is None and "<|begin_of_text|>" in self._pieces:
            # Some converters (BitNet b1.58 2B4T's among them) wrote Llama-3 vocabularies without
            # tokenizer.ggml.pre; splitting them GPT-2's way would tokenize digits and
            # punctuation differently from the model's training.
            pre = "llama-bpe"
        if pre is None or pre in _GPT2_PRES:
            split: pre_tokenizers.PreTokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        elif pre in _LLAMA3_PRES or pre in _QWEN2_PRES:
            regex = _LLAMA3_SPLIT if pre in _LLAMA3_PRES else _QWEN2_SPLIT
            split = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ])
        else:
            supported = sorted(_GPT2_PRES | _LLAMA3_PRES | _QWEN2_PRES)
            raise ModelLoadError(
                f"tokenizer pre-tokenizer {pre!r} is not supported (supported: {', '.join(supported)})"
            )
        vocab: dict[str, int] = {}
        for i, t in enumerate(pieces):
            vocab.setdefault(t, i)
        merges = []
        for m in source.merges or []:
            parts = m.split(" ")
            if len(parts) != 2:
                raise ModelLoadError(f"tokenizer merge {m!r} is not two tokens separated by one space")
            merges.append((parts[0], parts[1]))
        try:
            # Llama-3's tokenizer.json sets ignore_merges (a pre-token that is itself in the
            # vocabulary is taken whole); llama.cpp does the same for that family.
            model = models.BPE(vocab, merges, ignore_merges=pre in _LLAMA3_PRES)
        except Exception as e:
            raise ModelLoadError(f"tokenizer merges do not fit its vocabulary: {e}") from e
        self._tk = _HFTokenizer(model)
        if pre in _QWEN2_PRES:
            self._tk.normalizer = normalizers.NFC()  # as in Qwen2's tokenizer.json
        self._tk.pre_tokenizer = split
        self._add_gguf_added_tokens(types)
        self._byte_level = True
        self._strip_leading_space = False
        self._byte_ids = frozenset()
        self._default_add_bos = pre in _LLAMA3_PRES

    def _init_llama(self, source: TokenizerSource) -> None:
        types, pieces = self._init_gguf_common(source)
        scores = source.scores
        if scores is None or len(scores) != len(self._pieces):
            raise ModelLoadError(
                f"SentencePiece tokenizer needs one score per token ({len(self._pieces)}), "
                f"got {None if scores is None else len(scores)}"
            )
        vocab: dict[str, int] = {}
        for i, t in enumerate(pieces):
            vocab.setdefault(t, i)
        normal = {t: i for t, i in vocab.items() if types[i] == TYPE_NORMAL}
        unk = source.unk_id if source.unk_id is not None else next(
            (i for i, t in enumerate(types) if t == TYPE_UNKNOWN), None)
        model = models.BPE(
            vocab, _merges_from_scores(normal, scores),
            unk_token=pieces[unk] if unk is not None else None, fuse_unk=True, byte_fallback=True,
        )
        self._tk = _HFTokenizer(model)
        # SentencePiece writes spaces as "▁" and (add_dummy_prefix) starts every text with one; like
        # llama.cpp, every run of text between special tokens counts as a start.
        replace = normalizers.Replace(" ", _SPM_SPACE)
        self._tk.normalizer = (
            normalizers.Sequence([normalizers.Prepend(_SPM_SPACE), replace]) if source.add_space_prefix else replace
        )
        self._add_gguf_added_tokens(types)
        self._byte_level = False
        self._strip_leading_space = source.add_space_prefix
        self._byte_ids = frozenset(
            i for i, t in enumerate(types) if t == TYPE_BYTE and _BYTE_PIECE.fullmatch(pieces[i])
        )
        self._default_add_bos = True

    # ----- vocabulary -------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids this tokenizer knows (the model's embedding may have more rows)."""
        return len(self._pieces)

    def id_to_piece(self, token_id: int) -> str:
        """The token's vocabulary string as stored ("Ġthe", "▁the", "<0x0A>", "<|eot_id|>")."""
        self._check_id(token_id)
        piece = self._pieces[token_id]
        return "" if piece is None else piece

    def piece_to_id(self, piece: str) -> int | None:
        """The id of a vocabulary string, or None when it is not one."""
        return self._tk.token_to_id(piece)

    def is_special(self, token_id: int) -> bool:
        """Whether ``decode(..., skip_special=True)`` drops this token (control and unknown tokens)."""
        return token_id in self.special_ids

    def _check_id(self, token_id: int) -> None:
        if not 0 <= token_id < len(self._pieces):
            raise ValueError(f"token id {token_id} is outside the vocabulary (size {len(self._pieces)})")

    # ----- encoding ---------------------------------------------------------------------------

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids of ``text``. With ``add_special``, add BOS (and EOS) when the model's tokenizer
        does, but never a second BOS when the text already starts with the BOS token (a rendered
        chat template usually does).

        Through ``encode_batch``, which lets go of the GIL while it works (``encode`` holds it):
        a server tokenizing a megabytes-long prompt in a worker thread otherwise stops its event
        loop, and every other stream and /health with it, for seconds (7 MB: 10 s).

        A lone surrogate (from a bad decode, e.g. errors="surrogateescape") is refused rather
        than replaced: it is not text, and changing the prompt silently would hide where it came
        from."""
        if not isinstance(text, str):
            raise InvalidArgumentError(f"text to tokenize must be a str, got {type(text).__name__}", param="text")
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise InvalidArgumentError(
                    f"text holds a lone surrogate {text[e.start]!r} at index {e.start}, which is not valid Unicode",
                    param="text",
                ) from None
        ids = self._tk.encode_batch([text], add_special_tokens=False)[0].ids
        if add_special:
            if self.add_bos and self.bos_id is not None and ids[:1] != [self.bos_id]:
                ids.insert(0, self.bos_id)
            if self.add_eos and self.eos_id is not None and ids[-1:] != [self.eos_id]:
                ids.append(self.eos_id)
        return ids

    # ----- decoding ---------------------------------------------------------------------------

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes this token stands for; may be part of a UTF-8 character. Special tokens
        give their text. SentencePiece's leading-space removal is not applied here."""
        cached = self._bytes_cache.get(token_id)
        if cached is not None:
            return cached
        self._check_id(token_id)
        added = self._added.get(token_id)
        piece = self._pieces[token_id]
        if added is not None:
            data = added.encode()
        elif piece is None:
            data = b""
        elif self._byte_level:
            # A character outside GPT-2's byte alphabet (a malformed vocabulary) stands for itself.
            data = b"".join(bytes([_BYTE_DECODER[c]]) if c in _BYTE_DECODER else c.encode() for c in piece)
        elif token_id in self._byte_ids:
            data = bytes([int(piece[3:5], 16)])
        else:
            data = piece.replace(_SPM_SPACE, " ").encode()
        self._bytes_cache[token_id] = data
        return data

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of ``ids``; bytes that are not valid UTF-8 become U+FFFD."""
        dec = IncrementalDecoder(self, skip_special=skip_special)
        return "".join([dec.feed(i) for i in ids]) + dec.flush()


class IncrementalDecoder:
    """Turns a stream of token ids into text deltas for streaming.

    A delta never ends in a partial UTF-8 character: bytes of a character split across tokens wait
    until it is complete (``flush`` at the end turns any left-over or invalid bytes into U+FFFD).
    Feeding ids one at a time and joining the deltas and ``flush()`` gives exactly
    ``tokenizer.decode(ids)``; each id costs a table lookup, whatever the length of the stream.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # SentencePiece decoding drops the space that encoding put before the first word.
        self._strip_pending = tokenizer._strip_leading_space

    def feed(self, token_id: int) -> str:
        """Add one token; return the text that became complete (possibly "")."""
        if self._skip_special and token_id in self._tokenizer.special_ids:
            return ""
        data = self._tokenizer.token_bytes(token_id)
        if self._strip_pending and data:
            self._strip_pending = False
            if data[:1] == b" ":
                data = data[1:]
        return self._utf8.decode(data)

    def flush(self) -> str:
        """End of stream: return what is held back, invalid bytes replaced by U+FFFD."""
        return self._utf8.decode(b"", final=True)


# ----- helpers ------------------------------------------------------------------------------------


def _merges_from_scores(normal: dict[str, int], scores: Sequence[float]) -> list[tuple[str, str]]:
    """BPE merges equivalent to SentencePiece's score-ordered merging (llama.cpp's SPM tokenizer):
    every split of a piece into two pieces is a merge, ranked by the whole piece's score, highest
    first; ties go to the lower piece id, then to the lower part ids (transformers' order)."""
    ranked: list[tuple[float, int, int, int, str, str]] = []
    for piece, pid in normal.items():
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            lid, rid = normal.get(left), normal.get(right)
            if lid is not None and rid is not None:
                ranked.append((-scores[pid], pid, lid, rid, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _decoder_types(decoder: dict | None) -> set[str]:
    """Every decoder type named in a tokenizer.json decoder (recursing into Sequence)."""
    if not decoder:
        return set()
    types = {decoder.get("type", "")}
    for d in decoder.get("decoders", []) or []:
        types |= _decoder_types(d)
    return types


def _decoder_strips_leading_space(decoder: dict | None) -> bool:
    """Whether a SentencePiece-style tokenizer.json decoder removes the space encoding prepended:
    a Strip of a leading " " (Llama, Mistral) or a Metaspace that prepends (newer conversions)."""
    if not decoder:
        return False
    kind = decoder.get("type")
    if kind == "Strip":
        return decoder.get("content") == " " and int(decoder.get("start", 0)) > 0
    if kind == "Metaspace":
        scheme = decoder.get("prepend_scheme")
        return scheme in ("always", "first") if scheme is not None else bool(decoder.get("add_prefix_space", True))
    return any(_decoder_strips_leading_space(d) for d in decoder.get("decoders", []) or [])
