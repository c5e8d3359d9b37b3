"""The tokenizer module against its references: transformers / tokenizers on the same
tokenizer.json, llama.cpp's SentencePiece algorithm for GGUF "llama" vocabularies, and its own
full decode for the streaming decoder. Every tokenizer is trained or written here; nothing is
downloaded."""

from __future__ import annotations

import itertools
import json
import random
import unicodedata

import pytest
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer
from transformers import PreTrainedTokenizerFast
from transformers.tokenization_utils_base import generate_merges

from tritlm.errors import ModelLoadError
from tritlm.tokenizer import IncrementalDecoder, Tokenizer, TokenizerSource

# The split regexes as they appear in Llama-3's and Qwen2's tokenizer.json (written out here, not
# imported, so the module's copies are checked against them).
LLAMA3_REGEX = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
QWEN2_REGEX = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 2024 and we've got 1234567 reasons!",
    "Café, résumé, naïve, garçon, ÉCOLE, été, Ñandú, straße, Ærø.",
    "日本語のテキストを少し書きます。東京は大きい都市です。",
    "Emoji time: 🎉🚀👍🏽 and 😀 with friends; ok? 👨‍👩‍👧",
    "def f(x):\n    return x ** 2  # squares\n\n\tif x >= 10: print('big')",
    "I'LL go, you'd stay, THEY'RE here. Don't! Won't? 3.14159 + 2.71828 = 5.85987",
    "Über alles, Ça va? Ünïcödé ñ ç ø å ß — “quotes” and ‘single’ … done.",
]

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
USER_DEFINED = "<|tool|>"

SAMPLES = [
    "",
    "Hello world",
    "The quick brown fox, café and 日本語 🎉",
    "It's 1234567 — naïve\n\n  spaces  \t tabs",
    "Ω≈ç√∫˜µ≤≥÷ unseen 😀 characters 𝔘𝔫𝔦",
    "I'LL say it's DON'T",
    "a<|eot_id|>b<|begin_of_text|>c",
    "trailing newline\n",
    f"call {USER_DEFINED} now",
]


def random_strings(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = "abcdefghij ABC ÉéèçñÑß日本語東京🎉🚀👍🏽'\n\t0123456789.,!?-<|>_ "
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(n)]


# ----- byte-level BPE -----------------------------------------------------------------------------

PRE_TOKENIZERS = {
    # Llama-3 / Qwen2: split regex, then byte-level without its own regex (as in their tokenizer.json)
    "llama-bpe": pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]),
    "qwen2": pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]),
    "gpt2": pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
}


def train_byte_level(pre: str) -> str:
    """A ~500-token byte-level BPE in the shape of the real model family's tokenizer.json."""
    tk = HFTokenizer(models.BPE())
    if pre == "qwen2":
        tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = PRE_TOKENIZERS[pre]
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=SPECIALS,
        show_progress=False,
    )
    tk.train_from_iterator(CORPUS * 3, trainer)
    tk.add_tokens([AddedToken(USER_DEFINED, special=False, normalized=False)])
    data = json.loads(tk.to_str())
    data["model"]["ignore_merges"] = pre == "llama-bpe"  # as in Llama-3's tokenizer.json
    return json.dumps(data)


def gguf_fields(tokenizer_json: str) -> dict:
    """The GGUF vocabulary fields llama.cpp's converter writes for this tokenizer.json."""
    data = json.loads(tokenizer_json)
    vocab = dict(data["model"]["vocab"])
    added = {t["content"]: t for t in data["added_tokens"]}
    for t in data["added_tokens"]:
        vocab[t["content"]] = t["id"]
    tokens = [""] * len(vocab)
    for piece, i in vocab.items():
        tokens[i] = piece
    types = [(3 if added[t]["special"] else 4) if t in added else 1 for t in tokens]
    merges = [" ".join(m) for m in data["model"]["merges"]]
    return {"model": "gpt2", "tokens": tokens, "merges": merges, "token_types": types}


@pytest.fixture(scope="module", params=["llama-bpe", "qwen2", "gpt2"])
def bpe_pair(request: pytest.FixtureRequest) -> tuple[str, str, Tokenizer, Tokenizer]:
    """(pre, tokenizer.json, tokenizer from the json, tokenizer from GGUF fields)."""
    pre = request.param
    js = train_byte_level(pre)
    ids = {t: HFTokenizer.from_str(js).token_to_id(t) for t in SPECIALS}
    common = dict(bos_id=ids["<|begin_of_text|>"], eos_id=ids["<|end_of_text|>"], add_bos=True)
    from_json = Tokenizer(TokenizerSource(tokenizer_json=js, **common))
    from_gguf = Tokenizer(TokenizerSource(pre=pre, **gguf_fields(js), **common))
    return pre, js, from_json, from_gguf


def test_gguf_vocab_encodes_like_tokenizer_json(bpe_pair) -> None:
    pre, _, from_json, from_gguf = bpe_pair
    for s in SAMPLES + CORPUS + random_strings(400, seed=1):
        if pre == "qwen2":
            s = unicodedata.normalize("NFC", s)
        assert from_gguf.encode(s) == from_json.encode(s), s
    assert from_gguf.vocab_size == from_json.vocab_size


def test_encode_and_decode_match_transformers(bpe_pair) -> None:
    _, js, from_json, from_gguf = bpe_pair
    hf = PreTrainedTokenizerFast(tokenizer_object=HFTokenizer.from_str(js))
    for s in SAMPLES + random_strings(200, seed=2):
        expected = hf.encode(s, add_special_tokens=False)
        assert from_json.encode(s, add_special=False) == expected, s
        assert from_gguf.encode(s, add_special=False) == expected, s
        for skip in (False, True):
            reference = hf.decode(expected, skip_special_tokens=skip, clean_up_tokenization_spaces=False)
            assert from_json.decode(expected, skip_special=skip) == reference
            assert from_gguf.decode(expected, skip_special=skip) == reference


def test_byte_level_round_trip(bpe_pair) -> None:
    pre, _, from_json, from_gguf = bpe_pair
    for s in SAMPLES + CORPUS + random_strings(300, seed=3):
        s = unicodedata.normalize("NFC", s) if pre == "qwen2" else s
        for tok in (from_json, from_gguf):
            ids = tok.encode(s)
            assert ids[0] == tok.bos_id
            assert tok.decode(ids, skip_special=True) == s.replace("<|eot_id|>", "").replace("<|begin_of_text|>", "")
            assert tok.decode(ids) == "<|begin_of_text|>" + s


@pytest.mark.parametrize("pre, edges", [("llama-bpe", {3, 6}), ("qwen2", {1, 2, 3, 4, 5, 6})])
def test_digit_runs_split_as_the_family_does(pre: str, edges: set[int]) -> None:
    # A GPT-2-trained vocabulary has tokens spanning several digits; the family's regex must still
    # cut a digit run into groups of three (Llama-3) or single digits (Qwen2).
    fields = gguf_fields(train_byte_level("gpt2"))
    for name, expect_cuts in ((pre, True), ("gpt2", False)):
        tok = Tokenizer(TokenizerSource(pre=name, **fields))
        pieces = [tok.token_bytes(i).decode() for i in tok.encode("1234567", add_special=False)]
        assert "".join(pieces) == "1234567"
        assert (edges <= set(itertools.accumulate(len(p) for p in pieces))) == expect_cuts


def test_llama3_takes_a_pre_token_in_the_vocabulary_whole() -> None:
    # Llama-3's tokenizer.json sets ignore_merges: a pre-token that is a vocabulary entry is one
    # token even when no merges lead to it.
    data = json.loads(train_byte_level("llama-bpe"))
    data["model"]["vocab"]["Ġzzzq"] = max(t["id"] for t in data["added_tokens"]) + 1
    js = json.dumps(data)
    fields = gguf_fields(js)
    llama3 = Tokenizer(TokenizerSource(pre="llama-bpe", **fields))
    assert llama3.encode(" zzzq", add_special=False) == [llama3.piece_to_id("Ġzzzq")]
    assert PreTrainedTokenizerFast(tokenizer_object=HFTokenizer.from_str(js)).encode(
        " zzzq", add_special_tokens=False) == [llama3.piece_to_id("Ġzzzq")]
    assert len(Tokenizer(TokenizerSource(pre="gpt2", **fields)).encode(" zzzq", add_special=False)) > 1


def test_qwen2_normalizes_to_nfc() -> None:
    tok = Tokenizer(TokenizerSource(pre="qwen2", **gguf_fields(train_byte_level("qwen2"))))
    assert tok.encode("cafe\u0301") == tok.encode("café")


def test_llama3_vocab_without_pre_is_split_the_llama3_way() -> None:
    js = train_byte_level("llama-bpe")
    explicit = Tokenizer(TokenizerSource(pre="llama-bpe", bos_id=0, **gguf_fields(js)))
    missing = Tokenizer(TokenizerSource(pre=None, bos_id=0, **gguf_fields(js)))
    for s in SAMPLES + random_strings(100, seed=4):
        assert missing.encode(s) == explicit.encode(s)
    assert missing.add_bos and explicit.add_bos


def test_special_tokens_are_matched_whole_and_skippable(bpe_pair) -> None:
    _, _, from_json, from_gguf = bpe_pair
    for tok in (from_json, from_gguf):
        eot = tok.piece_to_id("<|eot_id|>")
        tool = tok.piece_to_id(USER_DEFINED)
        assert tok.encode("<|eot_id|>", add_special=False) == [eot]
        ids = tok.encode("x<|eot_id|>y", add_special=False)
        assert ids.count(eot) == 1 and len(ids) == 3
        assert tok.is_special(eot) and not tok.is_special(tool)
        ids = tok.encode(f"a{USER_DEFINED}b", add_special=False)
        assert tool in ids
        # user-defined tokens are text, not control: kept when specials are skipped
        assert tok.decode(tok.encode(f"<|eot_id|>a{USER_DEFINED}b"), skip_special=True) == f"a{USER_DEFINED}b"


def test_add_bos_rules(bpe_pair) -> None:
    pre, js, from_json, from_gguf = bpe_pair
    bos = from_gguf.bos_id
    for tok in (from_json, from_gguf):
        assert tok.encode("hi")[0] == bos and tok.encode("hi").count(bos) == 1
        assert tok.encode("<|begin_of_text|>hi") == tok.encode("hi")  # never a second BOS
        assert bos not in tok.encode("hi", add_special=False)
        assert tok.encode("") == [bos]
    fields = gguf_fields(js)
    # GGUF default (add_bos not stated): llama.cpp adds BOS for the Llama-3 family only
    default = Tokenizer(TokenizerSource(pre=pre, bos_id=bos, **fields))
    assert default.add_bos == (pre == "llama-bpe")
    off = Tokenizer(TokenizerSource(pre=pre, bos_id=bos, add_bos=False, **fields))
    assert off.encode("hi")[:1] != [bos]
    eos = from_gguf.piece_to_id("<|end_of_text|>")
    with_eos = Tokenizer(TokenizerSource(pre=pre, bos_id=bos, eos_id=eos, add_eos=True, **fields))
    assert with_eos.encode("hi")[-1] == eos and with_eos.encode("hi<|end_of_text|>").count(eos) == 1


def test_tokenizer_json_post_processor_sets_the_bos_policy() -> None:
    data = json.loads(train_byte_level("llama-bpe"))
    bos = next(t["id"] for t in data["added_tokens"] if t["content"] == "<|begin_of_text|>")
    hf = HFTokenizer.from_str(json.dumps(data))
    hf.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)],
    )
    tok = Tokenizer(TokenizerSource(tokenizer_json=hf.to_str()))
    assert tok.bos_id == bos and tok.add_bos
    assert tok.encode("hi") == PreTrainedTokenizerFast(tokenizer_object=hf).encode("hi")
    assert tok.encode("<|begin_of_text|>hi") == tok.encode("hi")
    plain = Tokenizer(TokenizerSource(tokenizer_json=train_byte_level("llama-bpe")))
    assert not plain.add_bos and plain.encode("hi") == plain.encode("hi", add_special=False)


def test_token_bytes_are_exact(bpe_pair) -> None:
    _, _, from_json, from_gguf = bpe_pair
    for tok in (from_json, from_gguf):
        for s in SAMPLES[:6] + random_strings(50, seed=5):
            ids = tok.encode(s, add_special=False)
            assert b"".join(tok.token_bytes(i) for i in ids) == s.encode()
        assert tok.token_bytes(tok.piece_to_id("Ã©")) == "é".encode()
        assert tok.token_bytes(tok.piece_to_id("Ġ")) == b" "
        assert tok.token_bytes(tok.piece_to_id("<|eot_id|>")) == b"<|eot_id|>"
        assert tok.id_to_piece(tok.piece_to_id("Ġ")) == "Ġ"


def test_eos_ids_include_the_end_of_turn_token(bpe_pair) -> None:
    pre, js, _, from_gguf = bpe_pair
    eos, eot = from_gguf.piece_to_id("<|end_of_text|>"), from_gguf.piece_to_id("<|eot_id|>")
    assert from_gguf.eos_ids == {eos, eot} and from_gguf.eos_id == eos
    # Found by text when the file names only eos, as llama.cpp does
    fields = gguf_fields(js)
    only_eot = Tokenizer(TokenizerSource(pre=pre, eos_id=eot, **fields))
    assert only_eot.eos_ids == {eos, eot}
    extra = Tokenizer(TokenizerSource(pre=pre, eos_id=eos, extra_eos_ids=[7], **fields))
    assert 7 in extra.eos_ids


def test_vocabulary_lookups(bpe_pair) -> None:
    _, js, from_json, from_gguf = bpe_pair
    n = len(gguf_fields(js)["tokens"])
    for tok in (from_json, from_gguf):
        assert tok.vocab_size == n
        assert tok.piece_to_id("no such piece at all") is None
        with pytest.raises(ValueError, match="outside the vocabulary"):
            tok.id_to_piece(n)
        with pytest.raises(ValueError, match="outside the vocabulary"):
            tok.token_bytes(-1)


# ----- SentencePiece (GGUF "llama") ---------------------------------------------------------------

# Pieces of a small SentencePiece BPE vocabulary, best (highest score) first. Characters such as
# "日", "ß", "\n" or emoji are not pieces: only byte fallback can spell them.
SPM_PIECES = [
    "▁t", "he", "▁the", "▁a", "in", "▁w", "or", "ld", "▁wor", "▁world", "▁H", "el", "lo", "▁Hel",
    "▁Hello", "▁c", "af", "▁caf", "é", "▁café", "er", "is", "▁is", "▁th", "▁this", "an", "▁an", "▁and",
    "on", "re", "ng", "▁there", "ere", "nn", "▁inn",
    "▁", "t", "h", "e", "a", "i", "n", "w", "o", "r", "l", "d", "H", "c", "f", "s", "g", ",", "!", ".", "x",
]


def spm_source(**overrides) -> TokenizerSource:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + SPM_PIECES + ["<extra>"]
    types = [2, 3, 3] + [6] * 256 + [1] * len(SPM_PIECES) + [4]
    scores = [0.0] * 259 + [-float(k) for k in range(len(SPM_PIECES))] + [0.0]
    fields = dict(model="llama", tokens=tokens, scores=scores, token_types=types, bos_id=1, eos_id=2, unk_id=0)
    return TokenizerSource(**{**fields, **overrides})


def llama_cpp_spm(text: str, src: TokenizerSource) -> list[int]:
    """llama.cpp's SentencePiece tokenizer (llm_tokenizer_spm), for reference: merge the adjacent
    pair that forms the best-scoring piece, leftmost first, until none does; spell what is left
    with byte tokens."""
    vocab = {t: i for i, t in enumerate(src.tokens) if src.token_types[i] == 1}
    symbols = list("▁" + text.replace(" ", "▁"))
    while True:
        best = None
        for k in range(len(symbols) - 1):
            i = vocab.get(symbols[k] + symbols[k + 1])
            if i is not None and (best is None or src.scores[i] > best[0]):
                best = (src.scores[i], k)
        if best is None:
            break
        k = best[1]
        symbols[k:k + 2] = [symbols[k] + symbols[k + 1]]
    out: list[int] = []
    for s in symbols:
        out.extend([vocab[s]] if s in vocab else [src.tokens.index(f"<0x{b:02X}>") for b in s.encode()])
    return out


def hf_llama_reference(src: TokenizerSource, metaspace: bool = False) -> PreTrainedTokenizerFast:
    """The tokenizer transformers' LlamaConverter builds for the same vocabulary (its merges from
    transformers' own generate_merges, its decoder chain), for decode and encode reference. With
    ``metaspace``, the Metaspace pre-tokenizer / decoder pair other conversions use instead."""
    vocab = {t: i for i, t in enumerate(src.tokens)}
    normal = {t: i for t, i in vocab.items() if src.token_types[i] == 1}
    merges = generate_merges(normal, {t: src.scores[i] for t, i in normal.items()})
    tk = HFTokenizer(models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    if metaspace:
        tk.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=False)
        tk.decoder = decoders.Sequence([
            decoders.ByteFallback(), decoders.Metaspace(prepend_scheme="always", split=False),
        ])
    else:
        tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tk.decoder = decoders.Sequence([
            decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0),
        ])
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    tk.add_tokens([AddedToken("<extra>", special=False, normalized=False)])
    return PreTrainedTokenizerFast(tokenizer_object=tk)


SPM_TEXTS = [
    "Hello world",
    "the café is in this world, and that!",
    "there were here inner ringing",
    "Hello 日本語 straße 🎉",
    " leading space and  double  spaces ",
    "new\nline\ttab",
    "x",
]


def spm_random(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = ["the", "Hello", "world", "café", "this", "and", "日本", "straße", "🎉", "  ", "\n", "an", "x!",
             "Hé", "there", "were", "here", "inner", "ringing", "eager"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 8))) for _ in range(n)]


def test_spm_encodes_like_llama_cpp_and_transformers() -> None:
    src = spm_source()
    tok = Tokenizer(src)
    hf = hf_llama_reference(src)
    for s in SPM_TEXTS + spm_random(300, seed=6):
        ids = tok.encode(s, add_special=False)
        assert ids == llama_cpp_spm(s, src), s
        assert ids == hf.encode(s, add_special_tokens=False), s


def test_spm_round_trip_through_byte_fallback() -> None:
    tok = Tokenizer(spm_source())
    ids = tok.encode("日")
    assert ids == [1, tok.piece_to_id("▁"), *(tok.piece_to_id(f"<0x{b:02X}>") for b in "日".encode())]
    for s in SPM_TEXTS + spm_random(200, seed=7):
        assert tok.decode(tok.encode(s), skip_special=True) == s


def test_spm_decode_matches_transformers() -> None:
    src = spm_source()
    tok, hf = Tokenizer(src), hf_llama_reference(src)
    for s in SPM_TEXTS + spm_random(100, seed=8) + ["<s>Hello</s> world", "a<extra>b"]:
        ids = tok.encode(s)
        for skip in (False, True):
            assert tok.decode(ids, skip_special=skip) == hf.decode(
                ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)


@pytest.mark.parametrize("metaspace", [False, True], ids=["strip", "metaspace"])
def test_sentencepiece_tokenizer_json(metaspace: bool) -> None:
    src = spm_source()
    hf = hf_llama_reference(src, metaspace=metaspace)
    tok = Tokenizer(TokenizerSource(tokenizer_json=hf.backend_tokenizer.to_str(), bos_id=1, add_bos=True))
    gguf = Tokenizer(src)
    for s in SPM_TEXTS + spm_random(100, seed=9):
        ids = tok.encode(s)
        assert ids == [1, *hf.encode(s, add_special_tokens=False)]
        for skip in (False, True):
            assert tok.decode(ids, skip_special=skip) == hf.decode(ids, skip_special_tokens=skip)
        if not metaspace:  # Metaspace's "always" does not prepend to a text already starting with a space
            assert ids == gguf.encode(s)
            assert tok.decode(ids, skip_special=True) == s
        assert [tok.token_bytes(i) for i in ids] == [gguf.token_bytes(i) for i in ids]


def test_spm_leading_space_and_specials() -> None:
    tok = Tokenizer(spm_source())
    assert tok.add_bos and tok.bos_id == 1  # llama.cpp's default for SentencePiece
    ids = tok.encode("Hello world")
    assert [tok.id_to_piece(i) for i in ids] == ["<s>", "▁Hello", "▁world"]
    assert tok.decode(ids, skip_special=True) == "Hello world"
    assert tok.decode(ids) == "<s> Hello world"
    # a run of text after a special token starts with "▁", as at the start of the text
    assert tok.encode("<s>Hello</s>") == [1, tok.piece_to_id("▁Hello"), 2]
    assert tok.token_bytes(tok.piece_to_id("▁the")) == b" the"
    assert tok.token_bytes(tok.piece_to_id("<0xE6>")) == b"\xe6"
    assert tok.token_bytes(1) == b"<s>"
    assert tok.eos_ids == {2}
    no_prefix = Tokenizer(spm_source(add_space_prefix=False))
    ids = no_prefix.encode("Hello world", add_special=False)
    assert no_prefix.id_to_piece(ids[0]) == "H" and no_prefix.decode(ids) == "Hello world"


# ----- streaming ---------------------------------------------------------------------------------


def all_tokenizers() -> list[Tokenizer]:
    spm_json = hf_llama_reference(spm_source()).backend_tokenizer.to_str()
    out = [Tokenizer(spm_source()), Tokenizer(TokenizerSource(tokenizer_json=spm_json, bos_id=1, add_bos=True))]
    for pre in ("llama-bpe", "gpt2"):
        js = train_byte_level(pre)
        out += [Tokenizer(TokenizerSource(tokenizer_json=js, add_bos=True, bos_id=0)),
                Tokenizer(TokenizerSource(pre=pre, add_bos=True, bos_id=0, **gguf_fields(js)))]
    return out


STREAM_TEXTS = [
    "Hello world",
    "日本語のテキスト 🎉🚀👍🏽 naïve",
    " café\n\n  x",
    "👨‍👩‍👧 family",
    "a<|eot_id|>b",
]


@pytest.mark.parametrize(
    "tok", all_tokenizers(), ids=["spm-gguf", "spm-json", "llama-bpe-json", "llama-bpe-gguf", "gpt2-json", "gpt2-gguf"]
)
def test_incremental_decoder_equals_full_decode_for_every_prefix(tok: Tokenizer) -> None:
    for text in STREAM_TEXTS:
        ids = tok.encode(text)
        for skip in (False, True):
            for k in range(len(ids) + 1):
                dec = IncrementalDecoder(tok, skip_special=skip)
                deltas = [dec.feed(i) for i in ids[:k]]
                assert all("\ufffd" not in d for d in deltas), (text, k)  # split characters are held back
                assert "".join(deltas) + dec.flush() == tok.decode(ids[:k], skip_special=skip), (text, k)
        dec = IncrementalDecoder(tok, skip_special=True)
        special = tok.piece_to_id("<|eot_id|>") is not None
        assert "".join(dec.feed(i) for i in ids) + dec.flush() == (text.replace("<|eot_id|>", "") if special else text)


def test_incremental_decoder_holds_split_characters_and_flushes_invalid_bytes() -> None:
    tok = Tokenizer(spm_source())
    byte = {b: tok.piece_to_id(f"<0x{b:02X}>") for b in range(256)}
    dec = IncrementalDecoder(tok)
    assert [dec.feed(byte[b]) for b in "日".encode()] == ["", "", "日"]
    assert dec.feed(byte[0x80]) == "\ufffd"  # a lone continuation byte is invalid at once
    assert dec.feed(tok.piece_to_id("x")) == "x"
    assert dec.feed(byte[0xE6]) == ""        # could still become a character...
    assert dec.flush() == "\ufffd"           # ...but the stream ended


# ----- bad sources -------------------------------------------------------------------------------


def test_bad_sources_are_refused() -> None:
    js = train_byte_level("gpt2")
    fields = gguf_fields(js)
    with pytest.raises(ValueError, match="exactly one"):
        TokenizerSource(tokenizer_json=js, model="gpt2", tokens=fields["tokens"])
    with pytest.raises(ValueError, match="exactly one"):
        TokenizerSource()
    with pytest.raises(ModelLoadError, match="not supported"):
        Tokenizer(TokenizerSource(model="rwkv", tokens=["a"]))
    with pytest.raises(ModelLoadError, match="pre-tokenizer 'chameleon'"):
        Tokenizer(TokenizerSource(pre="chameleon", **fields))
    with pytest.raises(ModelLoadError, match="two tokens"):
        Tokenizer(TokenizerSource(**{**fields, "merges": ["a b c"]}))
    with pytest.raises(ModelLoadError, match="one score per token"):
        Tokenizer(spm_source(scores=[0.0]))
    with pytest.raises(ModelLoadError, match="token types"):
        Tokenizer(TokenizerSource(**{**fields, "token_types": [1]}))
    with pytest.raises(ModelLoadError, match="outside the vocabulary"):
        Tokenizer(TokenizerSource(bos_id=10**6, **fields))
    with pytest.raises(ModelLoadError, match="cannot be read"):
        Tokenizer(TokenizerSource(tokenizer_json="{not json"))


def test_encoding_lets_other_threads_run(bpe_pair) -> None:
    """A long text is tokenized without holding the GIL: a server's event loop keeps answering
    while a worker thread encodes a huge prompt."""
    import threading
    import time

    _, _, from_json, _ = bpe_pair
    text = "The quick brown fox, café and 日本語 🎉 " * 40_000  # ~1.5 MB: about a second to encode
    finished = threading.Event()
    ids: list[int] = []

    def encode() -> None:
        ids.extend(from_json.encode(text))
        finished.set()

    worker = threading.Thread(target=encode)
    ticks = 0
    worker.start()
    while not finished.is_set():
        time.sleep(0.002)  # would wait for the whole encode if the worker held the GIL
        ticks += 1
    worker.join()
    assert len(ids) > 100_000
    assert ticks >= 20, f"the main thread ran only {ticks} times while the text was encoded"
