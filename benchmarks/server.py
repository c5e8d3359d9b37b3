"""The HTTP server's own costs, measured against `python -m tritlm.serve` in a separate process:

- /health latency while idle and while the engine generates (the event loop must stay free);
- one stream's tokens/s through the server beside the same generation through tritlm.LLM
  in this process (the server's overhead per token);
- 32 concurrent streaming clients: wall time, time to first token, aggregate tokens/s.

    python benchmarks/server.py [--model PATH] [--tokens 512] [--clients 32]

Without --model it builds the tests' tiny random model (needs the test extra: torch, transformers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from engine_speed import run_script  # benchmarks/engine_speed.py, next to this script
from serve_load import wait_until_serving

from tritlm.__main__ import count, existing_path


def launch(model: str) -> tuple[subprocess.Popen[str], str]:
    """Start the server and wait for its address. If it stops first, its last lines are the
    reason (a corrupt model, say): they are shown, where they were read and dropped before."""
    proc = subprocess.Popen([sys.executable, "-m", "tritlm.serve", "--model", model, "--model-id", "m", "--port", "0",
                             "--max-waiting", "256"], stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen: list[str] = []
    for line in proc.stderr:
        if "listening on http://" in line:
            url = line.strip().rsplit(" ", 1)[1]
            break
        seen.append(line.rstrip("\n"))
    else:
        proc.wait()
        reason = next((x for x in reversed(seen) if x.strip()), f"exit status {proc.returncode}")
        raise SystemExit(f"the server did not start: {reason}")
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # drain the access log
    try:
        wait_until_serving(url, proc)
    except BaseException:
        proc.terminate()
        proc.wait(timeout=30)
        raise
    return proc, url


def percentiles(xs: list[float]) -> str:
    xs = sorted(xs)
    return (f"median {statistics.median(xs) * 1000:.2f} ms, p99 {xs[int(0.99 * (len(xs) - 1))] * 1000:.2f} ms, "
            f"max {xs[-1] * 1000:.2f} ms (n={len(xs)})")


def health_latency(url: str, n: int) -> list[float]:
    out = []
    with httpx.Client(base_url=url) as c:
        for _ in range(n):
            t = time.perf_counter()
            c.get("/health").raise_for_status()
            out.append(time.perf_counter() - t)
            time.sleep(0.002)
    return out


def chat(tokens: int, seed: int, content: str = "Tell me a story", stream: bool = False) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": content}], "max_tokens": tokens, "seed": seed,
            "ignore_eos": True, "stream": stream}


def stream_once(url: str, body: dict[str, object]) -> tuple[float, float, int]:
    """(time to first content, total time, content chunks) of one streaming request."""
    start = time.perf_counter()
    first = 0.0
    chunks = 0
    with httpx.Client(timeout=600) as c, c.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"role"' not in line:
                chunks += 1
                first = first or time.perf_counter() - start
    return first, time.perf_counter() - start, chunks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=existing_path,
                    help="GGUF file or Hugging Face folder (default: the tests' tiny model)")
    ap.add_argument("--tokens", type=count(1), default=512, help="tokens of the single stream (default 512)")
    ap.add_argument("--clients", type=count(1), default=32, help="concurrent streams (default 32)")
    a = ap.parse_args(argv)
    model = a.model
    if model is None:
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
        import model_factory

        model = tempfile.mkdtemp(prefix="tritlm-bench-")
        model_factory.build_master(model, seed=3)
    proc, url = launch(model)
    try:
        print(f"server at {url}, model {model}")
        print("/health idle:              ", percentiles(health_latency(url, 200)))

        done = threading.Event()
        gen = threading.Thread(target=lambda: (httpx.post(f"{url}/v1/chat/completions",
                                                          json=chat(3500, 0), timeout=600), done.set()))
        gen.start()
        time.sleep(0.1)
        during = []
        while not done.is_set():
            during += health_latency(url, 10)
        gen.join()
        print("/health during generation: ", percentiles(during))

        import tritlm

        llm = tritlm.LLM(model, n_ctx=4096)
        t = time.perf_counter()
        direct = llm.generate(llm.chat_prompt([{"role": "user", "content": "Tell me a story"}]), max_tokens=a.tokens,
                              seed=1, ignore_eos=True)
        direct_s = time.perf_counter() - t
        _, served_s, chunks = stream_once(url, chat(a.tokens, 1, stream=True))
        print(f"one stream of {a.tokens} tokens: LLM in-process {a.tokens / direct_s:.0f} tok/s, "
              f"through the server {a.tokens / served_s:.0f} tok/s ({chunks} content chunks; ratio "
              f"{direct_s / served_s:.2f})")
        del direct

        n = a.clients
        per = max(1, a.tokens // 8)
        t = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(lambda i: stream_once(url, chat(per, i, f"Story {i}", stream=True)), range(n)))
        wall = time.perf_counter() - t
        ttft = [r[0] for r in results]
        print(f"{n} concurrent streams x {per} tokens: wall {wall:.2f} s, {n * per / wall:.0f} tok/s aggregate, "
              f"time to first token median {statistics.median(ttft) * 1000:.0f} ms, max {max(ttft) * 1000:.0f} ms")
        metrics = httpx.get(f"{url}/metrics").text
        print("metrics:", json.dumps([line for line in metrics.splitlines() if line.startswith("tritlm_requests_total")]))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    run_script(main)
