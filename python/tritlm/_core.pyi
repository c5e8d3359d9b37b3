"""
tritlm's native core: kernels, packing, threads, and the transformer forward pass.
"""

from collections.abc import Sequence
from typing import Annotated, Any, Literal, overload

import numpy
from numpy.typing import NDArray



class PackedWeights:
    """A weight matrix in tritlm's run-time layout."""

    @property
    def format(self) -> str: ...

    @property
    def n(self) -> int: ...

    @property
    def k(self) -> int: ...

    @property
    def group_size(self) -> int: ...

    @property
    def nbytes(self) -> int: ...

    @property
    def codes(self) -> Annotated[NDArray[numpy.uint8], dict(writable=False)]: ...

    @property
    def scales(self) -> NDArray[numpy.float32]:
        """
        The scales as float32 [n, groups] (a copy, in row order whatever the layout).
        """

    def unpack(self) -> tuple[NDArray[numpy.int8], NDArray[numpy.float32]]:
        """The weights as int8 [n, k] and the scales as float32 [n, groups]."""

    def __repr__(self) -> str: ...

class QuantizedActivations:
    """Activations quantized per row to int8."""

    @property
    def rows(self) -> int: ...

    @property
    def k(self) -> int: ...

    @property
    def q(self) -> Annotated[NDArray[numpy.int8], dict(shape=(None, None), writable=False)]: ...

    @property
    def scale(self) -> Annotated[NDArray[numpy.float32], dict(shape=(None,), writable=False)]: ...

    @property
    def block_sums(self) -> Annotated[NDArray[numpy.int32], dict(shape=(None, None), writable=False)]: ...

    def __repr__(self) -> str: ...

def quantize(x: Annotated[NDArray, dict(writable=False)], n_threads: int | None = None, isa: str | None = None) -> QuantizedActivations: ...

def f32_to_f16(x: Annotated[NDArray, dict(writable=False)], isa: str | None = None) -> NDArray[numpy.uint16]: ...

def activations_from_int8(q: Annotated[NDArray, dict(writable=False)], scale: Annotated[NDArray, dict(writable=False)]) -> QuantizedActivations: ...

def matmul(w: PackedWeights, a: QuantizedActivations, n_threads: int | None = None, isa: str | None = None) -> NDArray[numpy.float32]: ...

def linear(w: PackedWeights, x: Annotated[NDArray, dict(writable=False)], n_threads: int | None = None, isa: str | None = None) -> NDArray[numpy.float32]: ...

def pack_int8(w: Annotated[NDArray, dict(writable=False)], scale: Annotated[NDArray, dict(writable=False)], binary: bool, n_threads: int | None = None) -> PackedWeights: ...

def repack_tq2_0(data: Annotated[NDArray, dict(writable=False)], n: int, k: int, n_threads: int | None = None) -> PackedWeights:
    """GGUF TQ2_0 tensor data -> ternary weights."""

def repack_tq1_0(data: Annotated[NDArray, dict(writable=False)], n: int, k: int, n_threads: int | None = None) -> PackedWeights:
    """GGUF TQ1_0 tensor data -> ternary weights."""

def repack_i2_s(data: Annotated[NDArray, dict(writable=False)], n: int, k: int, n_threads: int | None = None, in_place: bool = False) -> PackedWeights:
    """
    bitnet.cpp I2_S tensor data -> ternary weights; in_place views the codes instead of copying.
    """

def repack_q1_0(data: Annotated[NDArray, dict(writable=False)], n: int, k: int, n_threads: int | None = None) -> PackedWeights:
    """GGUF Q1_0 tensor data -> binary weights."""

def repack_hf_packed(packed: Annotated[NDArray, dict(writable=False)], weight_scale: float, n_threads: int | None = None) -> PackedWeights: ...

def cpu_features() -> list[str]:
    """CPU features the kernels care about."""

def available_isas() -> list[str]:
    """Kernel ISAs this CPU and build can run, scalar first, preferred last."""

def active_isa() -> str: ...

def set_active_isa(isa: str) -> None: ...

def physical_cores() -> int: ...

def get_num_threads() -> int: ...

def set_num_threads(n: int) -> None: ...

def measure_read_bandwidth(nbytes: int, n_threads: int | None = None, repeats: int = 3) -> float:
    """
    Streaming read bandwidth in bytes/s, best of `repeats` passes over an nbytes buffer.
    """

class Model:
    """A transformer's weights, checked against its config."""

    def __init__(self, config: dict[str, Any], weights: dict[str, Any]) -> None: ...

    def info(self) -> dict[str, Any]: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def dim(self) -> int: ...

class Session:
    """One sequence's KV cache and forward pass."""

    def __init__(self, model: Model, n_ctx: int, kv_f16: bool = True, n_threads: int | None = None) -> None: ...

    @overload
    def eval(self, tokens: Annotated[NDArray, dict(writable=False)], output: Literal['last', 'all', 'hidden'] = 'last') -> NDArray[numpy.float32]:
        """
        Appends tokens to the sequence; returns logits (last or all), hidden states, or nothing.
        """
    @overload
    def eval(self, tokens: Annotated[NDArray, dict(writable=False)], output: Literal['none']) -> None: ...

    @property
    def n_past(self) -> int: ...

    @property
    def n_ctx(self) -> int: ...

    def truncate(self, n: int) -> None: ...

    def set_threads(self, n: int) -> None: ...

    def copy_prefix(self, src: Session, n: int) -> None:
        """
        Takes the first n cached positions of another sequence of the same model.
        """

def eval_batch(sessions: Sequence[Session], tokens: Sequence[Annotated[NDArray, dict(writable=False)]], n_threads: int | None = None) -> list[NDArray[numpy.float32]]:
    """
    One continuous-batching step: appends tokens[i] to sessions[i] in a single forward pass and returns each session's logits after its last new token.
    """

class Sampler:
    """Chooses tokens from logits with a seeded generator."""

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0, presence_penalty: float = 0.0, frequency_penalty: float = 0.0, logit_bias: Sequence[tuple[int, float]] = [], seed: int = 0) -> None: ...

    def sample(self, logits: Annotated[NDArray, dict(writable=False)], history: Annotated[NDArray, dict(writable=False)], n_top: int = 0) -> tuple[int, float, list[tuple[int, float]]]: ...
