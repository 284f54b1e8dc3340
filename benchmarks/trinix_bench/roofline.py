"""The bytes each op must move (its roofline at the copy bandwidth), and whether a row fits."""

import math
import os

import torch

from .schema import DTYPE_BYTES, Config


def op_bytes(method: str, config: Config, op: str, dtype: str) -> int:
    """Bytes an op must move at least: each input read once, each output written once.

    RoPE tables are (seq_len, head_dim) in the input dtype, and RoPE's total needs none (cos
    and sin can be computed where they are used). The ALiBi bias is one float32 (heads,
    seq_len, seq_len) bias, the batch a broadcast of it; scores are in the input dtype.
    """
    b, h, s, elt = config.batch, config.heads, config.seq_len, DTYPE_BYTES[dtype]
    if method == "rope":
        qk = 2 * b * s * h * config.head_dim * elt
        tables = 2 * s * config.head_dim * elt
        return {"generate": tables, "apply": 2 * qk + tables, "total": 2 * qk,
                "fwd_bwd": 2 * (2 * qk + tables)}[op]
    bias, scores = h * s * s * 4, b * h * s * s * elt
    return {"slopes": h * 4, "bias": bias, "total": bias + h * 4,
            "add_to_scores": 2 * scores, "softmax": 2 * scores}[op]


def op_footprint(method: str, config: Config, op: str, dtype: str,
                 materialises_bias: bool) -> tuple[int, str]:
    """(about the bytes a provider holds at its peak; the largest tensor among them, as text),
    to skip what cannot fit. `materialises_bias`: an eager path, which builds the distance
    matrix and the bias before adding them, where a compiler or a kernel fuses them away."""
    b, h, s = config.batch, config.heads, config.seq_len
    if method == "rope":
        q = (b, s, h, config.head_dim)
        return 3 * op_bytes(method, config, op, dtype), _tensor_text("q", q, dtype)
    bias = b * h * s * s * 4  # float32, every batch copy
    scores = b * h * s * s * DTYPE_BYTES[dtype]
    distance = s * s * 12 if materialises_bias else 0  # |i - j| as int64, then float32
    built_bias = bias if materialises_bias else 0
    # Scores ops: the scores, an output like them, and for softmax a float32 intermediate.
    needed = {"slopes": h * 4, "bias": bias + distance, "total": bias + distance,
              "add_to_scores": 2 * scores + built_bias + distance,
              "softmax": 2 * scores + bias + built_bias + distance}[op]
    if op in ("add_to_scores", "softmax"):
        return needed, _tensor_text("scores", (b, h, s, s), dtype)
    return needed, _tensor_text("bias", (b, h, s, s), "float32")


def _tensor_text(name: str, shape: tuple[int, ...], dtype: str) -> str:
    return f"{name} {shape} {dtype} alone is {gb(math.prod(shape) * DTYPE_BYTES[dtype])}"


def gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.3g} GB"


def free_bytes(framework: str) -> int:
    """Memory the framework can still allocate on its device (host memory on a CPU)."""
    if framework == "jax":
        import jax

        stats = jax.devices()[0].memory_stats()  # None on a CPU
        if stats:
            return stats["bytes_limit"] - stats["bytes_in_use"]
    elif torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return free + torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
