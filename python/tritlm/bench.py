"""Kernel benchmark: ``python -m tritlm.bench kernels [--threads 1,2] [--batches 1,8,128] [--quick]``.

Why this exists: the kernels are only worth having if batch-1 decode streams weights at close to
the machine's memory bandwidth and large batches turn into compute-bound GEMM. So the figures
printed here are always *relative to this machine*:

* GEMM rows time one ``kernels.matmul`` call on the four linear-layer shapes of BitNet b1.58 2B4T
  (``K -> N`` is ``in -> out``) and report G ternary MAC/s (``B*N*K / t / 1e9``). At batch 1 they
  also report weight bytes/s, but a single matrix of a few MB stays in cache when called in a
  loop, so those rows are "cache-hot" and flatter the kernel.
* The decode rows fix that: one pass calls matmul once on each of the 210 matrices of a whole
  30-layer model (~521 MB of 2-bit codes, all distinct buffers, far beyond any cache) and the
  achieved weight bytes/s is set beside a streaming-read bandwidth measured by
  ``_core.measure_read_bandwidth`` over a >= 1 GiB buffer in the same run with the same thread
  count. The ratio is what the kernel leaves on the table.
* A binary (1-bit) decode pass and batch-128 GEMM, and the scalar reference on one small shape,
  give the comparison points.

Targets (at 2 threads) are printed with PASS/MISS, but a miss never changes the exit status:
these are figures on a shared, noisy machine, not timed tests.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import IO, Any

import numpy as np

from . import _core, kernels
from .__main__ import _bytes, count, run_command
from .atomic_write import replaced_at_end
from .kernels import PackedWeights

# --------------------------------------------------------------------------------------------
# Model geometry and targets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """One linear layer shape: ``k`` inputs -> ``n`` outputs (weights are ``(n, k)``)."""

    name: str
    k: int
    n: int
    per_layer: int  # how many matrices of this shape one transformer layer holds

    @property
    def label(self) -> str:
        return f"{self.k}->{self.n}"


# BitNet b1.58 2B4T: hidden 2560, 20 query heads / 5 KV heads of 128, FFN 6912, 30 layers.
SHAPES: tuple[Shape, ...] = (
    Shape("attn q,o", 2560, 2560, 2),
    Shape("attn k,v", 2560, 640, 2),
    Shape("ffn gate,up", 2560, 6912, 2),
    Shape("ffn down", 6912, 2560, 1),
)
# The order in which one layer's matrices are used during a decode step (q, k, v, o, gate, up,
# down), so the decode pass touches memory the way a real forward pass does.
LAYER_ORDER: tuple[int, ...] = (0, 1, 1, 0, 2, 2, 3)
MODEL_LAYERS = 30
MIN_DECODE_BYTES = 512 * 10**6  # the decode set must dwarf every cache level

TARGET_THREADS = 2
TARGET_DECODE_FRACTION = 0.80  # decode weight bytes/s >= 80 % of measured read bandwidth
TARGET_GEMM_GMACS = 150.0  # batch-128 ternary GEMM >= 150 G MAC/s
TARGET_BATCH = 128

# The scalar kernel is the executable spec, not a fast path: compare it on one small shape only.
SCALAR_SHAPE = SHAPES[1]

BANDWIDTH_BYTES_FULL = 1 << 30  # >= 1 GiB, so the bandwidth probe cannot be served by cache
BANDWIDTH_BYTES_QUICK = 256 << 20

OUTPUT_FORMATS = ("text", "json")

# Parts of the run, selectable with --sections so one figure can be re-measured on its own.
SECTIONS: tuple[str, ...] = ("gemm", "binary", "scalar", "quantize", "decode")


@dataclass
class Config:
    """Knobs of one run; ``--quick`` shrinks every one of them for smoke tests."""

    threads: list[int]
    batches: list[int]
    quick: bool
    layers: int
    decode_passes: int
    min_time: float  # seconds spent timing each GEMM configuration
    min_reps: int
    max_reps: int
    bandwidth_bytes: int
    bandwidth_repeats: int
    isa: str | None
    seed: int = 0
    sections: list[str] = field(default_factory=lambda: list(SECTIONS))
    active_isa: str = "?"  # the dispatched table's name, filled in once the package is loaded

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> Config:
        quick = bool(ns.quick)
        return cls(
            threads=ns.threads,
            batches=ns.batches,
            quick=quick,
            layers=ns.layers if ns.layers is not None else (3 if quick else MODEL_LAYERS),
            decode_passes=ns.passes if ns.passes is not None else (3 if quick else 20),
            min_time=0.02 if quick else 0.4,
            min_reps=3 if quick else 5,
            max_reps=200 if quick else 5000,
            bandwidth_bytes=BANDWIDTH_BYTES_QUICK if quick else BANDWIDTH_BYTES_FULL,
            bandwidth_repeats=2 if quick else 10,
            isa=ns.isa,
            sections=ns.sections,
        )


# --------------------------------------------------------------------------------------------
# Result records (also the --json schema)
# --------------------------------------------------------------------------------------------


@dataclass
class GemmRow:
    """One timed matmul configuration."""

    section: str
    format: str
    shape: str
    n: int
    k: int
    batch: int
    threads: int
    isa: str
    best_s: float
    median_s: float
    reps: int
    gmacs: float  # from the best time
    weight_gbps: float | None  # batch 1 only; cache-hot, see module docstring
    target: str = ""


@dataclass
class QuantRow:
    """One timed quantize_activations call."""

    k: int
    batch: int
    best_s: float
    median_s: float
    reps: int
    input_gbps: float  # f32 input bytes / best time


@dataclass
class BandwidthRow:
    """Read bandwidth at one thread count: probed before and after the decode passes, and the
    better of the two is the yardstick (a neighbour's burst can only lower a probe)."""

    threads: int
    nbytes: int
    repeats: int
    before_bps: float
    after_bps: float = 0.0

    @property
    def bytes_per_s(self) -> float:
        return max(self.before_bps, self.after_bps)


@dataclass
class DecodeRow:
    """A full decode pass (batch 1) over every matrix of the model."""

    format: str
    threads: int
    isa: str
    layers: int
    matrices: int
    weight_bytes: int  # distinct packed bytes (codes + scales) touched per pass
    passes: int
    best_s: float
    median_s: float
    weight_gbps: float  # from the best pass
    read_bw_gbps: float  # the better of the probes before and after (see BandwidthRow)
    fraction_of_bw: float
    build_s: float
    passes_per_s: float  # 1 / best pass: an upper bound on tokens/s from the linear layers alone
    target: str = ""


@dataclass
class LayerMixRow:
    """G MAC/s of one whole layer at one batch and thread count (see layer_mix_gmacs)."""

    threads: int
    batch: int
    gmacs: float


@dataclass
class SpeedupRow:
    """How many times faster the SIMD table ran than the scalar specification, best against best."""

    batch: int
    isa: str
    speedup: float


@dataclass
class TargetRow:
    name: str
    threshold: str
    value: str
    status: str  # PASS / MISS / n/a


@dataclass
class Report:
    system: dict[str, Any]
    config: dict[str, Any]
    gemm: list[GemmRow] = field(default_factory=list)
    scalar: list[GemmRow] = field(default_factory=list)
    binary_gemm: list[GemmRow] = field(default_factory=list)
    quantize: list[QuantRow] = field(default_factory=list)
    bandwidth: list[BandwidthRow] = field(default_factory=list)
    decode: list[DecodeRow] = field(default_factory=list)
    layer_mix: list[LayerMixRow] = field(default_factory=list)
    scalar_speedup: list[SpeedupRow] = field(default_factory=list)
    targets: list[TargetRow] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Every figure the text shows, under the names of the fields that hold it."""
        d = asdict(self)
        for row, b in zip(d["bandwidth"], self.bandwidth):
            row["bytes_per_s"] = b.bytes_per_s
        safe: dict[str, Any] = json_safe(d)
        return safe


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as None: json.dump would write them as bare ``NaN``,
    which is not JSON, and jq or a browser refuse the whole file over it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def dump_json(data: Any, file: Any) -> None:
    """Write ``data`` (a to_json() document, NaN already None) as strict JSON with a final newline."""
    json.dump(data, file, indent=2, allow_nan=False)
    file.write("\n")


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _section_list(text: str) -> list[str]:
    """Parse ``"gemm,decode"`` for argparse, naming the choices on a typo."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in SECTIONS]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"unknown section(s) {bad or text!r}; choose from {','.join(SECTIONS)}")
    return values


def int_list(text: str) -> list[int]:
    """Parse ``"1,2"`` for argparse; rejects empty or non-positive entries early. A repeated
    entry is measured once: twice would print two rows of one figure and, for thread counts,
    give one bandwidth probe to two decode series."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return list(dict.fromkeys(values))


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, as taskset sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def check_threads(threads: int) -> int:
    """A thread count a benchmark can honour. More threads than CPUs time the scheduler's
    time-slicing, not the kernel, and nothing in such a table says so: refused by name."""
    if threads < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {threads}")
    cpus = available_cpus()
    if threads > cpus:
        raise argparse.ArgumentTypeError(f"{threads} threads is more than the {cpus} CPUs this process can use")
    return threads


def thread_count(text: str) -> int:
    """Parse one thread count for argparse (see check_threads)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    return check_threads(value)


def _thread_list(text: str) -> list[int]:
    """Parse ``--threads 1,2`` for argparse: positive, and no more than the CPUs there are."""
    return [check_threads(t) for t in int_list(text)]


def _isa(name: str) -> str:
    """Parse --isa for argparse: a kernel table this CPU and build have, named before measuring."""
    if name not in kernels.available_isas():
        raise argparse.ArgumentTypeError(f"{name!r} is not available here; choose from {','.join(kernels.available_isas())}")
    return name


def cpu_model() -> str:
    """The CPU's marketing name: /proc/cpuinfo on Linux, ``platform`` elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            import subprocess

            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True, text=True, timeout=5, check=False,
            ).stdout.strip()
            if out:
                return out
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def _time_calls(fn: Callable[[], object], min_time: float, min_reps: int, max_reps: int) -> list[float]:
    """Per-call wall times of ``fn`` after one warm-up call.

    Each call is timed on its own (perf_counter overhead is ~0.1 us, far below the shortest
    kernel) so that both the best and the median are available: the best is the figure least
    disturbed by the noisy neighbours of a shared machine, the median shows how noisy it was.
    """
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


class WeightSource:
    """Fast random ternary / binary matrices.

    Drawing 2 G random weights one matrix at a time would dominate the run, so one pool of
    random codes (a little larger than the largest matrix) is drawn once and every matrix is a
    contiguous slice of it at a random offset. Each matrix is still packed into its *own* buffer,
    and caches key on addresses, not contents, so the decode set's distinct bytes are real.
    """

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        largest = max(s.n * s.k for s in SHAPES)
        self.slack = 1 << 20
        self.ternary = self.rng.integers(-1, 2, size=largest + self.slack, dtype=np.int8)
        # {-1, +1}: the binary format has no zero.
        self.binary = (self.rng.integers(0, 2, size=largest + self.slack, dtype=np.int8) * 2 - 1).astype(
            np.int8
        )

    def matrix(self, fmt: str, n: int, k: int) -> np.ndarray:
        pool = self.ternary if fmt == "ternary" else self.binary
        off = int(self.rng.integers(0, self.slack))
        return pool[off : off + n * k].reshape(n, k)

    def activations(self, batch: int, k: int) -> np.ndarray:
        return self.rng.standard_normal((batch, k), dtype=np.float32)


def _pack(fmt: str, w: np.ndarray, scale: float) -> PackedWeights:
    return kernels.pack_ternary(w, scale) if fmt == "ternary" else kernels.pack_binary(w, scale)


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


def bench_gemm(
    src: WeightSource,
    cfg: Config,
    *,
    section: str,
    fmt: str,
    shapes: Sequence[Shape],
    batches: Sequence[int],
    threads: Sequence[int],
    isa: str | None,
    progress: Callable[[str], None],
) -> list[GemmRow]:
    """Time single matmul calls over shapes x batches x threads (one packed matrix per shape)."""
    rows: list[GemmRow] = []
    for shape in shapes:
        packed = _pack(fmt, src.matrix(fmt, shape.n, shape.k), 0.03)
        wbytes = packed.nbytes
        for batch in batches:
            act = kernels.quantize_activations(src.activations(batch, shape.k))
            for t in threads:
                progress(f"{section}: {fmt} {shape.label} B={batch} threads={t}")
                y = kernels.matmul(packed, act, n_threads=t, isa=isa)
                if tuple(np.shape(y)) != (batch, shape.n):
                    raise RuntimeError(f"matmul returned shape {np.shape(y)}, expected {(batch, shape.n)}")
                times = _time_calls(
                    lambda: kernels.matmul(packed, act, n_threads=t, isa=isa),
                    cfg.min_time, cfg.min_reps, cfg.max_reps,
                )
                best = min(times)
                rows.append(
                    GemmRow(
                        section=section, format=fmt, shape=shape.label, n=shape.n, k=shape.k,
                        batch=batch, threads=t, isa=isa or cfg.active_isa,
                        best_s=best, median_s=statistics.median(times), reps=len(times),
                        gmacs=batch * shape.n * shape.k / best / 1e9,
                        weight_gbps=wbytes / best / 1e9 if batch == 1 else None,
                    )
                )
        del packed
    return rows


def bench_quantize(src: WeightSource, cfg: Config, batches: Sequence[int]) -> list[QuantRow]:
    """Time quantize_activations: it runs once per distinct input per step, so it must be cheap."""
    rows: list[QuantRow] = []
    for k in sorted({s.k for s in SHAPES}):
        for batch in batches:
            x = src.activations(batch, k)
            times = _time_calls(lambda: kernels.quantize_activations(x), cfg.min_time, cfg.min_reps, cfg.max_reps)
            best = min(times)
            rows.append(QuantRow(k, batch, best, statistics.median(times), len(times), x.nbytes / best / 1e9))
    return rows


def measure_bandwidth(cfg: Config, threads: int) -> float:
    """Streaming-read bandwidth of this machine right now (bytes/s), the yardstick for decode."""

    return float(_core.measure_read_bandwidth(cfg.bandwidth_bytes, threads, cfg.bandwidth_repeats))


def build_decode_set(src: WeightSource, fmt: str, layers: int) -> tuple[list[tuple[Any, int]], int]:
    """Pack every matrix of ``layers`` layers into its own buffer.

    Returns ``(matrices, distinct_bytes)`` where ``matrices`` is the decode order as
    ``(packed, k)`` pairs.
    """
    mats: list[tuple[Any, int]] = []
    total = 0
    for _ in range(layers):
        for idx in LAYER_ORDER:
            s = SHAPES[idx]
            packed = _pack(fmt, src.matrix(fmt, s.n, s.k), 0.02)
            total += packed.nbytes
            mats.append((packed, s.k))
    return mats, total


def bench_decode(
    src: WeightSource,
    cfg: Config,
    fmt: str,
    progress: Callable[[str], None],
) -> list[DecodeRow]:
    """Time full batch-1 passes over a whole model's distinct matrices, per thread count."""
    progress(f"decode: packing {cfg.layers} layers of {fmt} weights")
    t0 = time.perf_counter()
    mats, wbytes = build_decode_set(src, fmt, cfg.layers)
    build_s = time.perf_counter() - t0
    acts = {k: kernels.quantize_activations(src.activations(1, k)) for k in {s.k for s in SHAPES}}
    isa = cfg.isa

    def one_pass(t: int) -> None:
        for packed, k in mats:
            kernels.matmul(packed, acts[k], n_threads=t, isa=isa)

    for t in cfg.threads:
        one_pass(t)  # warm-up: page tables, thread pool, branch predictors
    # Passes alternate between thread counts so that a neighbour's burst on the shared host
    # lands on all of them alike instead of wiping out one thread count's whole series.
    times: dict[int, list[float]] = {t: [] for t in cfg.threads}
    progress(f"decode: {fmt}, {cfg.decode_passes} passes x threads {cfg.threads} over {wbytes / 1e6:.0f} MB")
    for _ in range(cfg.decode_passes):
        for t in cfg.threads:
            t1 = time.perf_counter()
            one_pass(t)
            times[t].append(time.perf_counter() - t1)
    rows: list[DecodeRow] = []
    for t in cfg.threads:
        best = min(times[t])
        rows.append(
            DecodeRow(
                format=fmt, threads=t, isa=isa or cfg.active_isa, layers=cfg.layers, matrices=len(mats),
                weight_bytes=wbytes, passes=len(times[t]), best_s=best, median_s=statistics.median(times[t]),
                weight_gbps=wbytes / best / 1e9, read_bw_gbps=float("nan"), fraction_of_bw=float("nan"),
                build_s=build_s, passes_per_s=1.0 / best,
            )
        )
    del mats, acts
    gc.collect()
    return rows


# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------


def layer_mix_gmacs(rows: Sequence[GemmRow], threads: int, batch: int) -> float | None:
    """G MAC/s of one whole layer (q,k,v,o,gate,up,down) at ``batch``, weighting each shape by
    how often it occurs, i.e. total MACs over total time. None if a shape was not measured."""
    by_shape = {r.shape: r for r in rows if r.threads == threads and r.batch == batch and r.format == "ternary"}
    macs = secs = 0.0
    for s in SHAPES:
        r = by_shape.get(s.label)
        if r is None:
            return None
        macs += s.per_layer * batch * s.n * s.k
        secs += s.per_layer * r.best_s
    return macs / secs / 1e9


def layer_mix_rows(rows: Sequence[GemmRow], threads: Sequence[int], batches: Sequence[int]) -> list[LayerMixRow]:
    """The layer mix of every (threads, batch) whose four shapes were all measured."""
    out: list[LayerMixRow] = []
    for t in threads:
        for b in batches:
            mix = layer_mix_gmacs(rows, t, b)
            if mix is not None:
                out.append(LayerMixRow(t, b, mix))
    return out


def scalar_speedups(rows: Sequence[GemmRow]) -> list[SpeedupRow]:
    """SIMD over scalar per batch, from the scalar section's rows (one of each per batch)."""
    by = {(r.batch, r.isa == "scalar"): r for r in rows}
    return [SpeedupRow(b, by[(b, False)].isa, by[(b, True)].best_s / by[(b, False)].best_s)
            for b in sorted({r.batch for r in rows}) if (b, True) in by and (b, False) in by]


def evaluate_targets(rep: Report) -> None:
    """Fill PASS/MISS marks in the rows and the summary list; never raises on a miss."""
    for r in rep.gemm:
        if r.threads == TARGET_THREADS and r.batch == TARGET_BATCH:
            r.target = _mark(r.gmacs >= TARGET_GEMM_GMACS)
    for d in rep.decode:
        if d.threads == TARGET_THREADS and d.format == "ternary":
            d.target = _mark(d.fraction_of_bw >= TARGET_DECODE_FRACTION)

    dec = [d for d in rep.decode if d.threads == TARGET_THREADS and d.format == "ternary"]
    if dec:
        d = dec[0]
        full = d.weight_bytes >= MIN_DECODE_BYTES
        rep.targets.append(
            TargetRow(
                f"decode ternary B=1, {TARGET_THREADS} threads",
                f">= {TARGET_DECODE_FRACTION:.0%} of read BW",
                f"{d.fraction_of_bw:.1%} ({d.weight_gbps:.1f} of {d.read_bw_gbps:.1f} GB/s)"
                + ("" if full else f" [only {d.weight_bytes / 1e6:.0f} MB: not a full model]"),
                _mark(d.fraction_of_bw >= TARGET_DECODE_FRACTION),
            )
        )
    else:
        rep.targets.append(
            TargetRow(f"decode ternary B=1, {TARGET_THREADS} threads", f">= {TARGET_DECODE_FRACTION:.0%} of read BW",
                      f"not measured (needs the decode section, --threads {TARGET_THREADS})", "n/a")
        )

    mix = next((m.gmacs for m in rep.layer_mix if m.threads == TARGET_THREADS and m.batch == TARGET_BATCH), None)
    name = f"GEMM ternary B={TARGET_BATCH}, {TARGET_THREADS} threads, layer mix"
    if mix is None:
        rep.targets.append(TargetRow(name, f">= {TARGET_GEMM_GMACS:.0f} G MAC/s",
                                     f"not measured (needs the gemm section, --threads {TARGET_THREADS}, "
                                     f"--batches {TARGET_BATCH})",
                                     "n/a"))
    else:
        per = [r for r in rep.gemm if r.threads == TARGET_THREADS and r.batch == TARGET_BATCH]
        worst = min(per, key=lambda r: r.gmacs)
        rep.targets.append(
            TargetRow(name, f">= {TARGET_GEMM_GMACS:.0f} G MAC/s",
                      f"{mix:.1f} G MAC/s (slowest shape {worst.shape}: {worst.gmacs:.1f})",
                      _mark(mix >= TARGET_GEMM_GMACS))
        )


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def _fmt_us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> list[str]:
    """Fixed-width plain-text table: widths from the widest cell, numbers right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


GEMM_HEADERS = ("format", "shape K->N", "B", "thr", "isa", "best us", "median us", "reps", "G MAC/s",
                "weight GB/s", "target")
GEMM_RIGHT = (False, False, True, True, False, True, True, True, True, True, False)


def _gemm_cells(r: GemmRow) -> list[str]:
    return [r.format, r.shape, str(r.batch), str(r.threads), r.isa, _fmt_us(r.best_s), _fmt_us(r.median_s),
            str(r.reps), f"{r.gmacs:.2f}", "" if r.weight_gbps is None else f"{r.weight_gbps:.2f}", r.target]


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def render_header(system: dict[str, Any], config: dict[str, Any]) -> str:
    """The lines that say what the figures depend on; printed before measuring so a run that
    stalls still shows what it ran on."""
    s, c = system, config
    out = ["tritlm kernel benchmark", "=" * 23]
    out.append(f"date        : {s['date']}")
    out.append(f"cpu         : {s['cpu_model']} ({s['logical_cpus']} logical CPUs, {s['machine']})")
    forced = f"; every table but the scalar row runs {c['isa']} (--isa)" if c["isa"] else ""
    out.append(f"isa         : {s['isa']} dispatched (available: {', '.join(s['available_isas'])}){forced}")
    out.append(f"features    : {' '.join(s['features']) if s['features'] else '-'}")
    out.append(f"threads     : {s['threads']} (kernel default)")
    out.append(f"python      : {s['python']}, numpy {s['numpy']}, tritlm {s['tritlm']}")
    out.append(f"load avg    : {s['load_start']} at start (1/5/15 min; other work on the host skews every figure)")
    out.append(
        f"run         : {'quick' if c['quick'] else 'full'}; threads {c['threads']}; batches {c['batches']}; "
        f"times are per call, best and median of >= {c['min_reps']} calls / {c['min_time']} s"
    )
    return "\n".join(out)


def render(rep: Report) -> str:
    """Every measured table (the header is printed separately by render_header)."""
    c = rep.config
    out: list[str] = []
    if rep.gemm:
        isa = "dispatched ISA" if c["isa"] is None else f"ISA {c['isa']} (--isa)"
        out.append(f"GEMM, ternary (2-bit), {isa}; G MAC/s from the best time. B=1 weight GB/s is")
        out.append("cache-hot (one matrix called in a loop); see the decode rows for memory-bound figures.")
        out.extend(_table(GEMM_HEADERS, [_gemm_cells(r) for r in rep.gemm], GEMM_RIGHT))
        out.extend(f"  layer mix (2x q/o, 2x k/v, 2x gate/up, 1x down) B={m.batch} thr={m.threads}: {m.gmacs:.2f} G MAC/s"
                   for m in rep.layer_mix)
        out.append("")

    if rep.binary_gemm:
        out.append(f"GEMM, binary (1-bit), B={TARGET_BATCH}")
        out.extend(_table(GEMM_HEADERS, [_gemm_cells(r) for r in rep.binary_gemm], GEMM_RIGHT))
        out.append("")

    if rep.scalar:
        out.append(f"Scalar reference vs dispatched ISA, {SCALAR_SHAPE.label}, 1 thread")
        out.extend(_table(GEMM_HEADERS, [_gemm_cells(r) for r in rep.scalar], GEMM_RIGHT))
        out.extend(f"  B={x.batch}: {x.isa} is {x.speedup:.1f}x scalar" for x in rep.scalar_speedup)
        out.append("")

    if rep.quantize:
        out.append("quantize_activations (f32 -> int8 per row)")
        out.extend(
            _table(
                ("K", "B", "best us", "median us", "reps", "input GB/s"),
                [[str(q.k), str(q.batch), _fmt_us(q.best_s), _fmt_us(q.median_s), str(q.reps), f"{q.input_gbps:.2f}"]
                 for q in rep.quantize],
                (True,) * 6,
            )
        )
        out.append("")

    if rep.bandwidth:
        out.append("Read bandwidth (_core.measure_read_bandwidth, streaming reads, best of repeats;")
        out.append("probed before and after the decode passes, the better one is the decode yardstick)")
        out.extend(
            _table(
                ("thr", "buffer MiB", "repeats", "before GB/s", "after GB/s", "used GB/s"),
                [[str(b.threads), f"{b.nbytes / 2**20:.0f}", str(b.repeats), f"{b.before_bps / 1e9:.2f}",
                  f"{b.after_bps / 1e9:.2f}", f"{b.bytes_per_s / 1e9:.2f}"] for b in rep.bandwidth],
                (True,) * 6,
            )
        )
        out.append("")

    if rep.decode:
        d0 = rep.decode[0]
        out.append(
            f"Decode, B=1: one pass = matmul on each of {d0.matrices} distinct matrices ({d0.layers} layers); "
            "GB/s and % from the best pass"
        )
        out.extend(
            _table(
                ("format", "thr", "isa", "weight MB", "best ms", "median ms", "passes", "weight GB/s", "read GB/s",
                 "% of BW", "pass/s", "build s", "target"),
                [[d.format, str(d.threads), d.isa, f"{d.weight_bytes / 1e6:.1f}", _fmt_ms(d.best_s),
                  _fmt_ms(d.median_s),
                  str(d.passes), f"{d.weight_gbps:.2f}", f"{d.read_bw_gbps:.2f}", f"{d.fraction_of_bw:.1%}",
                  f"{d.passes_per_s:.1f}", f"{d.build_s:.1f}", d.target] for d in rep.decode],
                (False, True, False, True, True, True, True, True, True, True, True, True, False),
            )
        )
        out.append("  pass/s = upper bound on tokens/s from the linear layers alone.")
        out.append("")

    out.append(f"Targets ({TARGET_THREADS} threads; figures only, a MISS does not fail the run)")
    out.extend(
        _table(("target", "threshold", "measured", "status"),
               [[t.name, t.threshold, t.value, t.status] for t in rep.targets], (False,) * 4)
    )
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# A whole model: ``python -m tritlm bench`` (llama-bench's pp / tg)
# --------------------------------------------------------------------------------------------


def kv_bytes_per_position(config: dict[str, Any], kv_f16: bool = True) -> int:
    """Bytes of one position's keys and values over all layers: what attention reads for each
    position of the context at every generated token."""
    return 2 * (2 if kv_f16 else 4) * int(config["n_layers"]) * int(config["n_kv_heads"]) * int(config["head_dim"])


def kv_bytes_read_per_token(config: dict[str, Any], first_position: int, tokens: int, kv_f16: bool = True) -> int:
    """KV cache bytes one generated token reads, on average over ``tokens`` decode steps at
    positions ``first_position``, ``first_position + 1``, ...: the step at position p reads
    positions 0..p, so first_position + (tokens + 1) / 2 of them on average. Part of a token's
    bytes as the weights are: at 1-bit sizes and a few hundred positions it is several percent."""
    return kv_bytes_per_position(config, kv_f16) * (2 * first_position + tokens + 1) // 2


@dataclass
class Rate:
    """Tokens/s of one test over its repeats: each repeat's figure, their mean and sample
    standard deviation (llama-bench's avg ± stdev; 0 for one repeat)."""

    tokens: int
    samples: list[float]
    mean: float
    stdev: float

    @classmethod
    def of(cls, tokens: int, samples: list[float]) -> Rate:
        return cls(tokens, samples, statistics.mean(samples), statistics.stdev(samples) if len(samples) > 1 else 0.0)


@dataclass
class ModelBench:
    """Figures of ``python -m tritlm bench``, each computed once: the text lines and the JSON
    document are two views of these fields."""

    model: str
    threads: int
    isa: str
    repeats: int
    weight_bytes_per_token: int  # every linear's packed weights + the head, read at every token
    kv_bytes_per_token: int  # KV cache read per generated token, on average over the tg run
    read_bandwidth_bps: float  # streaming reads on the same threads, measured in this run
    roofline_tokens_per_s: float  # bandwidth / (weights + KV cache) bytes per generated token
    pp: Rate | None = None  # prompt processing: a prompt of pp.tokens tokens in one pass
    tg: Rate | None = None  # generation from an empty context, tg.tokens tokens one at a time
    tg_roofline_fraction: float | None = None  # tg.mean / roofline

    def to_json(self) -> dict[str, Any]:
        safe: dict[str, Any] = json_safe(asdict(self))
        return safe


def model_line(r: ModelBench) -> str:
    return (f"model: {r.model}  threads: {r.threads}  isa: {r.isa}  "
            f"weights read per token: {_bytes(r.weight_bytes_per_token)}")


def roofline_line(r: ModelBench) -> str:
    return (f"read bandwidth (same run): {r.read_bandwidth_bps / 1e9:.1f} GB/s -> roofline "
            f"{r.roofline_tokens_per_s:.1f} tokens/s (weights + {_bytes(r.kv_bytes_per_token)} of KV cache a token)")


def rate_line(kind: str, rate: Rate, fraction: float | None = None) -> str:
    share = "" if fraction is None else f"  ({100 * fraction:.0f}% of roofline)"
    return f"{kind}{rate.tokens:<5} {rate.mean:8.2f} ± {rate.stdev:6.2f} tokens/s{share}"


def render_model_bench(r: ModelBench) -> list[str]:
    """Every line of the text output, in order (run_model_bench prints each as it is measured)."""
    lines = [model_line(r), roofline_line(r)]
    if r.pp is not None:
        lines.append(rate_line("pp", r.pp))
    if r.tg is not None:
        lines.append(rate_line("tg", r.tg, r.tg_roofline_fraction))
    return lines


def context_needed(prompt: int, gen: int) -> int:
    """Positions the runs need: the pp prompt and its one sampled token, or one token and gen+1
    after it (the last sampled token is never evaluated, but the scheduler reserves it)."""
    return max(prompt + 1, gen + 2 if gen else 0)


def run_model_bench(llm: Any, *, threads: int, prompt: int, gen: int, repeats: int,
                    show: Callable[[str], None] | None = None) -> ModelBench:
    """Measure a loaded model as llama-bench does: ``pp`` a random prompt of ``prompt`` tokens in
    one pass, ``tg`` ``gen`` tokens one at a time from an empty context (a one-token prompt, then
    ``gen`` decode steps), each ``repeats`` times after one warm-up. Random tokens each time, so
    the prefix cache serves nothing. ``show`` gets each text line as soon as it is known."""
    info = llm.info
    weights = info["linear_bytes"] + info["head_bytes"]
    kv = kv_bytes_read_per_token(info["config"], 1, gen) if gen else 0
    emit = show or (lambda line: None)
    res = ModelBench(model=str(info["path"]), threads=threads, isa=_core.active_isa(), repeats=repeats,
                     weight_bytes_per_token=weights, kv_bytes_per_token=kv, read_bandwidth_bps=0.0,
                     roofline_tokens_per_s=0.0)
    emit(model_line(res))
    res.read_bandwidth_bps = float(_core.measure_read_bandwidth(1 << 30, threads, 5))
    res.roofline_tokens_per_s = res.read_bandwidth_bps / (weights + kv)
    emit(roofline_line(res))
    rng = np.random.default_rng(0)
    vocab = llm.n_vocab

    def tokens(n: int) -> list[int]:
        return [int(t) for t in rng.integers(0, vocab, n)]

    llm.eval_logits(tokens(prompt))  # warm-up: the page cache, the thread pool
    pp: list[float] = []
    tg: list[float] = []
    for _ in range(repeats):
        pp.append(llm.generate(tokens(prompt), max_tokens=1, temperature=0,
                               ignore_eos=True).timings.prompt_tokens_per_s)
        if gen:  # -n 0 measures the prompt alone, as in llama-bench
            tg.append(llm.generate(tokens(1), max_tokens=gen + 1, temperature=0,
                                   ignore_eos=True).timings.generation_tokens_per_s)
    res.pp = Rate.of(prompt, pp)
    emit(rate_line("pp", res.pp))
    if gen:
        res.tg = Rate.of(gen, tg)
        res.tg_roofline_fraction = res.tg.mean / res.roofline_tokens_per_s
        emit(rate_line("tg", res.tg, res.tg_roofline_fraction))
    return res


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def system_header() -> dict[str, Any]:
    """What the figures depend on: ISA, features, threads, CPU, versions, date."""
    from . import __version__, system_info  # the package imports nothing from this module

    info = system_info()
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "machine": platform.machine(),
        "isa": info["isa"],
        "features": info["features"],
        "threads": info["threads"],
        "available_isas": info["available_isas"],
        "python": platform.python_version(),
        "numpy": np.__version__,
        "tritlm": __version__,
        "load_start": _load(),
    }


def run_kernels(cfg: Config, system: dict[str, Any], progress: Callable[[str], None]) -> Report:
    """Run every measurement of the ``kernels`` subcommand and return the report."""

    cfg.active_isa = str(system["isa"])
    rep = Report(system=system, config=asdict(cfg))
    src = WeightSource(cfg.seed)

    want = set(cfg.sections)
    if "gemm" in want:
        rep.gemm = bench_gemm(src, cfg, section="gemm", fmt="ternary", shapes=SHAPES,
                              batches=cfg.batches, threads=cfg.threads, isa=cfg.isa, progress=progress)
    if "binary" in want:
        rep.binary_gemm = bench_gemm(src, cfg, section="binary gemm", fmt="binary",
                                     shapes=SHAPES[:1] if cfg.quick else SHAPES, batches=[TARGET_BATCH],
                                     threads=cfg.threads, isa=cfg.isa, progress=progress)
    if "scalar" in want and "scalar" in kernels.available_isas():
        fast_isa = cfg.isa or cfg.active_isa
        scalar_batches = [1] if cfg.quick else [1, 8]
        for isa in ["scalar"] + ([fast_isa] if fast_isa != "scalar" else []):
            rep.scalar += bench_gemm(src, cfg, section="scalar", fmt="ternary", shapes=[SCALAR_SHAPE],
                                     batches=scalar_batches, threads=[1], isa=isa, progress=progress)
    if "quantize" in want:
        rep.quantize = bench_quantize(src, cfg, [1, TARGET_BATCH])

    if "decode" in want:
        # Bandwidth right before and right after the decode passes, so it sees the same
        # neighbours on a shared host; the decode rows' percentages are filled in once both
        # probes are in.
        bw: dict[int, BandwidthRow] = {}
        for t in cfg.threads:
            progress(f"bandwidth: {cfg.bandwidth_bytes >> 20} MiB, threads={t}")
            bw[t] = BandwidthRow(t, cfg.bandwidth_bytes, cfg.bandwidth_repeats, measure_bandwidth(cfg, t))
        rep.decode = bench_decode(src, cfg, "ternary", progress)
        rep.decode += bench_decode(src, cfg, "binary", progress)
        for t in cfg.threads:
            progress(f"bandwidth again: {cfg.bandwidth_bytes >> 20} MiB, threads={t}")
            bw[t].after_bps = measure_bandwidth(cfg, t)
        rep.bandwidth = list(bw.values())
        for d in rep.decode:
            d.read_bw_gbps = bw[d.threads].bytes_per_s / 1e9
            d.fraction_of_bw = d.weight_gbps / d.read_bw_gbps if d.read_bw_gbps > 0 else float("nan")

    rep.layer_mix = layer_mix_rows(rep.gemm, cfg.threads, cfg.batches)
    rep.scalar_speedup = scalar_speedups(rep.scalar)
    evaluate_targets(rep)
    return rep


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tritlm.bench", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    k = sub.add_parser("kernels", help="matmul / decode figures against this machine's read bandwidth")
    k.add_argument("--threads", type=_thread_list, default=[t for t in (1, 2) if t <= available_cpus()],
                   help="comma-separated thread counts, at most the CPUs there are (default 1,2)")
    k.add_argument("--batches", type=int_list, default=[1, 8, 128],
                   help="comma-separated batch sizes (default 1,8,128)")
    k.add_argument("--quick", action="store_true",
                   help="smoke-test run: 3-layer decode set, 256 MiB bandwidth buffer, few repeats")
    k.add_argument("--layers", type=count(1), default=None,
                   help=f"layers in the decode set (default {MODEL_LAYERS}, 3 with --quick)")
    k.add_argument("--passes", type=count(1), default=None, help="timed decode passes (default 20, 3 with --quick)")
    k.add_argument("--sections", type=_section_list, default=list(SECTIONS),
                   help=f"comma-separated parts to run (default all: {','.join(SECTIONS)})")
    k.add_argument("--isa", type=_isa, default=None, help="kernel table to use instead of the dispatched one")
    k.add_argument("--json", metavar="PATH", default=None,
                   help="also write the figures as JSON to PATH (replaced only when the run completes)")
    add_output_option(k)
    k.add_argument("--verbose", "-v", action="store_true", help="progress lines on stderr")
    return p


def add_output_option(p: argparse.ArgumentParser) -> None:
    """``-o/--output {text,json}``, as llama-bench's ``-o``: json puts one JSON document with every
    figure on stdout and nothing else there, for scripts that compare runs."""
    p.add_argument("-o", "--output", choices=OUTPUT_FORMATS, default="text",
                   help="what stdout gets: the tables (text, default) or one JSON document (json)")


@contextlib.contextmanager
def pending_file(path: str | None) -> Iterator[IO[str] | None]:
    """--json's file, opened now (an unwritable path fails before minutes of measuring) and put
    in place only when the run completes (atomic_write.replaced_at_end)."""
    if path is None:
        yield None
        return
    with replaced_at_end(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        yield f


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0 whatever the targets say (misses are figures, not failures)."""
    ns = build_parser().parse_args(argv)
    return run_command(lambda: run_kernels_command(ns))


def run_kernels_command(ns: argparse.Namespace) -> int:
    """Measure, then print the tables (or the JSON document with ``-o json``) and write --json."""
    cfg = Config.from_args(ns)
    text = ns.output == "text"

    def progress(msg: str) -> None:
        if ns.verbose:
            print(f"[bench] {msg}", file=sys.stderr, flush=True)

    with pending_file(ns.json) as json_file:
        system = system_header()
        if text:
            print(render_header(system, asdict(cfg)) + "\n", flush=True)
        t0 = time.perf_counter()
        rep = run_kernels(cfg, system, progress)
        rep.system["load_end"] = _load()
        rep.system["elapsed_s"] = round(time.perf_counter() - t0, 1)
        if text:
            print(render(rep), flush=True)
            print(f"\nload avg at end: {rep.system['load_end']}; measured in {rep.system['elapsed_s']} s", flush=True)
        else:
            dump_json(rep.to_json(), sys.stdout)
        if json_file is not None:
            dump_json(rep.to_json(), json_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
