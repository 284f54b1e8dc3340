"""trinix.jax under sharding: every op shard-local under jit on meshes of 8, 4 x 2 and 2 x 4 host
devices, and context-parallel attention, through the interpreter and XLA. The cases run in a
process of their own (tests/sharding_jax_runner.py), which XLA starts with 8 devices; bad
arguments are checked here, in the suite's process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from tests.sharding_jax_runner import BACKENDS, CASES, DEVICES
from trinix.jax import alibi_slopes, attention, context_parallel_attention, zigzag_order, zigzag_restore
from trinix.jax import context_parallel as ring_module


@pytest.fixture(scope="module")
def outcomes() -> dict:
    """{"case/backend": None or the failure} of one run of every sharded case."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={DEVICES}"
    run = subprocess.run([sys.executable, "-m", "tests.sharding_jax_runner"], cwd=Path(__file__).parent.parent,
                         env=dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu"), capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.splitlines()[-1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_sharded(outcomes, case, backend):
    failure = outcomes[f"{case}/{backend}"]
    assert failure is None, failure


def _one_device_ring(function):
    """function(q, k, v) inside shard_map over a mesh of one device on axis "seq"."""
    mesh = Mesh(np.array(jax.devices()[:1]), ("seq",))
    return jax.shard_map(function, mesh=mesh, in_specs=P(None, "seq"), out_specs=P(None, "seq"))


def test_context_parallel_bad_arguments():
    q = jnp.zeros((1, 6, 2, 16))
    with pytest.raises(ValueError, match="axis_name 'sequence' is not a mesh axis"):
        _one_device_ring(lambda q, k, v: context_parallel_attention(q, k, v, axis_name="sequence"))(q, q, q)
    with pytest.raises(ValueError, match="axis_name 'seq' is not a mesh axis"):
        context_parallel_attention(q, q, q, axis_name="seq")
    with pytest.raises(ValueError, match="zigzag=True: q's part of the sequence"):
        _one_device_ring(lambda q, k, v: context_parallel_attention(q, k, v, axis_name="seq", zigzag=True))(
            q[:, :5], q[:, :5], q[:, :5])
    with pytest.raises(ValueError, match="layout must be one of"):
        _one_device_ring(lambda q, k, v: context_parallel_attention(q, k, v, axis_name="seq", layout="thd"))(q, q, q)
    with pytest.raises(ValueError, match="q and k must hold the same part"):
        _one_device_ring(lambda q, k, v: context_parallel_attention(q, k, v, axis_name="seq"))(q, q[:, :4], q[:, :4])


@pytest.mark.parametrize("backend", BACKENDS)
def test_ring_of_one_device_is_attention(monkeypatch, backend):
    """context_parallel_attention on an axis of one device is attention on the whole sequence, in
    or out of zigzag order: values and gradients, without the ring."""

    def no_ring(*args):
        raise AssertionError("a ring of one device ran the ring")

    monkeypatch.setattr(ring_module, "_forward", no_ring)
    monkeypatch.setattr(ring_module, "_ring_attention", no_ring)
    keys = jax.random.split(jax.random.key(0), 4)
    q, do = (jax.random.normal(key, (2, 8, 4, 16)) for key in keys[:2])
    k, v = (jax.random.normal(key, (2, 8, 2, 16)) for key in keys[2:])
    slopes = alibi_slopes(4)
    for causal, zigzag in ((True, True), (False, False)):
        def loss(attend):
            return lambda q, k, v: jnp.sum(attend(q, k, v) * do)

        def whole(q, k, v):
            return attention(q, k, v, alibi=slopes, causal=causal, backend=backend)

        ring = _one_device_ring(lambda q, k, v: context_parallel_attention(
            q, k, v, axis_name="seq", alibi=slopes, causal=causal, zigzag=zigzag, backend=backend))
        np.testing.assert_allclose(ring(q, k, v), whole(q, k, v), rtol=1e-6, atol=1e-6)
        for got, want in zip(jax.grad(loss(ring), (0, 1, 2))(q, k, v), jax.grad(loss(whole), (0, 1, 2))(q, k, v)):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_zigzag_order():
    x = jnp.arange(16)[None]
    ordered = zigzag_order(x, 2)
    assert ordered.tolist() == [[0, 1, 2, 3, 12, 13, 14, 15, 4, 5, 6, 7, 8, 9, 10, 11]]
    assert (zigzag_restore(ordered, 2) == x).all()
    with pytest.raises(ValueError, match=r"x's sequence \(dim 1, 16 positions\) must split into 2 \* parts = 6"):
        zigzag_order(x, 3)
    with pytest.raises(ValueError, match="parts must be >= 1"):
        zigzag_order(x, 0)
    with pytest.raises(TypeError, match="x must be a jax or numpy array"):
        zigzag_order([0, 1], 1)
