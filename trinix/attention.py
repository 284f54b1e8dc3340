"""Host-side plan of attention with ALiBi, shared by the PyTorch and JAX bindings: the options
checked and resolved once, and the kernel calls (kernels/attention.py) built from them. Works
on Operands (shapes, strides, dtype names) and numbers only; never touches an array.

The caller's arrays are q, k, v (layout "bshd", "bhsd" or packed "thd"), slopes (float32
(heads,) or (batch, heads), or None) and int32 cu_seqlens_q/cu_seqlens_k (packed only); the
kernels name their inputs the same (`INPUTS`), so a binding maps them by name.
"""

from typing import NamedTuple

from trinix import alibi as host
from trinix.rope import check_int
from trinix.kernels.attention import attention_bwd_calls, attention_fwd_calls
from trinix.kernels.call import KernelCall, Operand

INPUTS = ("q", "k", "v", "slopes", "cu_seqlens_q", "cu_seqlens_k")
ARGUMENTS = ("q", "k", "v", "alibi", "cu_seqlens_q", "cu_seqlens_k")  # the caller's names of INPUTS
SEQ_AXIS = {"bshd": 1, "bhsd": 2}


class Options(NamedTuple):
    """The static options of one attention, checked: what the kernel builders take besides
    operands, with scale resolved and q_offset resolved unless packed (None there: per
    sequence, seqlen_k - seqlen_q). Plain values, so that a torch.library op or a jax
    nondiff argument carries them."""

    alibi: str              # "none", "symmetric" or "causal"
    causal: bool
    scale: float
    q_offset: int | None
    layout: str
    max_seqlen_q: int | None
    max_seqlen_k: int | None

    @property
    def varlen(self) -> bool:
        return self.layout == "thd"


def slopes_of(alibi):
    """The slopes array `alibi` names: a FastALiBiPositionEmbedding's, or `alibi` itself."""
    return getattr(alibi, "slopes", alibi)


def alibi_form(has_slopes: bool, causal: bool) -> str:
    """Slopes under a causal mask take the causal form m (j - p_i), else the symmetric one;
    no slopes, no bias."""
    if not has_slopes:
        return "none"
    return "causal" if causal else "symmetric"


def module_defaults(module, causal: bool | None, backend: str | None, fallback: str) -> tuple[bool, str]:
    """(causal, backend) of a FastALiBiPositionEmbedding's attention: the module's unless given;
    a module with use_triton=False runs the framework's `fallback` backend."""
    if backend is None:
        backend = module.backend if module.use_triton else fallback
    return module.causal if causal is None else causal, backend


def plan(operands: dict[str, Operand | None], *, causal: bool = False, scale: float | None = None,
         q_offset: int | None = None, layout: str = "bshd", max_seqlen_q: int | None = None,
         max_seqlen_k: int | None = None, builder=attention_fwd_calls) -> Options:
    """The checked Options of attention on `operands` (by `INPUTS` name): TypeError/ValueError
    naming the argument, raised here, before any launch (the forward builder's checks, run once;
    `builder` as in `forward_calls`)."""
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    q, k = operands["q"], operands["k"]
    if scale is None and q.shape:
        scale = q.shape[-1] ** -0.5
    options = Options(alibi_form(operands["slopes"] is not None, causal), causal, scale, q_offset, layout,
                      max_seqlen_q, max_seqlen_k)
    forward_calls(options, operands, builder=builder)
    if layout in SEQ_AXIS:  # one offset serves every sequence: resolved here, the fallbacks need it
        q_offset = host.query_offset(q_offset, q.shape[SEQ_AXIS[layout]], k.shape[SEQ_AXIS[layout]])
    return options._replace(scale=float(scale), q_offset=q_offset)


def _builder_options(options: Options, operands: dict) -> dict:
    return dict(options._asdict(), cu_seqlens_q=operands["cu_seqlens_q"], cu_seqlens_k=operands["cu_seqlens_k"])


def forward_calls(options: Options, operands: dict[str, Operand | None], *,
                  builder=attention_fwd_calls) -> tuple[KernelCall, ...]:
    """The forward launches of `operands` (by `INPUTS` name), for `run_forward`. `builder`:
    attention_fwd_calls or a binding's wrapper of it (torch's `cached`)."""
    return builder(*(operands[name] for name in ("q", "k", "v", "slopes")), **_builder_options(options, operands))


def run_forward(calls: tuple[KernelCall, ...], arrays: dict, run) -> tuple:
    """(o, lse): `calls` (from `forward_calls`) run in order by `run(call, arrays)`, a binding's
    launch, on `arrays` (the operands); split keys' partial results passed on to the combine."""
    outputs = run(calls[0], arrays)
    if len(calls) == 2:
        o_splits, lse_splits = outputs
        outputs = run(calls[1], dict(o_splits=o_splits, lse_splits=lse_splits))
    return tuple(outputs)


def backward_calls(options: Options, operands: dict[str, Operand | None], *,
                   builder=attention_bwd_calls) -> tuple[KernelCall, KernelCall, KernelCall]:
    """The backward launches of `operands` (`INPUTS` plus the forward's "o" and the gradient
    "do"), in order: preprocess (-> delta, lse_base2), dk/dv, dq. Their inputs are `operands`'
    names, "lse" (the forward's) and "delta" and "lse_base2" (the preprocess's)."""
    return builder(*(operands[name] for name in ("q", "k", "v", "o", "do", "slopes")),
                   **_builder_options(options, operands))


def run_backward(calls: tuple[KernelCall, KernelCall, KernelCall], arrays: dict, run) -> tuple:
    """(dq, dk, dv): `calls` (from `backward_calls`) run in order by `run(call, arrays)`, a
    binding's launch, on `arrays` (the operands' and "lse"), the preprocess's outputs passed on."""
    preprocess, dkdv, dq = calls
    delta, lse_base2 = run(preprocess, arrays)
    arrays = dict(arrays, delta=delta, lse_base2=lse_base2)
    dk, dv = run(dkdv, arrays)
    return (*run(dq, arrays), dk, dv)


# Context parallelism: the sequence split over the ranks of a ring, each holding the queries,
# keys and values of its tokens; the keys and values pass around the ring.

def ring_chunks(rank: int, world_size: int, seq_len: int, zigzag: bool) -> tuple[tuple[int, int, int], ...]:
    """The chunks of rank's shard of seq_len tokens, as (start in the shard, start in the whole
    sequence, length): the shard is tokens rank * seq_len onwards, or with zigzag its halves are
    chunks rank and 2 * world_size - 1 - rank of the sequence cut into 2 * world_size, so that
    under a causal mask every rank has as many visible keys (see `zigzag_chunks`)."""
    if not zigzag:
        return ((0, rank * seq_len, seq_len),)
    if seq_len % 2:
        raise ValueError(f"zigzag splits each shard into two halves: the shard's seq_len must be even, got {seq_len}")
    half = seq_len // 2
    return (0, rank * half, half), (half, (2 * world_size - 1 - rank) * half, half)


def zigzag_chunks(parts: int) -> list[int]:
    """The order of the 2 * parts chunks of a sequence whose consecutive pairs are the shards
    of `parts` ranks under zigzag: 0, 2n-1, 1, 2n-2, ..."""
    return [chunk for rank in range(parts) for chunk in (rank, 2 * parts - 1 - rank)]


def zigzag_reorder(parts: int, length: int, axis: int, restore: bool = False) -> list[int]:
    """The order in which `zigzag_order` (or, with restore, `zigzag_restore`) of each binding
    takes the 2 * parts equal chunks of a sequence of `length` positions along dim `axis`:
    `zigzag_chunks`, or its inverse. TypeError/ValueError for parts not an int >= 1 or a
    length that does not cut into 2 * parts chunks."""
    check_int("parts", parts, 1)
    if length % (2 * parts):
        raise ValueError(f"x's sequence (dim {axis}, {length} positions) must split into 2 * parts = "
                         f"{2 * parts} equal chunks")
    order = zigzag_chunks(parts)
    return [order.index(chunk) for chunk in range(2 * parts)] if restore else order


def chunk_offset(q_chunk: tuple[int, int, int], k_chunk: tuple[int, int, int], causal: bool) -> int | None:
    """The kernels' q_offset for the queries of q_chunk against the keys of k_chunk (chunks of
    `ring_chunks`): the key position of query 0 counted from the key chunk's first key. None
    where a causal mask hides every key of k_chunk from every query of q_chunk: nothing to run."""
    offset = q_chunk[1] - k_chunk[1]
    if causal and offset + q_chunk[2] - 1 < 0:
        return None
    return offset
