"""trinix.kernels.triton_compat: the pieces of Triton that are not its public API. With
TRINIX_TRITON_PUBLIC_API=1 every one takes its public fallback; results must not change."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from triton import knobs

from tests.runners import HAS_CUDA
from trinix import FastRoPEPositionEmbedding
from trinix.kernels import triton_compat

ROOT = Path(__file__).resolve().parent.parent

# A few launches of every kernel: RoPE by computed cos/sin and by tables, the ALiBi bias, add
# and fused softmax (whose row reductions differ between the two paths), on `device`.
LAUNCHES = """
    import sys
    import numpy as np
    import torch
    from trinix.kernels import triton_compat
    from trinix.torch import (alibi_add, alibi_bias, alibi_slopes, alibi_softmax, apply_rotary_pos_emb,
                              rope_cos_sin, rope_rotate)
    from trinix import reference as ref

    device, backend, path = sys.argv[1:4]
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 19, 3, 16, generator=generator).to(device)
    k = torch.randn(2, 19, 1, 16, generator=generator).to(device)
    scores = torch.randn(1, 3, 5, 40, generator=generator).to(device)
    inv_freq = ref.rope_inv_freq(16)
    cos, sin = rope_cos_sin(inv_freq, 19, device=device, backend=backend)
    slopes = alibi_slopes(3, device=device, backend=backend)
    results = {
        "rotate": rope_rotate(q, k, inv_freq, offset=7, backend=backend),
        "tables": apply_rotary_pos_emb(q, k, cos, sin, backend=backend),
        "bias": alibi_bias(slopes, 5, 40, causal=True, backend=backend),
        "add": alibi_add(scores, slopes, backend=backend),
        "softmax": alibi_softmax(scores, slopes, scale=0.3, backend=backend),
        "softmax_causal": alibi_softmax(scores, slopes, scale=0.3, causal=True, q_offset=30, backend=backend),
    }
    arrays = {}
    for name, value in results.items():
        for i, tensor in enumerate(value if isinstance(value, tuple) else (value,)):
            arrays[f"{name}{i}"] = tensor.cpu().numpy()
    np.savez(path, public_api_only=triton_compat.PUBLIC_API_ONLY, **arrays)
"""


def _launches(tmp_path, device: str, backend: str, **env) -> dict:
    path = tmp_path / f"{backend}-{len(env)}.npz"
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(LAUNCHES), device, backend, str(path)],
                            cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return dict(np.load(path))


def test_public_api_gives_the_interpreters_results(tmp_path):
    """The interpreter through Triton's own entry point (TRITON_INTERPRET=1) and tl.reduce with
    trinix's combine functions, against trinix's interpreter launch and tl.standard's."""
    fast = _launches(tmp_path, "cpu", "interpret")
    public = _launches(tmp_path, "cpu", "interpret", TRINIX_TRITON_PUBLIC_API="1", TRITON_INTERPRET="1")
    assert public.pop("public_api_only") and not fast.pop("public_api_only")
    assert fast.keys() == public.keys()
    for name in fast:  # the reductions' NumPy and element-by-element sums may round apart
        np.testing.assert_allclose(public[name], fast[name], rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.skipif(not HAS_CUDA, reason="compiled launches need a CUDA GPU")
def test_public_api_gives_the_compiled_results(tmp_path):
    """Every launch through kernel[grid](...) and reductions by trinix's combine functions, bit
    for bit what the direct launch of the same compiled code gives."""
    fast = _launches(tmp_path, "cuda", "triton")
    public = _launches(tmp_path, "cuda", "triton", TRINIX_TRITON_PUBLIC_API="1")
    assert public.pop("public_api_only") and not fast.pop("public_api_only")
    for name in fast:
        np.testing.assert_array_equal(public[name], fast[name], err_msg=name)


def test_launch_hooks_are_seen_in_tritons_hook_chains():
    """A cached launch skips Triton's runner, the only caller of a profiler's launch hooks;
    Triton holds each hook as a chain, empty but not None when nothing is set."""
    assert not triton_compat.launch_hooks_set()

    def hook(metadata):
        pass

    knobs.runtime.launch_enter_hook.add(hook)
    try:
        assert triton_compat.launch_hooks_set()
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    assert not triton_compat.launch_hooks_set()


@pytest.mark.skipif(not HAS_CUDA, reason="compiled launches need a CUDA GPU")
def test_launch_hooks_see_cached_launches():
    """With a launch hook set (a profiler's), a cached launch goes through Triton's own launch,
    which calls it, and rotates as the direct launch does."""
    rope = FastRoPEPositionEmbedding(dim=64, backend="triton")
    q = torch.randn(2, 16, 4, 64, device="cuda", dtype=torch.float16)
    k = torch.randn(2, 16, 2, 64, device="cuda", dtype=torch.float16)
    rope.rotate(q, k)  # compiles and caches the launch
    direct = rope.rotate(q, k)
    launched = []

    def hook(metadata):
        launched.append(metadata.get()["name"])

    knobs.runtime.launch_enter_hook.add(hook)
    try:
        hooked = rope.rotate(q, k)
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    assert launched == ["_rope_apply_kernel"]
    for a, b in zip(hooked, direct):
        assert torch.equal(a, b)


