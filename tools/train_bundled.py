"""Train tritlm's bundled default model: a small BitNet b1.58 on the King James Bible.

    apt-get install bible-kjv        # the text (public domain) and the `bible` program that prints it
    pip install torch==2.13.0 tokenizers safetensors jinja2 && pip install -e .
    python tools/train_bundled.py --out /tmp/bundled    # ~1 hour on 2 CPU cores

Steps: print the text with Debian's ``bible`` program; split it into chapters and hold out every
25th chapter (written to tests/data/kjv_heldout.txt, so tests can measure perplexity without apt);
train a byte-level BPE tokenizer on the rest; train the model (tools/bitnet_qat.py: absmean
ternary weights, per-token int8 activations, straight-through estimator) on random windows of the
training chapters plus short chat exchanges built from consecutive verses, so the chat template
has been seen; save Hugging Face folders and export GGUF through tritlm's own converter.

Everything is seeded: the same command on the same torch version gives the same weights
(torch.use_deterministic_algorithms, one process). Training-only: nothing here is a runtime
dependency of tritlm.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bitnet_qat import BitNetLM, Shape, save_hf  # noqa: E402

from tritlm.loaders.convert import convert  # noqa: E402
from tritlm.loaders.hf import _LLAMA3_SPLIT as SPLIT_REGEX  # noqa: E402  (read back as "llama-bpe")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELDOUT_PATH = os.path.join(REPO, "tests", "data", "kjv_heldout.txt")
HELDOUT_EVERY = 25  # every 25th chapter (chapters 25, 50, ... counted from Genesis 1 = 1)

BOS, EOS, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
HEADER_START, HEADER_END = "<|start_header_id|>", "<|end_header_id|>"
SPECIALS = [BOS, EOS, HEADER_START, HEADER_END, EOT]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
SEQ_LEN = 256


# ------------------------------------------------------------------------------------------------
# data


def read_kjv() -> list[str]:
    """Every chapter as text: a heading line ("Genesis 1") and one verse per line, without the
    verse numbers (the samples should read as prose, and numbers cost tokens)."""
    out = subprocess.run(["bible", "-l100000", "gen1:1-rev22:21"], check=True, capture_output=True,
                         text=True, cwd="/").stdout
    chapters: list[list[str]] = []
    for line in out.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):  # "Genesis 1", "1 Samuel 3", "Song of Solomon 2"
            chapters.append([line.strip()])
            continue
        number, text = line.strip().split(" ", 1)
        assert number.isdigit() and chapters, line
        chapters[-1].append(text.strip())
    assert len(chapters) == 1189, len(chapters)
    return ["\n".join(c) for c in chapters]


def split_chapters(chapters: list[str]) -> tuple[list[str], list[str]]:
    held = [c for i, c in enumerate(chapters, 1) if i % HELDOUT_EVERY == 0]
    train = [c for i, c in enumerate(chapters, 1) if i % HELDOUT_EVERY != 0]
    return train, held


def read_heldout(path: str = HELDOUT_PATH) -> list[str]:
    """The held-out chapters, as split_chapters produced them (separated by blank lines)."""
    with open(path, encoding="utf-8") as f:
        return f.read().strip("\n").split("\n\n")


def train_tokenizer(texts: list[str], vocab_size: int, folder: str) -> None:
    """Byte-level BPE (every input encodes), Llama 3's special tokens and split, BOS added by the
    post-processor; tokenizer_config.json holds the chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    assert tok.get_vocab_size() == vocab_size, tok.get_vocab_size()
    bos = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos)])
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    write_json(os.path.join(folder, "tokenizer_config.json"), {
        "bos_token": BOS, "eos_token": EOS, "chat_template": CHAT_TEMPLATE,
        "model_max_length": SEQ_LEN * 4, "tokenizer_class": "PreTrainedTokenizerFast",
    })
    write_json(os.path.join(folder, "generation_config.json"), {
        "bos_token_id": bos, "eos_token_id": [tok.token_to_id(EOS), tok.token_to_id(EOT)],
    })


def write_json(path: str, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)


def render_chat(messages: list[dict], add_generation_prompt: bool = False) -> str:
    import jinja2

    t = jinja2.Environment().from_string(CHAT_TEMPLATE)
    return t.render(messages=messages, bos_token=BOS, add_generation_prompt=add_generation_prompt)


def chat_examples(chapters: list[str], rng: np.random.Generator, per_chapter: int) -> list[str]:
    """Exchanges where the user gives a verse and the assistant answers with the next one or two:
    the model learns the template's shape and to end its turn with <|eot_id|>."""
    out = []
    for c in chapters:
        verses = c.split("\n")[1:]
        for _ in range(per_chapter):
            if len(verses) < 2:
                break
            i = int(rng.integers(0, len(verses) - 1))
            n = int(rng.integers(1, 3))
            out.append(render_chat([{"role": "user", "content": verses[i]},
                                    {"role": "assistant", "content": " ".join(verses[i + 1:i + 1 + n])}]))
    return out


def token_stream(encode: Callable[[str], list[int]], eos_id: int, docs: list[str]) -> np.ndarray:
    """One long stream: each document as ``encode`` gives it (BOS text), then EOS."""
    ids: list[int] = []
    for d in docs:
        ids.extend(encode(d))
        ids.append(eos_id)
    return np.asarray(ids, dtype=np.int64)


def heldout_windows(encode: Callable[[str], list[int]], eos_id: int, chapters: list[str]) -> np.ndarray:
    """The held-out chapters as one stream cut into non-overlapping windows of SEQ_LEN tokens
    (tests pass tritlm's tokenizer as ``encode``, training passes the one it trained)."""
    s = token_stream(encode, eos_id, chapters)
    n = len(s) // SEQ_LEN
    return s[: n * SEQ_LEN].reshape(n, SEQ_LEN)


def window_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Summed negative log-likelihood of tokens 1.. of each window given the ones before."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1),
                           reduction="sum")


@torch.no_grad()
def perplexity(model: BitNetLM, windows: np.ndarray, batch: int = 8) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch):
        ids = torch.from_numpy(windows[i:i + batch])
        total += window_nll(model(ids), ids).item()
        count += ids.shape[0] * (ids.shape[1] - 1)
    return math.exp(total / count)


# ------------------------------------------------------------------------------------------------
# training


def lr_at(step: int, args: argparse.Namespace) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    p = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * p)))


@torch.no_grad()
def sample(model: BitNetLM, tok, prompt: str, n: int = 60) -> str:
    model.eval()
    ids = tok.encode(prompt).ids
    for _ in range(n):
        logits = model(torch.tensor([ids[-SEQ_LEN:]]))[0, -1]
        ids.append(int(logits.argmax()))
        if ids[-1] == tok.token_to_id(EOS):
            break
    return tok.decode(ids[len(tok.encode(prompt).ids):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="work folder: tokenizer, checkpoints, log, GGUF")
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--ffn", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--chat-per-chapter", type=int, default=3)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-windows", type=int, default=32)
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--gguf-type", default="i2_s", choices=["i2_s", "tq2_0"])
    ap.add_argument("--seed", type=int, default=1611)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(args.seed)
    os.makedirs(args.out, exist_ok=True)
    log = open(os.path.join(args.out, "train.log"), "a", buffering=1)

    def say(msg: str) -> None:
        print(msg, flush=True)
        log.write(msg + "\n")

    say(f"args {json.dumps(vars(args))}")
    train_ch, held_ch = split_chapters(read_kjv())
    os.makedirs(os.path.dirname(HELDOUT_PATH), exist_ok=True)
    with open(HELDOUT_PATH, "w", encoding="utf-8") as f:
        f.write("\n\n".join(held_ch) + "\n")
    assert read_heldout() == held_ch
    tok_dir = os.path.join(args.out, "tokenizer")
    train_tokenizer(train_ch, args.vocab, tok_dir)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))
    order = rng.permutation(len(train_ch))
    chats = chat_examples([train_ch[i] for i in order], rng, args.chat_per_chapter)
    eos = tok.token_to_id(EOS)
    stream = np.concatenate([
        token_stream(lambda t: tok.encode(t).ids, eos, [train_ch[i] for i in order]),
        token_stream(lambda t: tok.encode(t, add_special_tokens=False).ids, eos, chats),  # BOS in the text
    ])
    held = heldout_windows(lambda t: tok.encode(t).ids, eos, held_ch)
    eval_set = held[: args.eval_windows]
    say(f"data: {len(train_ch)} train chapters + {len(chats)} chat exchanges = {len(stream)} tokens; "
        f"held out {len(held_ch)} chapters = {held.size} tokens ({len(held)} windows)")

    shape = Shape(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.ffn,
                  num_hidden_layers=args.layers, num_attention_heads=args.heads,
                  num_key_value_heads=args.kv_heads, max_position_embeddings=SEQ_LEN * 4)
    model = BitNetLM(shape)
    n_params = sum(p.numel() for p in model.parameters())
    say(f"model: {json.dumps(shape.__dict__)} params {n_params}")
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))

    def save(tag: str) -> None:
        folder = os.path.join(args.out, tag)
        save_hf(model, folder, {"bos_token_id": tok.token_to_id(BOS), "eos_token_id": tok.token_to_id(EOS)})
        for n in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
            with open(os.path.join(tok_dir, n), "rb") as src, open(os.path.join(folder, n), "wb") as dst:
                dst.write(src.read())
        convert(folder, os.path.join(args.out, f"{tag}.gguf"), args.gguf_type)

    t0 = time.time()
    tokens_seen = 0
    for step in range(args.steps):
        model.train()
        starts = rng.integers(0, len(stream) - SEQ_LEN, size=args.batch)
        ids = torch.from_numpy(np.stack([stream[s:s + SEQ_LEN] for s in starts]))
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        loss = window_nll(model(ids), ids) / (ids.shape[0] * (SEQ_LEN - 1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens_seen += ids.numel()
        if step % 10 == 0 or step == args.steps - 1:
            el = time.time() - t0
            say(f"step {step} loss {loss.item():.4f} lr {lr_at(step, args):.2e} gnorm {gnorm:.2f} "
                f"tokens {tokens_seen} elapsed {el:.0f}s tok/s {tokens_seen / el:.0f}")
        last = step == args.steps - 1
        if (step + 1) % args.eval_every == 0 or last:
            ppl = perplexity(model, held if last else eval_set)
            say(f"eval step {step + 1} heldout_loss {math.log(ppl):.4f} heldout_ppl {ppl:.2f} "
                f"({'all' if last else len(eval_set)} windows)")
            say("sample: " + json.dumps(sample(model, tok, "In the beginning")))
        if (step + 1) % args.ckpt_every == 0 or last:
            save("final" if last else "checkpoint")
            say(f"saved {'final' if last else 'checkpoint'} at step {step + 1}")
    say(f"done: {args.steps} steps, {tokens_seen} tokens, {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
