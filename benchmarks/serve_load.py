"""Load on the HTTP server: N concurrent streaming clients on loopback, on a 2B4T-shaped model.

    python benchmarks/serve_load.py [--model M.gguf] [--clients 1,2,4,8,16] [--threads 2]

Starts `python -m tritlm.serve` in a subprocess and drives it with the official `openai` client
(streaming completions with token-list prompts, so every prompt has exactly the length asked
for; `ignore_eos` keeps every stream to its full length on a random-weight model). Reports, per
client count: aggregate generated tokens/s, time to first token (TTFT) p50/p99, inter-token
latency (ITL) p50/p99. Then two latency checks:

- TTFT of a 64-token prompt while 7 other streams decode, against its TTFT on an idle server;
- TTFT of a chat turn whose 1,000-token history is cached (the previous turn left it in a
  slot), against a 50-token prompt.

Without --model it writes the 2B4T-shaped model (random ternary weights, I2_S) to a temporary
file first (about 1.2 GB, a minute or two).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
from engine_speed import run_script  # benchmarks/engine_speed.py, next to this script

from tritlm.__main__ import count, existing_path
from tritlm.bench import int_list, thread_count


@dataclass
class StreamStats:
    ttft: float = 0.0
    gaps: list[float] = field(default_factory=list)
    tokens: int = 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(url: str) -> tuple[str, str]:
    """(status, reason) from the server's /health: "ok", "loading", "unhealthy" (a model failed
    to load; reason is its error) or "down" (no answer yet)."""
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:  # 503 while loading or after a failure: the body says which
        body = json.load(e)
    except (OSError, ValueError):
        return "down", ""
    errors = [f"{m['id']}: {m['error']}" for m in body.get("models", []) if m.get("error")]
    return str(body.get("status", "down")), "; ".join(errors)


def wait_until_serving(url: str, proc: subprocess.Popen, timeout_s: float = 300.0) -> None:
    """Wait for /health to say ok. The server answers 503 while its model loads and keeps
    answering after the load failed, so a corrupt model is reported at once from /health's
    error (polling for a 200 alone waited forever, or for the whole timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, reason = health(url)
        if status == "ok":
            return
        if status == "unhealthy":
            raise SystemExit(f"the server could not load its model: {reason}")
        if proc.poll() is not None:
            raise SystemExit(f"the server stopped (exit status {proc.returncode})")
        if time.monotonic() > deadline:
            raise SystemExit(f"the server did not start within {timeout_s:.0f} s")
        time.sleep(0.2)


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


async def one_stream(client, prompt: list[int], max_tokens: int,
                     first_token: asyncio.Event | None = None) -> StreamStats:
    """One streaming completion; times the first token and the gaps between later ones, and sets
    ``first_token`` when the first one arrives."""
    st = StreamStats()
    t0 = last = time.perf_counter()
    stream = await client.completions.create(
        model="bench", prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True,
        extra_body={"ignore_eos": True},
    )
    async for chunk in stream:
        if not chunk.choices or not chunk.choices[0].text:
            continue
        now = time.perf_counter()
        if st.tokens == 0:
            st.ttft = now - t0
            if first_token is not None:
                first_token.set()
        else:
            st.gaps.append(now - last)
        last = now
        st.tokens += 1  # one token per chunk: the server streams every decoded token
    return st


def random_prompt(rng: np.random.Generator, n: int, vocab: int) -> list[int]:
    return rng.integers(vocab // 8, vocab - vocab // 8, n).tolist()  # ordinary tokens, not specials


async def run_clients(client, n: int, prompt_len: int, gen: int, vocab: int, rng: np.random.Generator) -> float:
    prompts = [random_prompt(rng, prompt_len, vocab) for _ in range(n)]
    t0 = time.perf_counter()
    results = await asyncio.gather(*(one_stream(client, p, gen) for p in prompts))
    wall = time.perf_counter() - t0
    tokens = sum(r.tokens for r in results)
    ttft = [r.ttft for r in results]
    gaps = [g for r in results for g in r.gaps]
    print(f"N={n:<3} {tokens / wall:7.1f} tok/s aggregate | TTFT p50 {percentile(ttft, 50):6.3f} s "
          f"p99 {percentile(ttft, 99):6.3f} s | ITL p50 {1000 * percentile(gaps, 50):6.1f} ms "
          f"p99 {1000 * percentile(gaps, 99):6.1f} ms", flush=True)
    return tokens / wall


async def ttft_under_load(client, vocab: int, rng: np.random.Generator) -> None:
    probe = random_prompt(rng, 64, vocab)
    idle = [(await one_stream(client, random_prompt(rng, 64, vocab), 2)).ttft for _ in range(3)]
    # The probe starts once all seven have their first token (a fixed 1.5 s sleep let a fast model
    # finish them first, and the 'loaded' figure was taken on an idle server), and the line says
    # how many were still decoding when the probe's answer came.
    started = [asyncio.Event() for _ in range(7)]
    background = [asyncio.create_task(one_stream(client, random_prompt(rng, 16, vocab), 64, ev)) for ev in started]
    await asyncio.gather(*(ev.wait() for ev in started))
    loaded = (await one_stream(client, probe, 2)).ttft
    decoding = sum(not t.done() for t in background)
    await asyncio.gather(*background)
    idle_ttft = statistics.median(idle)
    print(f"TTFT of a 64-token prompt: idle {idle_ttft:.3f} s, while {decoding} of 7 streams decode "
          f"{loaded:.3f} s = {loaded / idle_ttft:.2f}x (target <= 2x)", flush=True)


async def cached_history(client, vocab: int, rng: np.random.Generator) -> None:
    history = random_prompt(rng, 1000, vocab)
    first = await client.completions.create(model="bench", prompt=history, max_tokens=8, temperature=0,
                                            extra_body={"ignore_eos": True})
    reply = first.choices[0].text
    del reply  # the next turn resends the history plus new tokens, as a chat client does
    turn = history + random_prompt(rng, 20, vocab)
    cached = await one_stream(client, turn, 2)
    short = statistics.median([(await one_stream(client, random_prompt(rng, 50, vocab), 2)).ttft for _ in range(3)])
    print(f"TTFT of a turn with a cached 1,000-token history: {cached.ttft:.3f} s; of a 50-token prompt: "
          f"{short:.3f} s = {cached.ttft / short:.2f}x", flush=True)


def speedup_label(rate: float, base_clients: int, base_rate: float) -> str:
    """This count's aggregate rate against the first count's. It said 'x the single stream'
    whatever the first count was: with --clients 4,8 the yardstick was four streams."""
    what = "the single stream" if base_clients == 1 else f"N={base_clients}"
    return f"{rate / base_rate:.2f}x {what}" if base_rate > 0 else f"n/a ({what} generated nothing)"


def write_model(path: str, threads: int) -> None:
    sys.path.insert(0, os.path.dirname(__file__))
    import engine_2b4t

    _, _, weights = engine_2b4t.build(threads, "f16")
    engine_2b4t.write_i2_s(weights, path)


async def main_async(a: argparse.Namespace, port: int, vocab: int) -> None:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="bench", max_retries=0, timeout=600)
    rng = np.random.default_rng(0)
    await one_stream(client, random_prompt(rng, 8, vocab), 4)  # warm the page cache
    base: tuple[int, float] | None = None  # (clients, tokens/s) of the first count: the yardstick
    for n in a.clients:
        rate = await run_clients(client, n, a.prompt, a.gen, vocab, rng)
        if base is None:
            base = (n, rate)
        else:
            print(f"       = {speedup_label(rate, *base)}", flush=True)
    await ttft_under_load(client, vocab, rng)
    await cached_history(client, vocab, rng)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, each checked as it is parsed (before a model is written or a server started):
    counts are integers of at least 1 (--threads at most the CPUs), --model exists."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=existing_path,
                    help="GGUF to serve (default: write the 2B4T-shaped model to a temp file)")
    ap.add_argument("--clients", type=int_list, default=[1, 2, 4, 8, 16],
                    help="comma-separated concurrent client counts (default 1,2,4,8,16)")
    ap.add_argument("--threads", type=thread_count, default=2)
    ap.add_argument("--prompt", type=count(1), default=64, help="prompt tokens of each stream (default 64)")
    ap.add_argument("--gen", type=count(1), default=32, help="tokens each stream generates (default 32)")
    ap.add_argument("--head", choices=["f16", "q8"], default="q8")
    ap.add_argument("--max-seqs", type=count(1), default=16)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    tmp = None
    if a.model is None:
        tmp = tempfile.TemporaryDirectory()
        a.model = os.path.join(tmp.name, "2b4t.gguf")
        t = time.perf_counter()
        write_model(a.model, a.threads)
        print(f"wrote {a.model} in {time.perf_counter() - t:.0f} s", flush=True)
    from tritlm.loaders import load_model

    vocab = load_model(a.model).config["vocab_size"]
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tritlm.serve", "--model", a.model, "--model-id", "bench", "--port", str(port),
         "--threads", str(a.threads), "--head", a.head, "--ctx", "2048", "--max-running", str(a.max_seqs),
         "--log-level", "warning"],
    )
    try:
        wait_until_serving(f"http://127.0.0.1:{port}", server)
        print(f"server: threads {a.threads}, head {a.head}, max {a.max_seqs} sequences per step; "
              f"prompts {a.prompt} tokens, {a.gen} generated per stream", flush=True)
        asyncio.run(main_async(a, port, vocab))
    finally:
        server.terminate()
        server.wait(timeout=60)
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    run_script(main)
