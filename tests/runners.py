"""One interface over every framework x backend, so one case matrix runs through all paths.

Runners take and return NumPy arrays (float16/float32/float64, ml_dtypes.bfloat16): the
tests build inputs once, and compare every runner's output with trinix.reference.
"""

import numpy as np
import ml_dtypes
import torch

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
HAS_CUDA = torch.cuda.is_available()


def to_torch(array: np.ndarray, device: str = "cpu", noncontiguous: bool = False) -> torch.Tensor:
    """A torch tensor equal to `array`; with `noncontiguous`, a strided view into a larger
    buffer (every other element of the last two dims), so kernels see real strides."""
    if array.dtype == BFLOAT16:
        tensor = torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    else:
        tensor = torch.from_numpy(array.copy())
    tensor = tensor.to(device)
    if noncontiguous and tensor.ndim >= 2:
        big = torch.zeros(*tensor.shape[:-2], tensor.shape[-2] * 2, tensor.shape[-1] * 2,
                          dtype=tensor.dtype, device=device)
        view = big[..., ::2, ::2]
        view.copy_(tensor)
        return view
    return tensor


def from_torch(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(BFLOAT16)
    return tensor.numpy()


_TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                 "float64": torch.float64}


class TorchRope:
    """trinix.torch RoPE through one backend ("interpret", "torch" or, on a GPU, "triton")."""

    framework = "torch"

    def __init__(self, backend: str):
        self.backend = backend
        self.device = "cuda" if backend == "triton" else "cpu"

    def _in(self, array, noncontiguous=False):
        return None if array is None else to_torch(array, self.device, noncontiguous)

    def cos_sin(self, inv_freq, seq_len, offset, dtype, interleaved=False, attention_factor=1.0):
        from trinix.torch import rope_cos_sin

        cos, sin = rope_cos_sin(inv_freq, seq_len, offset=offset, dtype=_TORCH_DTYPES[dtype],
                                interleaved=interleaved, attention_factor=attention_factor,
                                device=self.device, backend=self.backend)
        return from_torch(cos), from_torch(sin)

    def apply(self, q, k, *, cos=None, sin=None, inv_freq=None, positions=None, offset=0,
              layout="bshd", interleaved=False, cu_seqlens=None, inplace=False, noncontiguous=False):
        """Rotate by cos/sin tables when given, else by in-kernel cos/sin from inv_freq;
        `offset` an int or per-sequence offsets (batch,)."""
        from trinix.torch import apply_rotary_pos_emb, rope_rotate

        tq, tk = self._in(q, noncontiguous), self._in(k, noncontiguous)
        common = dict(layout=layout, interleaved=interleaved, cu_seqlens=self._in(cu_seqlens),
                      inplace=inplace, backend=self.backend)
        if cos is not None:
            out = apply_rotary_pos_emb(tq, tk, self._in(cos), self._in(sin), self._in(positions), **common)
        else:
            offset = self._in(offset) if isinstance(offset, np.ndarray) else offset
            out = rope_rotate(tq, tk, inv_freq, position_ids=self._in(positions), offset=offset, **common)
        if inplace:
            assert out[0] is tq and out[1] is tk, "in place must return the inputs"
        return from_torch(out[0]), from_torch(out[1])

    def apply_vjp(self, q, k, grad_q, grad_k, *, cos=None, sin=None, inv_freq=None,
                  positions=None, offset=0, layout="bshd", interleaved=False, cu_seqlens=None):
        """Gradients of sum(q_rot * grad_q) + sum(k_rot * grad_k) in q and k."""
        from trinix.torch import apply_rotary_pos_emb, rope_rotate

        tq = self._in(q).requires_grad_()
        tk = self._in(k).requires_grad_()
        common = dict(layout=layout, interleaved=interleaved, cu_seqlens=self._in(cu_seqlens),
                      backend=self.backend)
        if cos is not None:
            q_rot, k_rot = apply_rotary_pos_emb(tq, tk, self._in(cos), self._in(sin),
                                                self._in(positions), **common)
        else:
            offset = self._in(offset) if isinstance(offset, np.ndarray) else offset
            q_rot, k_rot = rope_rotate(tq, tk, inv_freq, position_ids=self._in(positions),
                                       offset=offset, **common)
        torch.autograd.backward((q_rot, k_rot), (self._in(grad_q), self._in(grad_k)))
        return from_torch(tq.grad), from_torch(tk.grad)


def rope_runners() -> list:
    """Every RoPE runner this machine can run: the interpreter and framework ops always,
    compiled Triton where there is a CUDA GPU."""
    runners = [TorchRope("interpret"), TorchRope("torch")]
    if HAS_CUDA:
        runners.append(TorchRope("triton"))
    from tests.jax_runner import jax_rope_runners

    return runners + jax_rope_runners()
