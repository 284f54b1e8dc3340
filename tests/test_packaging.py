"""How trinix installs and imports: from the checkout's root beside transformers, and in JAX
without torch. Each check runs in a fresh interpreter, as a user's program would."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*code: str) -> subprocess.CompletedProcess:
    """Python in a new interpreter whose working directory is the checkout's root; `code`: blocks
    of source, each dedented, run one after another."""
    source = "\n".join(textwrap.dedent(block) for block in code)
    return subprocess.run([sys.executable, "-c", source], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_transformers_imports_from_the_checkout_root():
    """The checkout's kernels/ is no top-level package: from the root (first on sys.path),
    transformers imports, and with it Hugging Face's `kernels` package where installed."""
    pytest.importorskip("transformers")
    result = _run("""
        import importlib.util
        import transformers.models.llama.modeling_llama
        spec = importlib.util.find_spec("kernels")
        print(spec.origin if spec else None)
    """)
    assert result.returncode == 0, result.stderr
    origin = result.stdout.strip()
    assert origin == "None" or not origin.startswith(str(ROOT / "kernels")), origin


def test_trinix_kernels_is_the_checkouts_kernels():
    result = _run("import trinix.kernels.rope as rope; print(rope.__file__)")
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).resolve() == ROOT / "kernels" / "rope.py"


# Blocking torch's import is what a machine without torch gives: `import torch` fails.
WITHOUT_TORCH = """
    import sys
    sys.modules["torch"] = None
"""


def test_jax_modules_run_without_torch():
    """trinix.jax, its NNX and Linen modules on XLA, checked against the float64 reference."""
    result = _run(WITHOUT_TORCH, """
        import numpy as np
        import jax.numpy as jnp
        from trinix import reference as ref
        from trinix.jax import FastALiBiPositionEmbedding, FastRoPEPositionEmbedding, linen

        rng = np.random.default_rng(0)
        q = rng.standard_normal((2, 16, 4, 8)).astype(np.float32)
        k = rng.standard_normal((2, 16, 2, 8)).astype(np.float32)
        cos, sin = ref.rope_cos_sin(np.arange(16), ref.rope_inv_freq(8))
        expected = [ref.rope_rotate(x, cos[:, None], sin[:, None]) for x in (q, k)]
        nnx_rope = FastRoPEPositionEmbedding(8)
        linen_rope = linen.FastRoPEPositionEmbedding(dim=8)
        table = nnx_rope(jnp.asarray(q))
        rotated = [nnx_rope.apply_rotary_pos_emb(q, k, *table), nnx_rope.rotate(q, k),
                   linen_rope.apply({}, q, k, method="rotate")]
        for q_rot, k_rot in rotated:
            np.testing.assert_allclose(q_rot, expected[0], atol=1e-5)
            np.testing.assert_allclose(k_rot, expected[1], atol=1e-5)

        scores = rng.standard_normal((2, 4, 16, 16)).astype(np.float32)
        want = ref.alibi_softmax(scores, ref.alibi_slopes(4), scale=0.5, causal=True)
        for alibi, kwargs in ((FastALiBiPositionEmbedding(4), {}),
                              (linen.FastALiBiPositionEmbedding(num_heads=4), {"method": "softmax"})):
            got = (alibi.softmax(scores, scale=0.5, causal=True) if not kwargs
                   else alibi.apply({}, scores, scale=0.5, causal=True, **kwargs))
            np.testing.assert_allclose(got, want, atol=1e-5)
        assert sys.modules["torch"] is None
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_interpret_backend_without_torch_says_it_needs_torch():
    result = _run(WITHOUT_TORCH, """
        import jax.numpy as jnp
        from trinix.jax import FastRoPEPositionEmbedding, rope_rotate
        from trinix import reference as ref
        for call in (lambda: FastRoPEPositionEmbedding(8, backend="interpret"),
                     lambda: rope_rotate(jnp.ones((1, 4, 2, 8)), jnp.ones((1, 4, 2, 8)),
                                         ref.rope_inv_freq(8), backend="interpret")):
            try:
                call()
            except ImportError as error:
                print(error)
            else:
                print("no error")
    """)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and all("needs torch" in line for line in lines), lines
