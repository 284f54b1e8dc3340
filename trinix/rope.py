"""Host-side RoPE logic shared by the PyTorch and JAX bindings: the spec of a RoPE module
(RopeSpec), frequencies, the input contract and the plan of a rotation (plan_rotation). Works
on shapes, dtype names and values the bindings read; never touches a tensor.

Shapes: q (batch, seq, heads_q, head_dim) and k (batch, seq, heads_k, head_dim) in layout
"bshd", (batch, heads, seq, head_dim) in "bhsd", or packed sequences (tokens, heads,
head_dim) in "thd" with cu_seqlens (n_seqs + 1,); cos and sin (rows, rotary_dim) or
(batch, rows, rotary_dim); position_ids (batch or 1, seq) integers, (tokens,) for "thd".
The first rotary_dim columns of a head rotate, in half-split pairs (i, i + rotary_dim/2) or
interleaved pairs (2i, 2i + 1); the rest pass through.
"""

import dataclasses
import functools
import math
import numbers
from typing import Callable, NamedTuple

import numpy as np

from trinix.kernels.call import KernelCall, Operand
from trinix.kernels.rope import rope_apply_call
from trinix.rope_scaling import SEQ_LEN_DEPENDENT, RopeConfig, inv_freq_and_scale

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
LAYOUTS = ("bshd", "bhsd", "thd")


def kernel_frequencies(inv_freq: np.ndarray, attention_factor: float = 1.0) -> np.ndarray:
    """The kernels' frequency operand, (3, len(inv_freq)) float32: inv_freq / 2pi in turns
    per position as high and low parts, whose sum keeps float64 precision (a float32 array
    alone would not, and JAX has no float64 arrays by default), then the amplitude cos and sin
    carry (scaled RoPE's attention factor)."""
    check_attention_factor(attention_factor)
    turns = np.asarray(inv_freq, dtype=np.float64) / (2 * np.pi)
    high = turns.astype(np.float32)
    low = (turns - high.astype(np.float64)).astype(np.float32)
    return np.stack([high, low, np.full_like(high, attention_factor)])


def check_attention_factor(attention_factor) -> None:
    """The amplitude cos and sin carry: a finite real number."""
    if isinstance(attention_factor, bool) or not isinstance(attention_factor, numbers.Real):
        raise TypeError(f"attention_factor must be a number, got {type(attention_factor).__name__}")
    if not math.isfinite(attention_factor):
        raise ValueError(f"attention_factor must be finite, got {attention_factor}")


def check_layout(layout) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def check_int(name: str, value, low: int) -> None:
    """An int (NumPy ints too, not bool) >= low, else TypeError / ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def check_seq_len(seq_len) -> None:
    check_int("seq_len", seq_len, 0)


def check_offset(offset) -> None:
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)):
        raise TypeError(f"offset must be an int, got {type(offset).__name__}")


def check_float(name: str, dtype: str) -> None:
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor ({', '.join(FLOAT_DTYPES)}), got {dtype}")


_DIMS = {"bshd": "(batch, seq, heads, head_dim)", "bhsd": "(batch, heads, seq, head_dim)",
         "thd": "(tokens, heads, head_dim)"}


def split_bshd(shape: tuple[int, ...], layout: str) -> tuple[int, int, int, int]:
    """(batch, seq, heads, head_dim) of a shape in `layout`; packed "thd" tokens count as one
    sequence of all tokens."""
    if layout == "thd":
        return (1, *shape)
    if layout == "bhsd":
        batch, heads, seq, head_dim = shape
        return batch, seq, heads, head_dim
    return tuple(shape)


def _check_integer(name: str, x: Operand) -> None:
    if not x.dtype.startswith(("int", "uint")):
        raise TypeError(f"{name} must be an integer tensor, got {x.dtype}")


def check_rotary_dim(rotary_dim: int, head_dim: int, what: str) -> None:
    if rotary_dim % 2 or rotary_dim <= 0 or rotary_dim > head_dim:
        raise ValueError(f"the rotary dim ({rotary_dim}, {what}) must be even, > 0 and <= head_dim "
                         f"({head_dim})")


def as_inv_freq(inv_freq) -> np.ndarray:
    """inv_freq as a non-empty 1-dim float64 array (a host array: the bindings read tensors out)."""
    array = np.asarray(inv_freq)
    if array.dtype.kind not in "iuf":
        raise TypeError(f"inv_freq must be an array of real numbers, got {type(inv_freq).__name__} of "
                        f"dtype {array.dtype}")
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"inv_freq must be a non-empty 1-dim array, got shape {array.shape}")
    return np.ascontiguousarray(array, dtype=np.float64)


def check_table_positions(positions: np.ndarray, rows: int) -> None:
    """Position ids (their values, read by the binding) must index a table of `rows` rows."""
    if positions.size and (positions.min() < 0 or positions.max() >= rows):
        raise ValueError(f"position_ids must lie in [0, {rows}) to index cos/sin of {rows} rows, "
                         f"got values in [{positions.min()}, {positions.max()}]")


def packed_max_seqlen(bounds: np.ndarray | None, tokens: int, max_seqlen) -> int:
    """The longest packed sequence, which sizes the launch: max_seqlen if given (an int, not
    shorter than the longest), else read from cu_seqlens' values `bounds`, checked (start 0,
    never decrease, end at the token count). bounds None: cu_seqlens cannot be read here
    (traced), so max_seqlen is needed."""
    if max_seqlen is not None:
        check_int("max_seqlen", max_seqlen, 0)
    if bounds is None:
        if max_seqlen is None:
            raise ValueError("packed sequences need max_seqlen where cu_seqlens cannot be read (traced "
                             "by jax.jit, vmap or torch.compile, or in CUDA graph capture)")
        return int(max_seqlen)
    lengths = np.diff(bounds)
    if bounds[0] != 0 or (lengths < 0).any() or bounds[-1] != tokens:
        raise ValueError(f"cu_seqlens must start at 0, never decrease and end at the token count "
                         f"{tokens}, got {list(bounds)}")
    longest = int(lengths.max(initial=0))
    if max_seqlen is not None and max_seqlen < longest:
        raise ValueError(f"max_seqlen ({max_seqlen}) is shorter than the longest packed sequence "
                         f"({longest})")
    return longest if max_seqlen is None else int(max_seqlen)


def _integers(name: str, values) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got {values.dtype}")
    return values


def positions_extent(shape, layout: str, position_ids, offset, cu_seqlens, max_seqlen) -> int:
    """max position + 1 of a rotation of q of `shape`: the sequence length dynamic NTK and
    LongRoPE choose their frequencies by, as transformers takes it. position_ids, offset (int
    or per-sequence) and cu_seqlens are values the binding has read (numpy or None). It runs
    before check_rope_apply, so it refuses, naming them, what it cannot read."""
    if position_ids is not None:
        return int(np.max(_integers("position_ids", position_ids), initial=-1)) + 1
    if isinstance(offset, np.ndarray):
        offset = _integers("offsets", offset)
    else:
        check_offset(offset)
    if layout == "thd":
        if max_seqlen is not None:
            check_int("max_seqlen", max_seqlen, 0)
            longest = max_seqlen
        elif cu_seqlens is None:
            raise ValueError("layout 'thd' (packed sequences) needs cu_seqlens")
        else:
            longest = int(np.max(np.diff(_integers("cu_seqlens", cu_seqlens)), initial=0))
    elif len(shape) != 4:
        raise ValueError(f"q must have 4 dims {_DIMS[layout]}, got shape {tuple(shape)}")
    else:
        longest = split_bshd(shape, layout)[1]
    return int(np.max(offset, initial=0)) + longest


def table_seq_len(shape: tuple[int, ...], layout: str, seq_len, offset) -> int:
    """The rows of a module's cos/sin for an input of `shape`: seq_len, or by default the seq
    dim of a 4-dim "bshd"/"bhsd" input; seq_len and offset checked."""
    if seq_len is None:
        if len(shape) != 4 or layout == "thd":
            raise ValueError(f"seq_len is needed unless x has 4 dims in layout 'bshd' or 'bhsd', "
                             f"got shape {tuple(shape)} in {layout!r}")
        seq_len = split_bshd(shape, layout)[1]
    check_seq_len(seq_len)
    check_offset(offset)
    return seq_len


def table_extent(seq_len: int, offset: int) -> int:
    """max position + 1 of cos/sin for positions offset .. offset + seq_len - 1, taken as
    positions_extent takes a rotation's: a negative offset counts as 0."""
    return max(offset, 0) + seq_len


def check_table_rows(rows: int, max_seqlen: int) -> None:
    """Packed sequences read cos/sin row s for their token s: the table must reach the longest."""
    if rows < max_seqlen:
        raise ValueError(f"cos/sin have {rows} rows, fewer than the longest packed sequence "
                         f"(max_seqlen {max_seqlen})")


def check_rope_apply(
    q: Operand,
    k: Operand,
    *,
    layout: str,
    cos: Operand | None = None,
    sin: Operand | None = None,
    positions: Operand | None = None,
    batch_offsets: Operand | None = None,
    cu_seqlens: Operand | None = None,
    position_offset: int = 0,
    dim: int | None = None,
) -> None:
    """Raise ValueError/TypeError, naming the argument, for anything the rotation can't take.

    q, k: in `layout`, same batch, seq and head_dim, heads may differ (GQA/MQA).
    cos, sin: (rows, rotary_dim) or (batch, rows, rotary_dim), both given or neither.
    positions: integer (batch or 1, seq), or (tokens,) for "thd". batch_offsets: integer
    (batch or 1,), per-sequence offsets, not with positions. cu_seqlens: integer
    (n_seqs + 1,), for "thd" only (and needed there). dim: the rotary dim of the module or of
    its frequencies (<= head_dim: the columns past it pass through).
    Values (positions in a table, cu_seqlens increasing) are the bindings' to check.
    """
    check_layout(layout)
    n_dims = 3 if layout == "thd" else 4
    for name, x in (("q", q), ("k", k)):
        if len(x.shape) != n_dims:
            raise ValueError(f"{name} must have {n_dims} dims {_DIMS[layout]}, got shape {tuple(x.shape)}")
        check_float(name, x.dtype)
    if q.dtype != k.dtype:
        raise TypeError(f"q and k must have the same dtype, got {q.dtype} and {k.dtype}")
    qb, qs, _, qd = split_bshd(q.shape, layout)
    kb, ks, _, kd = split_bshd(k.shape, layout)
    if qd != kd:
        raise ValueError(f"q and k must have the same head_dim, got {qd} and {kd}")
    if (qb, qs) != (kb, ks):
        raise ValueError(f"q and k must have the same batch and seq, got q {tuple(q.shape)} and k "
                         f"{tuple(k.shape)} in layout {layout!r}")
    if dim is not None:
        check_rotary_dim(dim, qd, "the module's dim or 2 * len(inv_freq)")
    check_offset(position_offset)

    if layout == "thd":
        if cu_seqlens is None:
            raise ValueError("layout 'thd' (packed sequences) needs cu_seqlens")
        _check_integer("cu_seqlens", cu_seqlens)
        if len(cu_seqlens.shape) != 1 or cu_seqlens.shape[0] < 1:
            raise ValueError(f"cu_seqlens must be (n_seqs + 1,), got shape {tuple(cu_seqlens.shape)}")
        qb = cu_seqlens.shape[0] - 1
    elif cu_seqlens is not None:
        raise ValueError(f"cu_seqlens goes with layout 'thd' (packed sequences), not {layout!r}")

    if (cos is None) != (sin is None):
        raise ValueError("cos and sin must be given together")
    if cos is not None:
        for name, t in (("cos", cos), ("sin", sin)):
            check_float(name, t.dtype)
            if len(t.shape) not in (2, 3):
                raise ValueError(f"{name} must be (seq, rotary_dim) or (batch, seq, rotary_dim), got "
                                 f"shape {tuple(t.shape)}")
            check_rotary_dim(t.shape[-1], qd, f"the width of {name}")
            if len(t.shape) == 3 and t.shape[0] not in (1, qb):
                raise ValueError(f"{name} batch must be 1 or {qb}, got shape {tuple(t.shape)}")
        if tuple(cos.shape) != tuple(sin.shape):
            raise ValueError(f"cos and sin must have the same shape, got {tuple(cos.shape)} and "
                             f"{tuple(sin.shape)}")
        if positions is None and batch_offsets is None and layout != "thd" \
                and cos.shape[-2] < position_offset + qs:
            raise ValueError(f"cos/sin have {cos.shape[-2]} rows, fewer than the {position_offset + qs} "
                             f"positions the sequence needs (offset {position_offset} + seq {qs})")
    if positions is not None:
        _check_integer("position_ids", positions)
        expected = [(qs,)] if layout == "thd" else [(qb, qs), (1, qs)]
        if tuple(positions.shape) not in expected:
            raise ValueError(f"position_ids must be {' or '.join(map(str, expected))}, got shape "
                             f"{tuple(positions.shape)}")
    if batch_offsets is not None:
        _check_integer("offsets", batch_offsets)
        if positions is not None:
            raise ValueError("per-sequence offsets and position_ids exclude each other: fold the "
                             "offsets into position_ids")
        if tuple(batch_offsets.shape) not in ((qb,), (1,)):
            raise ValueError(f"offsets (per sequence) must be ({qb},) or (1,), got shape "
                             f"{tuple(batch_offsets.shape)}")


# The checks depend on shapes, strides, dtypes and options alone: a call like an earlier one
# (every call of a training step) skips them.
_cached_check_rope_apply = functools.lru_cache(maxsize=4096)(check_rope_apply)

# The inputs of a rotation, in the order every plan and launch takes them, by the names a user
# gives them (per-sequence offsets are the array form of `offset`).
ROTATION_INPUTS = ("q", "k", "cos", "sin", "frequencies", "position_ids", "offset", "cu_seqlens")


class Rotation(NamedTuple):
    """The plan of one kernel rotation, derived on the host: hashable, so it can be a static
    argument (custom_vjp, torch.library op options, autograd context). The offset comes first:
    DTensor keys its cached sharding of a torch.library op by the arguments from the first int
    on, and that sharding depends on the layout."""

    offset: int
    layout: str
    interleaved: bool
    max_seqlen: int


def split_offset(offset, is_array: Callable) -> tuple[int, object]:
    """(int offset, per-sequence offsets (batch or 1,) or None) from an int or an integer array;
    a 0-d array is one offset for every sequence (traceable: its value is not read)."""
    if not is_array(offset):
        check_offset(offset)
        return offset, None
    return 0, offset.reshape(1) if offset.ndim == 0 else offset


def plan_rotation(arrays: tuple, operands: tuple, *, offset: int, layout: str, interleaved: bool,
                  max_seqlen, read: Callable, cache: bool = True) -> Rotation:
    """Check a rotation and derive its plan. arrays, operands: the inputs of ROTATION_INPUTS and
    their descriptions (None where not given); read(array, bounds=False): its values as numpy
    (only min and max with bounds), or None where they cannot be read (traced). Position ids of a table path are checked against its rows and
    packed sequences' max_seqlen read from cu_seqlens, where readable. cache=False skips the
    cache of the shape checks (torch.compile must not trace a functools cache)."""
    check_layout(layout)  # layout and offset key the cached checks: an unhashable one
    check_offset(offset)  # must get its own message, not lru_cache's
    q, k, cos, sin, frequencies, positions, offsets, cu_seqlens = operands
    check = _cached_check_rope_apply if cache else check_rope_apply
    check(q, k, layout=layout, cos=cos, sin=sin, positions=positions, batch_offsets=offsets,
          cu_seqlens=cu_seqlens, position_offset=offset,
          dim=None if frequencies is None else 2 * frequencies.shape[1])
    if cos is not None and positions is not None:
        values = read(arrays[5], bounds=True)
        if values is not None:
            check_table_positions(values, cos.shape[-2])
    max_seqlen = 0 if cu_seqlens is None else packed_max_seqlen(read(arrays[7]), q.shape[0], max_seqlen)
    if cos is not None and positions is None:
        check_table_rows(cos.shape[-2], max_seqlen)
    return Rotation(int(offset), layout, interleaved, max_seqlen)


@functools.lru_cache(maxsize=4096)
def rotation_call(rotation: Rotation, operands: tuple, conjugate: bool = False,
                  inplace: bool = False) -> KernelCall:
    """The launch of `rotation` on operands of ROTATION_INPUTS; `conjugate` rotates back (the
    backward), `inplace` writes q and k."""
    q, k, cos, sin, frequencies, positions, offsets, cu_seqlens = operands
    return rope_apply_call(
        q, k, layout=rotation.layout, rotary_dim=None if frequencies is None else 2 * frequencies.shape[1],
        interleaved=rotation.interleaved, cos=cos, sin=sin, positions=positions, batch_offsets=offsets,
        cu_seqlens=cu_seqlens, max_seqlen=rotation.max_seqlen, position_offset=rotation.offset,
        conjugate=conjugate, inplace=inplace)


def rotation_inputs(q, k, cos, sin, frequencies, positions, offsets, cu_seqlens) -> dict:
    """The arrays of ROTATION_INPUTS by the kernel's input names: it reads per-sequence offsets
    where position ids would be."""
    return dict(q=q, k=k, cos=cos, sin=sin, frequencies=frequencies,
                positions=positions if offsets is None else offsets, cu_seqlens=cu_seqlens)


@dataclasses.dataclass(frozen=True)
class RopeSpec:
    """What a RoPE module is, held alike by the torch, NNX and Linen modules: its frequency
    recipe (config: dim, base, scaling), layout and pair order. Make one with `of`."""

    config: RopeConfig
    layout: str = "bshd"
    interleaved: bool = False

    @staticmethod
    def of(dim: int, max_position_embeddings: int = 2048, base: float = 10000.0,
           rope_config: RopeConfig | None = None, layout: str = "bshd",
           interleaved: bool = False) -> "RopeSpec":
        """The checked spec of a RoPE module's arguments (torch, NNX and Linen alike).

        Args:
          dim: rotary dim: the head_dim of q and k, or fewer columns (partial rotation, as in
            GPT-NeoX or Phi: the columns past dim pass through). Even.
          max_position_embeddings: the context the model was trained for. Longer sequences work
            too: cos/sin are computed for any position, there is no cache to outgrow.
          base: RoPE base (theta); frequencies are base ** (-2i / dim).
          rope_config: a `trinix.rope_scaling.RopeConfig` with a scaling recipe (linear, dynamic
            NTK, YaRN, Llama 3, LongRoPE) of the same dim and base (None: the default recipe);
            the modules' `from_hf_config` makes one from a transformers config.
          layout: "bshd" (batch, seq, heads, head_dim), "bhsd" (batch, heads, seq, head_dim) or
            "thd" (packed tokens, heads, head_dim; calls then take cu_seqlens).
          interleaved: rotate pairs (2i, 2i + 1) (GPT-J, RoFormer) instead of (i, i + dim/2).
        """
        if rope_config is None:
            rope_config = RopeConfig(dim=dim, base=base, max_position_embeddings=max_position_embeddings)
        elif not isinstance(rope_config, RopeConfig):
            raise TypeError(f"rope_config must be a trinix.rope_scaling.RopeConfig, got "
                            f"{type(rope_config).__name__}")
        elif (rope_config.dim, rope_config.base) != (dim, base):
            raise ValueError(f"rope_config has dim {rope_config.dim} and base {rope_config.base}, the "
                             f"module dim {dim} and base {base}")
        check_layout(layout)
        return RopeSpec(rope_config, layout, interleaved)

    @staticmethod
    def hf_arguments(config) -> dict:
        """A module's dim, max_position_embeddings, base and rope_config for a transformers
        config (object or config.json dict, 4.x `rope_scaling` or 5 `rope_parameters`)."""
        rope_config = RopeConfig.from_hf(config)
        return dict(dim=rope_config.dim, max_position_embeddings=rope_config.max_position_embeddings or 2048,
                    base=rope_config.base, rope_config=rope_config)

    def check_table_width(self, shape) -> None:
        """cos and sin given to a module have its rotary dim as their last dim."""
        if tuple(shape[-1:]) != (self.config.dim,):
            raise ValueError(f"cos must have the module's rotary dim {self.config.dim} as its last dim, "
                             f"got shape {tuple(shape)}")

    @property
    def length_dependent(self) -> bool:
        """Whether the frequencies depend on the positions' extent (dynamic NTK, LongRoPE)."""
        return self.config.rope_type in SEQ_LEN_DEPENDENT

    def inv_freq_and_scale(self, extent: int | None = None) -> tuple[np.ndarray, float]:
        """(inv_freq (dim / 2,) float64, attention_factor) for positions below `extent`."""
        return _inv_freq_and_scale(self.config, extent if self.length_dependent else None)

    def frequencies(self, extent: int | None = None) -> np.ndarray:
        """The kernels' frequency operand (3, dim / 2) float32 for positions below `extent`."""
        return kernel_frequencies(*self.inv_freq_and_scale(extent))

    def rotation_extent(self, shape, position_ids, offset, cu_seqlens, max_seqlen, read) -> int | None:
        """The extent a length-dependent recipe chooses frequencies by (None for the others):
        positions_extent of the values `read` gives (None: traced, refused naming them)."""
        if not self.length_dependent:
            return None
        needed = {"position_ids": position_ids, "offset": offset,
                  "cu_seqlens": None if max_seqlen is not None else cu_seqlens}
        values = {}
        for name, value in needed.items():
            values[name] = read(value) if hasattr(value, "shape") else value
            if values[name] is None and value is not None:
                raise ValueError(f"{name} is traced: dynamic NTK and LongRoPE choose their frequencies "
                                 "by the longest position, which must be concrete"
                                 + (" (or give max_seqlen)" if name == "cu_seqlens" else ""))
        return positions_extent(shape, self.layout, values["position_ids"], values["offset"],
                                values["cu_seqlens"], max_seqlen)


@functools.lru_cache(maxsize=256)  # dynamic NTK makes new frequencies for each longer sequence
def _inv_freq_and_scale(config: RopeConfig, extent: int | None):
    inv_freq, attention_factor = inv_freq_and_scale(config, extent)
    inv_freq.setflags(write=False)  # shared by every caller of the cache
    return inv_freq, attention_factor
