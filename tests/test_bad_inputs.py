"""Every refused input of docs/CONTRACT.md, written once and tried through every framework x
backend: the call raises the documented exception, its message names the argument, and
nothing ran before the refusal (no kernel launch, no framework-op computation).

An entry names an API neutrally ("rope_rotate", "RoPE.rotate", "ALiBi()", ...) and gives its
arguments as NumPy arrays and dtypes, Python values and the markers below; an adapter per
framework turns it into the real calls, of every form the framework has (JAX modules: NNX
and Linen).
"""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import trinix.jax
import trinix.torch
from trinix import reference as ref
from trinix.jax import linen
from trinix.rope_scaling import RopeConfig
from trinix.torch import hf

FRAMEWORKS = ("torch", "jax")


@dataclasses.dataclass(frozen=True)
class RequiresGrad:
    """torch only: the array as a leaf tensor that requires grad."""

    array: np.ndarray


@dataclasses.dataclass(frozen=True)
class OnMeta:
    """torch only: the array as a tensor on the meta device (another device than q's)."""

    array: np.ndarray


@dataclasses.dataclass(frozen=True)
class Traced:
    """jax only: the value is an argument of the jax.jit-compiled call, so traced."""

    value: object


@dataclasses.dataclass(frozen=True)
class AsNumpy:
    """The array passed as the NumPy array it is, not converted (torch refuses it: not a
    tensor; JAX takes it)."""

    array: np.ndarray


@dataclasses.dataclass(frozen=True)
class Bad:
    """A refused call: `api` with `args` and `kwargs` (a method's module built from
    `module`, over the defaults), refused with `error` whose message names `name`."""

    id: str
    error: type
    name: str
    api: str
    args: tuple
    kwargs: dict
    module: dict
    frameworks: tuple[str, ...]
    only_without_gpu: bool  # backend="triton" is refused only where the framework has no GPU

    @property
    def picks_backend(self) -> bool:
        """The entry gives the backend itself: it runs once per framework, not per backend."""
        return "backend" in self.kwargs or "backend" in self.module


def bad(id, error, name, api, /, *args, module=None, only=FRAMEWORKS, only_without_gpu=False, **kwargs) -> Bad:
    return Bad(id, error, name, api, args, kwargs, module or {}, only, only_without_gpu)


Q = np.zeros((2, 5, 4, 8), np.float32)  # "bshd": batch 2, seq 5, 4 heads, head_dim 8
K = np.zeros((2, 5, 2, 8), np.float32)  # 2 heads (GQA)
TABLE = np.zeros((5, 8), np.float32)  # cos or sin of 5 positions, rotary dim 8
IDS = np.zeros((2, 5), np.int32)
INV_FREQ = ref.rope_inv_freq(8)
T = np.zeros((7, 2, 8), np.float32)  # "thd": 7 packed tokens
CU = np.array([0, 3, 7], np.int32)  # 2 sequences of 3 and 4 tokens
PACKED = dict(layout="thd")
DYNAMIC = dict(rope_config=RopeConfig(dim=8, rope_type="dynamic", factor=2.0, max_position_embeddings=16))
HEADS = {"hidden_size": 32, "num_attention_heads": 4, "max_position_embeddings": 64}  # head_dim 8

SCORES = np.zeros((2, 4, 3, 5), np.float32)  # (batch, heads, seqlen_q, seqlen_k)
SLOPES = np.full(4, 0.5, np.float32)

ROPE = [
    # q, k
    bad("q-not-an-array", TypeError, "q", "rope_rotate", [[0.0] * 8], K, INV_FREQ),
    bad("q-numpy", TypeError, "q", "RoPE.rotate", AsNumpy(Q), K, only=("torch",)),
    bad("k-not-an-array", TypeError, "k", "apply_rotary_pos_emb", Q, "k", TABLE, TABLE),
    bad("q-k-2-dims", ValueError, "q", "rope_rotate", Q[0, 0], K[0, 0], INV_FREQ),
    bad("q-k-4-dims-packed", ValueError, "q", "RoPE.rotate", Q, K, cu_seqlens=np.array([0, 2], np.int32),
        module=PACKED),
    bad("q-k-integer", TypeError, "q", "RoPE.apply_rotary_pos_emb", Q.astype(np.int32), K.astype(np.int32),
        TABLE, TABLE),
    bad("k-dtype-differs", TypeError, "dtype", "RoPE.rotate", Q, K.astype(np.float16)),
    bad("k-head-dim-differs", ValueError, "head_dim", "RoPE.rotate", Q, np.zeros((2, 5, 2, 6), np.float32)),
    bad("k-seq-differs", ValueError, "seq", "RoPE.rotate", Q, np.zeros((2, 6, 2, 8), np.float32)),
    bad("k-batch-differs", ValueError, "batch", "rope_rotate", Q, np.zeros((3, 5, 2, 8), np.float32), INV_FREQ),
    bad("layout-unknown", ValueError, "layout", "rope_rotate", Q, K, INV_FREQ, layout="sbhd"),
    bad("layout-not-a-string", ValueError, "layout", "apply_rotary_pos_emb", Q, K, TABLE, TABLE,
        layout=["bshd"]),
    # inv_freq and the rotary dim
    bad("inv-freq-past-head-dim", ValueError, "rotary dim", "rope_rotate", Q, K, ref.rope_inv_freq(12)),
    bad("module-dim-past-head-dim", ValueError, "rotary dim", "RoPE.rotate", Q, K, module=dict(dim=16)),
    bad("inv-freq-2-dims", ValueError, "inv_freq", "rope_rotate", Q, K, INV_FREQ[None]),
    bad("inv-freq-empty", ValueError, "inv_freq", "rope_rotate", Q, K, INV_FREQ[:0]),
    bad("inv-freq-traced", TypeError, "inv_freq", "rope_rotate", Q, K, Traced(INV_FREQ), only=("jax",)),
    bad("inv-freq-none", TypeError, "inv_freq", "rope_rotate", Q, K, None),
    bad("inv-freq-strings", TypeError, "inv_freq", "rope_cos_sin", ["0.5", "0.25"], 4),
    bad("inv-freq-scalar", ValueError, "inv_freq", "rope_rotate", Q, K, 0.5),
    bad("attention-factor-string", TypeError, "attention_factor", "rope_rotate", Q, K, INV_FREQ,
        attention_factor="1.2"),
    bad("attention-factor-nan", ValueError, "attention_factor", "rope_cos_sin", INV_FREQ, 4,
        attention_factor=float("nan")),
    # cos, sin
    bad("cos-sin-missing", TypeError, "cos", "apply_rotary_pos_emb", Q, K, None, None),
    bad("module-cos-sin-missing", TypeError, "cos", "RoPE.apply_rotary_pos_emb", Q, K, None, None),
    bad("sin-missing", TypeError, "sin", "RoPE.apply_rotary_pos_emb", Q, K, TABLE, None),
    bad("cos-odd-width", ValueError, "cos", "apply_rotary_pos_emb", Q, K, TABLE[:, :7], TABLE[:, :7]),
    bad("cos-wider-than-head-dim", ValueError, "cos", "apply_rotary_pos_emb", Q, K,
        np.zeros((5, 10), np.float32), np.zeros((5, 10), np.float32)),
    bad("cos-1-dim", ValueError, "cos", "apply_rotary_pos_emb", Q, K, TABLE[0], TABLE[0]),
    bad("cos-batch-differs", ValueError, "cos", "RoPE.apply_rotary_pos_emb", Q, K,
        np.zeros((3, 5, 8), np.float32), np.zeros((3, 5, 8), np.float32)),
    bad("sin-shape-differs", ValueError, "sin", "RoPE.apply_rotary_pos_emb", Q, K, TABLE,
        np.zeros((6, 8), np.float32)),
    bad("cos-integer", TypeError, "cos", "RoPE.apply_rotary_pos_emb", Q, K, TABLE.astype(np.int32), TABLE),
    bad("sin-integer", TypeError, "sin", "apply_rotary_pos_emb", Q, K, TABLE, TABLE.astype(np.int32)),
    bad("cos-fewer-rows-than-seq", ValueError, "cos", "RoPE.apply_rotary_pos_emb", Q, K, TABLE[:4], TABLE[:4]),
    bad("cos-fewer-rows-than-packed-sequence", ValueError, "cos", "apply_rotary_pos_emb", T, T, TABLE[:3],
        TABLE[:3], layout="thd", cu_seqlens=CU),
    bad("cos-not-module-dim", ValueError, "cos", "RoPE.apply_rotary_pos_emb", Q, K, TABLE[:, :6],
        TABLE[:, :6]),
    bad("cos-requires-grad", ValueError, "cos", "apply_rotary_pos_emb", Q, K, RequiresGrad(TABLE), TABLE,
        only=("torch",)),
    bad("cos-on-another-device", ValueError, "cos", "apply_rotary_pos_emb", Q, K, OnMeta(TABLE), OnMeta(TABLE),
        only=("torch",)),
    # position_ids
    bad("position-ids-float", TypeError, "position_ids", "RoPE.rotate", Q, K, position_ids=IDS.astype(np.float32)),
    bad("position-ids-not-an-array", TypeError, "position_ids", "RoPE.apply_rotary_pos_emb", Q, K, TABLE,
        TABLE, [[0] * 5] * 2),
    bad("position-ids-seq-differs", ValueError, "position_ids", "RoPE.rotate", Q, K, position_ids=IDS[:, :4]),
    bad("position-ids-batch-differs", ValueError, "position_ids", "apply_rotary_pos_emb", Q, K, TABLE, TABLE,
        np.zeros((3, 5), np.int32)),
    bad("position-ids-2-dims-packed", ValueError, "position_ids", "RoPE.rotate", T, T,
        position_ids=np.zeros((1, 7), np.int32), cu_seqlens=CU, module=PACKED),
    bad("position-id-past-table", ValueError, "position_ids", "apply_rotary_pos_emb", Q, K, TABLE, TABLE,
        np.full((2, 5), 5, np.int32)),
    bad("position-id-negative-in-table", ValueError, "position_ids", "RoPE.apply_rotary_pos_emb", Q, K, TABLE,
        TABLE, np.full((1, 5), -1, np.int32)),
    bad("position-ids-past-int32", ValueError, "position_ids", "rope_rotate", Q, K, INV_FREQ,
        position_ids=AsNumpy(np.full((2, 5), 2**32 + 1, np.int64)), only=("jax",)),
    bad("position-ids-traced-dynamic-ntk", ValueError, "position_ids", "RoPE.rotate", Q, K,
        position_ids=Traced(IDS), module=DYNAMIC, only=("jax",)),
    # offset
    bad("offset-float", TypeError, "offset", "RoPE.rotate", Q, K, offset=1.5),
    bad("offset-bool", TypeError, "offset", "rope_rotate", Q, K, INV_FREQ, offset=True),
    bad("offset-list", TypeError, "offset", "rope_rotate", Q, K, INV_FREQ, offset=[1, 2]),
    bad("table-offset-float", TypeError, "offset", "RoPE()", Q, 4, offset=1.5),
    bad("cos-sin-offset-float", TypeError, "offset", "rope_cos_sin", INV_FREQ, 4, offset=0.5),
    bad("offsets-float", TypeError, "offsets", "RoPE.rotate", Q, K, offset=np.zeros(2, np.float32)),
    bad("offsets-length-differs", ValueError, "offsets", "RoPE.rotate", Q, K, offset=np.zeros(3, np.int32)),
    bad("offsets-2-dims", ValueError, "offsets", "rope_rotate", Q, K, INV_FREQ, offset=np.zeros((2, 1), np.int32)),
    bad("offsets-with-position-ids", ValueError, "position_ids", "RoPE.rotate", Q, K,
        offset=np.zeros(2, np.int32), position_ids=IDS),
    # packed sequences: cu_seqlens, max_seqlen
    bad("cu-seqlens-missing-packed", ValueError, "cu_seqlens", "RoPE.rotate", T, T, module=PACKED),
    bad("cu-seqlens-with-bshd", ValueError, "cu_seqlens", "RoPE.rotate", Q, K, cu_seqlens=np.array([0, 5])),
    bad("cu-seqlens-decreasing", ValueError, "cu_seqlens", "RoPE.rotate", T, T,
        cu_seqlens=np.array([0, 4, 2, 7], np.int32), module=PACKED),
    bad("cu-seqlens-short-of-tokens", ValueError, "cu_seqlens", "RoPE.rotate", T, T,
        cu_seqlens=np.array([0, 3, 6], np.int32), module=PACKED),
    bad("cu-seqlens-not-from-0", ValueError, "cu_seqlens", "rope_rotate", T, T, INV_FREQ, layout="thd",
        cu_seqlens=np.array([1, 3, 7], np.int32)),
    bad("cu-seqlens-float", TypeError, "cu_seqlens", "RoPE.rotate", T, T,
        cu_seqlens=np.array([0.0, 7.0], np.float32), module=PACKED),
    bad("cu-seqlens-2-dims", ValueError, "cu_seqlens", "RoPE.rotate", T, T, cu_seqlens=CU[None],
        module=PACKED),
    bad("cu-seqlens-empty", ValueError, "cu_seqlens", "apply_rotary_pos_emb", T, T, TABLE, TABLE,
        layout="thd", cu_seqlens=CU[:0]),
    bad("max-seqlen-float", TypeError, "max_seqlen", "RoPE.rotate", T, T, cu_seqlens=CU, max_seqlen=4.0,
        module=PACKED),
    bad("max-seqlen-below-longest", ValueError, "max_seqlen", "RoPE.rotate", T, T, cu_seqlens=CU,
        max_seqlen=2, module=PACKED),
    bad("cu-seqlens-traced-without-max-seqlen", ValueError, "max_seqlen", "RoPE.rotate", T, T,
        cu_seqlens=Traced(CU), module=PACKED, only=("jax",)),
    bad("max-seqlen-traced", TypeError, "max_seqlen", "RoPE.rotate", T, T, cu_seqlens=Traced(CU),
        max_seqlen=Traced(4), module=PACKED, only=("jax",)),
    # dynamic NTK reads positions, offsets and cu_seqlens before the checks of the rotation
    bad("dynamic-position-ids-float", TypeError, "position_ids", "RoPE.rotate", Q, K,
        position_ids=IDS.astype(np.float32), module=DYNAMIC),
    bad("dynamic-offset-string", TypeError, "offset", "RoPE.rotate", Q, K, offset="1", module=DYNAMIC),
    bad("dynamic-q-k-2-dims", ValueError, "q", "RoPE.rotate", Q[0, 0], K[0, 0],
        module=DYNAMIC | dict(layout="bhsd")),
    bad("dynamic-cu-seqlens-missing-packed", ValueError, "cu_seqlens", "RoPE.rotate", T, T,
        module=DYNAMIC | PACKED),
    bad("dynamic-max-seqlen-float", TypeError, "max_seqlen", "RoPE.rotate", T, T, cu_seqlens=CU, max_seqlen=4.0,
        module=DYNAMIC | PACKED),
    bad("dynamic-cu-seqlens-traced-without-max-seqlen", ValueError, "max_seqlen", "RoPE.rotate", T, T,
        cu_seqlens=Traced(CU), module=DYNAMIC | PACKED, only=("jax",)),
    # in place
    bad("inplace-leaf-requiring-grad", ValueError, "inplace", "RoPE.rotate", RequiresGrad(Q), K, inplace=True,
        only=("torch",)),
    # backend
    bad("backend-unknown", ValueError, "backend", "RoPE.apply_rotary_pos_emb", Q, K, TABLE, TABLE,
        backend="cuda"),
    bad("use-triton-false-with-interpret", ValueError, "use_triton", "apply_rotary_pos_emb", Q, K, TABLE,
        TABLE, backend="interpret", use_triton=False),
    bad("triton-without-gpu", ValueError, "backend", "rope_rotate", Q, K, INV_FREQ, backend="triton",
        only_without_gpu=True),
    bad("module-triton-without-gpu", ValueError, "backend", "RoPE()", Q, module=dict(backend="triton"),
        only_without_gpu=True),
    # the module's configuration
    bad("dim-odd", ValueError, "dim", "RoPE", dim=7),
    bad("dim-zero", ValueError, "dim", "RoPE", dim=0),
    bad("dim-float", TypeError, "dim", "RoPE", dim=8.0),
    bad("base-zero", ValueError, "base", "RoPE", dim=8, base=0.0),
    bad("base-negative", ValueError, "base", "RoPE", dim=8, base=-2.0),
    bad("base-infinite", ValueError, "base", "RoPE", dim=8, base=float("inf")),
    bad("max-position-embeddings-zero", ValueError, "max_position_embeddings", "RoPE", dim=8,
        max_position_embeddings=0),
    bad("max-position-embeddings-float", TypeError, "max_position_embeddings", "RoPE", dim=8,
        max_position_embeddings=2048.0),
    bad("module-layout-unknown", ValueError, "layout", "RoPE", dim=8, layout="sbhd"),
    bad("module-backend-unknown", ValueError, "backend", "RoPE", dim=8, backend="cuda"),
    bad("module-use-triton-false-with-interpret", ValueError, "use_triton", "RoPE", dim=8, use_triton=False,
        backend="interpret"),
    bad("module-use-triton-false-with-triton", ValueError, "backend", "RoPE", dim=8, use_triton=False,
        backend="triton"),
    bad("rope-config-dim-differs", ValueError, "rope_config", "RoPE", dim=8, rope_config=RopeConfig(dim=16)),
    bad("rope-config-not-a-config", TypeError, "rope_config", "RoPE", dim=8, rope_config="yarn"),
    bad("hf-rope-type-unknown", ValueError, "rope_type", "RoPE.from_hf_config",
        HEADS | {"rope_scaling": {"rope_type": "su", "factor": 2.0}}),
    bad("hf-factor-zero", ValueError, "factor", "RoPE.from_hf_config",
        HEADS | {"rope_scaling": {"type": "linear", "factor": 0.0}}),
    bad("hf-factor-missing", ValueError, "factor", "RoPE.from_hf_config",
        HEADS | {"rope_scaling": {"type": "linear"}}),
    bad("hf-llama3-low-freq-factor-missing", ValueError, "low_freq_factor", "RoPE.from_hf_config",
        HEADS | {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0}}),
    bad("hf-longrope-list-length", ValueError, "short_factor", "RoPE.from_hf_config",
        HEADS | {"rope_scaling": {"rope_type": "longrope", "short_factor": [1.0] * 3, "long_factor": [1.0] * 4}}),
    bad("hf-rope-scaling-not-a-dict", TypeError, "rope_scaling", "RoPE.from_hf_config",
        HEADS | {"rope_scaling": [("type", "linear")]}),
    bad("hf-head-dim-missing", ValueError, "head_dim", "RoPE.from_hf_config", {"max_position_embeddings": 64}),
    # cos/sin tables: the module's call and rope_cos_sin
    bad("seq-len-negative", ValueError, "seq_len", "RoPE()", Q, -1),
    bad("seq-len-float", TypeError, "seq_len", "RoPE()", Q, 3.0),
    bad("seq-len-string", TypeError, "seq_len", "RoPE()", Q, "4"),
    bad("table-offset-none", TypeError, "offset", "RoPE()", Q, 4, offset=None),
    bad("seq-len-missing-packed", ValueError, "seq_len", "RoPE()", T, module=PACKED),
    bad("x-not-an-array", TypeError, "x", "RoPE()", [1.0], 4),
    bad("x-integer", TypeError, "dtype", "RoPE()", Q.astype(np.int32), 4),
    bad("cos-sin-seq-len-string", TypeError, "seq_len", "rope_cos_sin", INV_FREQ, "4"),
    bad("cos-sin-dtype-integer", TypeError, "dtype", "rope_cos_sin", INV_FREQ, 4, dtype=np.int32),
    bad("cos-sin-dtype-unknown", TypeError, "dtype", "rope_cos_sin", INV_FREQ, 4, dtype="float33"),
    # transformers' apply_rotary_pos_emb (trinix.torch.hf)
    bad("hf-unsqueeze-dim-0", ValueError, "unsqueeze_dim", "hf.apply_rotary_pos_emb", Q, K, TABLE, TABLE, 0,
        only=("torch",)),
    bad("hf-unsqueeze-dim-float", TypeError, "unsqueeze_dim", "hf.apply_rotary_pos_emb", Q, K, TABLE, TABLE, 2.0,
        only=("torch",)),
    bad("hf-cos-sin-missing", TypeError, "cos", "hf.apply_rotary_pos_emb", Q, K, None, None, 2, only=("torch",)),
]

ALIBI = [
    # the configuration: alibi_slopes and the module
    bad("num-heads-zero", ValueError, "num_heads", "alibi_slopes", 0),
    bad("num-heads-float", TypeError, "num_heads", "ALiBi", num_heads=2.5),
    bad("max-bias-zero", ValueError, "max_bias", "alibi_slopes", 4, max_bias=0.0),
    bad("max-bias-infinite", ValueError, "max_bias", "ALiBi", num_heads=4, max_bias=float("inf")),
    bad("max-bias-string", TypeError, "max_bias", "alibi_slopes", 4, max_bias="8"),
    bad("head-offset-negative", ValueError, "head_offset", "alibi_slopes", 4, head_offset=-1),
    bad("total-heads-zero", ValueError, "total_heads", "alibi_slopes", 4, total_heads=0),
    bad("heads-past-total-heads", ValueError, "total_heads", "ALiBi", num_heads=4, head_offset=6, total_heads=8),
    bad("max-seq-len-zero", ValueError, "max_seq_len", "ALiBi", num_heads=4, max_seq_len=0),
    bad("module-dtype-integer", TypeError, "dtype", "ALiBi", num_heads=4, dtype=np.int32),
    bad("module-dtype-none", TypeError, "dtype", "ALiBi", num_heads=4, dtype=None),
    bad("module-backend-unknown", ValueError, "backend", "ALiBi", num_heads=4, backend="cuda"),
    bad("module-use-triton-false-with-interpret", ValueError, "use_triton", "ALiBi", num_heads=4,
        use_triton=False, backend="interpret"),
    # the bias: alibi_bias and the module's call
    bad("slopes-not-an-array", TypeError, "slopes", "alibi_bias", [0.5] * 4, 3),
    bad("slopes-2-dims-for-bias", ValueError, "slopes", "alibi_bias", SLOPES[None], 3),
    bad("slopes-integer-for-bias", TypeError, "slopes", "alibi_bias", SLOPES.astype(np.int32), 3),
    bad("slopes-require-grad", ValueError, "slopes", "alibi_bias", RequiresGrad(SLOPES), 3, only=("torch",)),
    bad("bias-seq-len-negative", ValueError, "seq_len", "alibi_bias", SLOPES, -1),
    bad("bias-seq-len-float", TypeError, "seq_len", "ALiBi()", 3.0),
    bad("key-len-negative", ValueError, "key_len", "ALiBi()", 3, key_len=-1),
    bad("q-offset-float", TypeError, "q_offset", "ALiBi()", 3, q_offset=1.5),
    bad("q-offset-bool", TypeError, "q_offset", "alibi_bias", SLOPES, 3, q_offset=True),
    bad("bias-dtype-integer", TypeError, "dtype", "alibi_bias", SLOPES, 3, dtype=np.int32),
    bad("bias-dtype-unknown", TypeError, "dtype", "alibi_bias", SLOPES, 3, dtype="float33"),
    bad("batch-size-negative", ValueError, "batch_size", "ALiBi()", 3, -2),
    bad("batch-size-string", TypeError, "batch_size", "ALiBi()", 3, "2"),
    # 128 x 2^20 x 2^20 float32: 563 TB, on no machine
    bad("bias-too-big-for-memory", ValueError, "seq_len", "ALiBi()", 2**20, module=dict(num_heads=128)),
    # scores: alibi_add, alibi_softmax and the module's methods
    bad("scores-not-an-array", TypeError, "scores", "alibi_softmax", [[[[0.0]]]], SLOPES[:1]),
    bad("scores-numpy", TypeError, "scores", "ALiBi.softmax", AsNumpy(SCORES), only=("torch",)),
    bad("scores-3-dims", ValueError, "scores", "ALiBi.softmax", SCORES[0]),
    bad("scores-integer", TypeError, "scores", "ALiBi.add_to_scores", SCORES.astype(np.int32)),
    bad("scores-heads-differ-from-module", ValueError, "num_heads", "ALiBi.softmax", SCORES,
        module=dict(num_heads=8)),
    bad("slopes-heads-differ", ValueError, "slopes", "alibi_add", SCORES, SLOPES[:3]),
    bad("slopes-batch-differs", ValueError, "slopes", "alibi_softmax", SCORES, np.ones((3, 4), np.float32)),
    bad("slopes-integer-for-scores", TypeError, "slopes", "alibi_add", SCORES, SLOPES.astype(np.int32)),
    bad("scores-q-offset-float", TypeError, "q_offset", "alibi_softmax", SCORES, SLOPES, q_offset=0.5),
    # queries within seqlen of 2^31: int32 positions and distances would wrap
    bad("scores-q-offset-past-int32", ValueError, "q_offset", "alibi_softmax", SCORES, SLOPES,
        q_offset=2**31 - 2),
    bad("q-offset-past-int32-negative", ValueError, "q_offset", "alibi_bias", SLOPES, 3, q_offset=-(2**31) + 1),
    bad("scale-nan", ValueError, "scale", "ALiBi.softmax", SCORES, scale=float("nan")),
    bad("scale-string", TypeError, "scale", "alibi_softmax", SCORES, SLOPES, scale="0.5"),
    bad("inplace-leaf-requiring-grad", ValueError, "inplace", "ALiBi.add_to_scores", RequiresGrad(SCORES),
        inplace=True, only=("torch",)),
    # backend
    bad("backend-unknown", ValueError, "backend", "alibi_add", SCORES, SLOPES, backend="cuda"),
    bad("use-triton-false-with-interpret", ValueError, "use_triton", "alibi_softmax", SCORES, SLOPES,
        backend="interpret", use_triton=False),
    bad("triton-without-gpu", ValueError, "backend", "alibi_add", SCORES, SLOPES, backend="triton",
        only_without_gpu=True),
]


FUNCTIONS = ("rope_rotate", "apply_rotary_pos_emb", "rope_cos_sin", "alibi_slopes", "alibi_bias", "alibi_add",
             "alibi_softmax")
MODULE_DEFAULTS = {"RoPE": dict(dim=8), "ALiBi": dict(num_heads=4)}


class Adapter:
    """Turns an entry into (form, call) pairs of one framework's API on one backend (None:
    the entry picks it)."""

    functions: dict  # api -> function
    module_forms: dict  # "RoPE" / "ALiBi" -> {form: module class}
    takes_device = ()  # apis and modules with a device argument
    device = None

    def __init__(self, backend: str | None):
        self.backend = backend

    def convert(self, value):
        """A neutral value as this framework's."""
        raise NotImplementedError

    def bind(self, fn, args, kwargs):
        """fn's call on the converted arguments, ready to run."""
        args, kwargs = [self.convert(a) for a in args], {n: self.convert(v) for n, v in kwargs.items()}
        return lambda: fn(*args, **kwargs)

    def method(self, module, form: str, name: str):
        return getattr(module, name)

    def calls(self, entry: Bad) -> list:
        """The modules whose methods an entry calls are built here, so that the calls run
        alone (building a torch ALiBi module launches the slopes kernel)."""
        options = {} if entry.picks_backend else {"backend": self.backend}
        kind, _, method = entry.api.partition(".")
        if kind.endswith("()"):
            kind, method = kind.removesuffix("()"), "__call__"
        if kind in self.takes_device:
            options["device"] = self.device
        if entry.api in self.functions:
            return [(entry.api, self.bind(self.functions[entry.api], entry.args, entry.kwargs | options))]
        forms = self.module_forms[kind]
        config = {name: self.convert(value) for name, value in entry.module.items()} | options
        if not method:  # the configuration is the call
            return [(form, self.bind(cls, (), entry.kwargs | config)) for form, cls in forms.items()]
        if method == "from_hf_config":
            return [(form, self.bind(cls.from_hf_config, entry.args, entry.kwargs | config))
                    for form, cls in forms.items()]
        modules = {form: cls(**MODULE_DEFAULTS[kind] | config) for form, cls in forms.items()}
        return [(form, self.bind(self.method(module, form, method), entry.args, entry.kwargs))
                for form, module in modules.items()]


class TorchAdapter(Adapter):
    takes_device = ("rope_cos_sin", "alibi_slopes", "ALiBi")
    functions = {name: getattr(trinix.torch, name) for name in FUNCTIONS} | {
        "hf.apply_rotary_pos_emb": hf.apply_rotary_pos_emb}
    module_forms = {"RoPE": {"torch": trinix.torch.FastRoPEPositionEmbedding},
                    "ALiBi": {"torch": trinix.torch.FastALiBiPositionEmbedding}}

    def __init__(self, backend):
        super().__init__(backend)
        self.device = "cuda" if backend == "triton" else "cpu"

    def convert(self, value):
        if isinstance(value, np.ndarray):
            return torch.from_numpy(value.copy()).to(self.device)
        if isinstance(value, type) and issubclass(value, np.generic):
            return getattr(torch, np.dtype(value).name)
        if isinstance(value, RequiresGrad):
            return self.convert(value.array).requires_grad_()
        if isinstance(value, OnMeta):
            return self.convert(value.array).to("meta")
        if isinstance(value, AsNumpy):
            return value.array
        return value


class JaxAdapter(Adapter):
    functions = {name: getattr(trinix.jax, name) for name in FUNCTIONS}
    module_forms = {
        "RoPE": {"nnx": trinix.jax.FastRoPEPositionEmbedding, "linen": linen.FastRoPEPositionEmbedding},
        "ALiBi": {"nnx": trinix.jax.FastALiBiPositionEmbedding, "linen": linen.FastALiBiPositionEmbedding},
    }

    def convert(self, value):
        if isinstance(value, np.ndarray):
            return jnp.asarray(value)
        if isinstance(value, type) and issubclass(value, np.generic):
            return jnp.dtype(value)
        if isinstance(value, AsNumpy):
            return value.array
        return value

    def method(self, module, form, name):
        if form == "linen":
            return lambda *args, **kwargs: module.apply({}, *args, method=name, **kwargs)
        return getattr(module, name)

    def bind(self, fn, args, kwargs):
        """Traced values become the arguments of a jax.jit-compiled call of fn."""
        names = list(kwargs)
        values = [self.convert(v) for v in (*args, *kwargs.values())]
        traced = [i for i, v in enumerate(values) if isinstance(v, Traced)]

        def call(*traced_values):
            given = list(values)
            for i, value in zip(traced, traced_values):
                given[i] = value
            return fn(*given[:len(args)], **dict(zip(names, given[len(args):])))

        if not traced:
            return call
        return lambda: jax.jit(call)(*(self.convert(values[i].value) for i in traced))


ADAPTERS = {"torch": TorchAdapter, "jax": JaxAdapter}
HAS_GPU = {"torch": torch.cuda.is_available(), "jax": jax.default_backend() == "gpu"}
BACKENDS = {"torch": ["interpret", "torch"] + ["triton"] * HAS_GPU["torch"],
            "jax": ["interpret", "xla"] + ["triton"] * HAS_GPU["jax"]}


def _cases():
    """Each entry for each of its frameworks, on each backend unless it picks one itself."""
    for group, entries in (("rope", ROPE), ("alibi", ALIBI)):
        for entry in entries:
            for framework in entry.frameworks:
                marks = [pytest.mark.skip(reason=f"{framework} has a GPU here, where backend='triton' is valid")
                         ] if entry.only_without_gpu and HAS_GPU[framework] else []
                for backend in [None] if entry.picks_backend else BACKENDS[framework]:
                    yield pytest.param(entry, framework, backend, marks=marks,
                                       id="-".join(filter(None, (group, entry.id, framework, backend))))


# Where the bindings look the kernel launcher up (and where it is defined), and the framework-op
# backends (trinix.fallback): a refused call reaches none of them.
WORK = {
    "trinix.torch.launcher": ("launch",),
    "trinix.torch.rope": ("launch",),
    "trinix.torch.alibi": ("launch",),
    "trinix.jax.launcher": ("launch",),
    "trinix.jax.rope": ("launch",),
    "trinix.jax.alibi": ("launch",),
    "trinix.fallback": ("rope_rotate", "rope_table", "alibi_bias", "alibi_add", "alibi_softmax"),
}


def _forbid_work(monkeypatch):
    def launched(*args, **kwargs):
        raise AssertionError("launched")

    for module, names in WORK.items():
        for name in names:
            monkeypatch.setattr(f"{module}.{name}", launched)


@pytest.mark.parametrize("entry, framework, backend", _cases())
def test_refused_before_any_launch_naming_the_argument(entry, framework, backend, monkeypatch):
    calls = ADAPTERS[framework](backend).calls(entry)
    _forbid_work(monkeypatch)
    for form, call in calls:
        with pytest.raises(entry.error) as refused:
            call()
        assert re.search(rf"\b{re.escape(entry.name)}\b", str(refused.value), re.IGNORECASE), (
            f"{form}: {refused.value!r} does not name {entry.name!r}")


def test_entries_have_distinct_ids():
    ids = [("rope", entry.id) for entry in ROPE] + [("alibi", entry.id) for entry in ALIBI]
    assert len(set(ids)) == len(ids)
