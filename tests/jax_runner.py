"""The JAX runners of the shared matrix (see tests/runners.py): trinix.jax through Triton's
interpreter, through XLA and, beside a GPU and jax-triton, through compiled Triton."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np

from trinix.jax import apply_rotary_pos_emb, rope_cos_sin, rope_rotate


def _x64(enabled: bool):
    """float64 arrays exist in JAX only with x64 enabled."""
    return jax.enable_x64(True) if enabled else contextlib.nullcontext()


class JaxRope:
    """trinix.jax RoPE through one backend ("interpret", "xla" or, on a GPU, "triton"), under
    jax.jit. JAX arrays are immutable and have no strides, so the matrix's in-place and
    non-contiguous cases run as plain ones here."""

    framework = "jax"

    def __init__(self, backend: str):
        self.backend = backend
        # XLA forms angles in float32 (trinix.fallback.cos_sin); the kernels in float64.
        self.float32_angles = backend == "xla"

    def cos_sin(self, inv_freq, seq_len, offset, dtype, interleaved=False, attention_factor=1.0):
        with _x64(dtype == "float64"):
            cos, sin = rope_cos_sin(inv_freq, seq_len, offset=offset, dtype=dtype, interleaved=interleaved,
                                    attention_factor=attention_factor, backend=self.backend)
            return np.asarray(cos), np.asarray(sin)

    def _rotation(self, cos, sin, inv_freq, offset, layout, interleaved, cu_seqlens):
        """(q, k, position_ids, offsets, cu_seqlens) -> (q_rot, k_rot) by cos/sin tables when
        given, else by inv_freq. Under jit the integer arrays are traced, as a model passes
        them, so max_seqlen is given (static); an int `offset` stays static."""
        options = dict(layout=layout, interleaved=interleaved, backend=self.backend,
                       max_seqlen=None if cu_seqlens is None else int(np.diff(cu_seqlens).max(initial=0)))
        if cos is not None:
            cos, sin = jnp.asarray(cos), jnp.asarray(sin)
            return lambda q, k, ids, offsets, cu: apply_rotary_pos_emb(q, k, cos, sin, ids, cu_seqlens=cu,
                                                                       **options)
        return lambda q, k, ids, offsets, cu: rope_rotate(
            q, k, inv_freq, position_ids=ids, offset=offset if offsets is None else offsets, cu_seqlens=cu,
            **options)

    @staticmethod
    def _integer_arrays(positions, offset, cu_seqlens):
        """position_ids, per-sequence offsets (None for an int offset) and cu_seqlens, as jax arrays."""
        offsets = offset if isinstance(offset, np.ndarray) else None
        return [None if a is None else jnp.asarray(a) for a in (positions, offsets, cu_seqlens)]

    def apply(self, q, k, *, cos=None, sin=None, inv_freq=None, positions=None, offset=0,
              layout="bshd", interleaved=False, cu_seqlens=None, inplace=False, noncontiguous=False):
        with _x64(q.dtype == np.float64):
            rotate = self._rotation(cos, sin, inv_freq, offset, layout, interleaved, cu_seqlens)
            integers = self._integer_arrays(positions, offset, cu_seqlens)
            q_rot, k_rot = jax.jit(rotate)(jnp.asarray(q), jnp.asarray(k), *integers)
            return np.asarray(q_rot), np.asarray(k_rot)

    def apply_vjp(self, q, k, grad_q, grad_k, *, cos=None, sin=None, inv_freq=None,
                  positions=None, offset=0, layout="bshd", interleaved=False, cu_seqlens=None):
        """Gradients of sum(q_rot * grad_q) + sum(k_rot * grad_k) in q and k."""
        with _x64(q.dtype == np.float64):
            rotate = self._rotation(cos, sin, inv_freq, offset, layout, interleaved, cu_seqlens)

            @jax.jit
            def vjp(q, k, grad_q, grad_k, *integers):
                return jax.vjp(lambda q, k: rotate(q, k, *integers), q, k)[1]((grad_q, grad_k))

            integers = self._integer_arrays(positions, offset, cu_seqlens)
            dq, dk = vjp(*map(jnp.asarray, (q, k, grad_q, grad_k)), *integers)
            return np.asarray(dq), np.asarray(dk)


def jax_rope_runners() -> list:
    """The interpreter and XLA always; compiled Triton (through jax-triton) beside a GPU."""
    runners = [JaxRope("interpret"), JaxRope("xla")]
    if jax.default_backend() == "gpu":
        runners.append(JaxRope("triton"))
    return runners
