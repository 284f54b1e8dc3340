"""Host-side ALiBi logic shared by the PyTorch and JAX bindings: the spec of an ALiBi module
(AlibiSpec), slopes, the query offset, the input contract and the plan of each kernel
(plan_bias, plan_scores). Works on numbers, shapes and dtype names only; never touches a
tensor.

Shapes: scores (batch, heads, seqlen_q, seqlen_k); slopes (heads,) float32, or (batch or 1,
heads) for the scores ops; a bias (heads, seqlen_q, seqlen_k). Query i sits at key position
i' = i + q_offset, by default seqlen_k - seqlen_q (bottom-right, as a KV cache needs). Bias
forms: symmetric -m|j - i'| and causal m(j - i') (= -m(i' - j) where j <= i'; the caller
masks j > i', and the fused softmax does).
"""

import dataclasses
import functools
import math
import os
from typing import NamedTuple

import numpy as np

from trinix.kernels.alibi import alibi_add_call, alibi_bias_call, alibi_softmax_call
from trinix.kernels.call import KernelCall, Operand, largest_power_of_2
from trinix.rope import check_float, check_int

_ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


def alibi_slopes(num_heads: int, *, max_bias: float = 8.0, head_offset: int = 0,
                 total_heads: int | None = None) -> np.ndarray:
    """Slopes of heads head_offset .. head_offset + num_heads - 1 of a model with
    `total_heads` heads (default num_heads: all of them), (num_heads,) float64.

    Each head's slope from its index alone (the closed form in trinix.kernels.alibi), so a
    tensor-parallel shard of heads gets the slopes its heads have in the whole model.
    """
    check_alibi_config(num_heads, max_bias=max_bias, head_offset=head_offset, total_heads=total_heads)
    power = largest_power_of_2(total_heads or num_heads)
    g = np.arange(head_offset, head_offset + num_heads, dtype=np.float64)
    exponent = np.where(g < power, (g + 1) / power, (2 * (g - power) + 1) / (2 * power))
    return 2.0 ** (-max_bias * exponent)


def query_offset(q_offset: int | None, seqlen_q: int, seqlen_k: int) -> int:
    """Key position of query 0; None means seqlen_k - seqlen_q (bottom-right alignment).

    The kernels form query positions and key-query distances in int32: |q_offset| + seqlen_q
    + seqlen_k must stay below 2**31 (past it they would wrap), on every backend alike."""
    if q_offset is None:
        q_offset = seqlen_k - seqlen_q
    elif isinstance(q_offset, bool) or not isinstance(q_offset, (int, np.integer)):
        raise TypeError(f"q_offset must be an int or None, got {type(q_offset).__name__}")
    if abs(int(q_offset)) + seqlen_q + seqlen_k >= 2**31:
        raise ValueError(f"q_offset {q_offset} with {seqlen_q} queries and {seqlen_k} keys: "
                         f"|q_offset| + seqlen_q + seqlen_k must be below 2**31 (int32 distances)")
    return int(q_offset)


def check_size(name: str, value) -> None:
    """seq_len, key_len, batch_size: an int >= 0."""
    check_int(name, value, 0)


def check_alibi_config(num_heads, *, max_bias=8.0, head_offset=0, total_heads=None,
                       max_seq_len=None) -> None:
    """Raise ValueError/TypeError, naming the argument, for a configuration ALiBi can't take."""
    check_int("num_heads", num_heads, 1)
    if isinstance(max_bias, bool) or not isinstance(max_bias, (int, float, np.integer, np.floating)):
        raise TypeError(f"max_bias must be a number, got {type(max_bias).__name__}")
    if not math.isfinite(max_bias) or max_bias <= 0:
        raise ValueError(f"max_bias must be a finite number > 0, got {max_bias}")
    check_int("head_offset", head_offset, 0)
    if total_heads is not None:
        check_int("total_heads", total_heads, 1)
    if head_offset + num_heads > (total_heads or num_heads):
        raise ValueError(f"head_offset + num_heads ({head_offset} + {num_heads}) must be <= "
                         f"total_heads, the model's head count ({total_heads or num_heads})")
    if max_seq_len is not None:
        check_int("max_seq_len", max_seq_len, 1)


def check_scale(scale) -> None:
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"scale must be a number, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")


def check_scores(scores: Operand, slopes: Operand, *, num_heads: int | None = None) -> None:
    """scores: float (batch, heads, seqlen_q, seqlen_k); slopes: float (heads,) or (batch or
    1, heads); num_heads: the module's, if any."""
    if len(scores.shape) != 4:
        raise ValueError(f"scores must have 4 dims (batch, heads, seqlen_q, seqlen_k), got shape "
                         f"{tuple(scores.shape)}")
    check_float("scores", scores.dtype)
    batch, heads = scores.shape[:2]
    if num_heads is not None and heads != num_heads:
        raise ValueError(f"scores has {heads} heads (dim 1 of shape {tuple(scores.shape)}), the "
                         f"module has num_heads={num_heads}")
    check_float("slopes", slopes.dtype)
    shape = tuple(slopes.shape)
    if shape not in ((heads,), (1, heads), (batch, heads)):
        raise ValueError(f"slopes must be ({heads},), (1, {heads}) or ({batch}, {heads}) for scores "
                         f"of shape {tuple(scores.shape)}, got shape {shape}")


def check_slopes(slopes: Operand) -> None:
    """slopes of a materialized bias: float (heads,)."""
    check_float("slopes", slopes.dtype)
    if len(slopes.shape) != 1:
        raise ValueError(f"slopes must be (heads,) for a bias, got shape {tuple(slopes.shape)}")


def host_memory_bytes() -> int:
    """Physical memory of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_bias_fits(shape: tuple[int, ...], dtype: str, available_bytes: int | None) -> None:
    """Refuse, before anything is allocated, a bias of `shape` that cannot fit in
    `available_bytes` (None: unknown, not checked)."""
    nbytes = math.prod(shape) * _ITEMSIZE[dtype]
    if available_bytes is not None and nbytes > available_bytes:
        raise ValueError(
            f"an ALiBi bias of shape {tuple(shape)} in {dtype} needs {nbytes / 1e9:.1f} GB, more "
            f"than the {available_bytes / 1e9:.1f} GB of memory available (seq_len too long to "
            "materialize); use add_to_scores, which adds ALiBi to the scores in place, or softmax, "
            "which fuses it into softmax(scale * scores + bias): neither creates the bias")


@dataclasses.dataclass(frozen=True)
class AlibiSpec:
    """What an ALiBi module is, held alike by the torch, NNX and Linen modules: heads
    head_offset .. head_offset + num_heads - 1 of a model with total_heads, their max_bias, the
    bias form (causal) and the trained context. Make one with `of`."""

    num_heads: int
    max_seq_len: int = 2048
    causal: bool = False
    max_bias: float = 8.0
    head_offset: int = 0
    total_heads: int | None = None

    @staticmethod
    def of(num_heads: int, max_seq_len: int = 2048, causal: bool = False, max_bias: float = 8.0,
           head_offset: int = 0, total_heads: int | None = None) -> "AlibiSpec":
        """The checked spec of an ALiBi module's arguments (torch, NNX and Linen alike).

        Args:
          num_heads: heads of this module (of the shard, under tensor parallelism).
          max_seq_len: the context the model was trained for. Longer sequences are served, not
            refused (ALiBi extrapolates; there is no table to outgrow); only a bias too big for
            the device's memory is refused (use add_to_scores or softmax then).
          causal: the bias form, causal m(j - i') instead of symmetric -m|j - i'|; also the
            default mask of `softmax`.
          max_bias: the 8 of the paper's slopes 2^(-8h/n) (MPT's alibi_bias_max).
          head_offset, total_heads: this module's heads are heads head_offset .. head_offset +
            num_heads - 1 of a model with total_heads heads (None: num_heads), and get their slopes.
        """
        check_alibi_config(num_heads, max_bias=max_bias, head_offset=head_offset, total_heads=total_heads,
                           max_seq_len=max_seq_len)
        return AlibiSpec(num_heads, max_seq_len, causal, max_bias, head_offset, total_heads or num_heads)

    def slopes(self) -> np.ndarray:
        """(num_heads,) float64: the module's heads' slopes in the whole model."""
        return alibi_slopes(self.num_heads, max_bias=self.max_bias, head_offset=self.head_offset,
                            total_heads=self.total_heads)


class BiasPlan(NamedTuple):
    """The plan of a materialized bias (heads, seqlen_q, seqlen_k)."""

    seqlen_q: int
    seqlen_k: int
    q_offset: int
    causal: bool
    dtype: str


def plan_bias(slopes: Operand, seq_len, key_len, *, q_offset, causal: bool, dtype: str,
              available_bytes: int | None) -> BiasPlan:
    """Check a bias of slopes (heads,) and derive its plan; key_len None is seq_len. A bias
    bigger than `available_bytes` (None: unknown) is refused before it is allocated."""
    check_slopes(slopes)
    check_size("seq_len", seq_len)
    seqlen_k = seq_len if key_len is None else key_len
    check_size("key_len", seqlen_k)
    q_offset = query_offset(q_offset, seq_len, seqlen_k)
    check_bias_fits((slopes.shape[0], seq_len, seqlen_k), dtype, available_bytes)
    return BiasPlan(seq_len, seqlen_k, q_offset, bool(causal), dtype)


@functools.lru_cache(maxsize=1024)
def bias_call(plan: BiasPlan, slopes: Operand) -> KernelCall:
    return alibi_bias_call(slopes, plan.seqlen_q, plan.seqlen_k, q_offset=plan.q_offset, causal=plan.causal,
                           dtype=plan.dtype)


class ScoresPlan(NamedTuple):
    """The plan of a kernel over scores: alibi_add, or the fused softmax when scale is given."""

    q_offset: int
    causal: bool
    scale: float | None = None


def plan_scores(scores: Operand, slopes: Operand, *, q_offset, causal: bool, scale=None,
                num_heads: int | None = None) -> ScoresPlan:
    """Check scores and slopes (and scores' heads against a module's num_heads) and derive the
    plan; scale: the fused softmax's (None: alibi_add)."""
    check_scores(scores, slopes, num_heads=num_heads)
    if scale is not None:
        check_scale(scale)
        scale = float(scale)
    return ScoresPlan(query_offset(q_offset, *scores.shape[-2:]), bool(causal), scale)


@functools.lru_cache(maxsize=1024)
def scores_call(plan: ScoresPlan, scores: Operand, slopes: Operand, inplace: bool = False) -> KernelCall:
    """The launch of `plan`; `inplace` adds into the scores (alibi_add only)."""
    if plan.scale is not None:
        return alibi_softmax_call(scores, slopes, scale=plan.scale, q_offset=plan.q_offset, causal=plan.causal)
    return alibi_add_call(scores, slopes, q_offset=plan.q_offset, causal=plan.causal, inplace=inplace)
