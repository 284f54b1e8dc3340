"""The sharded JAX cases of tests/test_sharding_jax.py, run in a process of their own: XLA makes 8
host devices only if told before it starts (XLA_FLAGS), and the suite's process has started it.

`python -m tests.sharding_jax_runner` runs every case of `CASES` through the "interpret" and
"xla" backends and prints one JSON line: {"case/backend": null (passed) or the failure}. Each
case compiles its function under jit on sharded inputs, checks the compiled HLO for
collectives, and compares the result and its gradients with the unsharded call and with
trinix.reference (float64). Shapes are tiny: the interpreter costs milliseconds per program.
"""

import json
import os
import re
import sys
import traceback

import numpy as np

BACKENDS = ("interpret", "xla")
DEVICES = 8
COLLECTIVES = ("all-gather", "all-reduce", "collective-permute", "all-to-all", "reduce-scatter")


def _collectives(compiled) -> set[str]:
    return set(re.findall("|".join(COLLECTIVES), compiled.as_text()))


def _sharded_run(function, arrays, specs, mesh, *, allowed=()):
    """function(*arrays) under jit on arrays placed by PartitionSpecs `specs` (None: replicated):
    its outputs (a pytree), after checking that the compiled HLO has no collective but `allowed`."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    placed = [jax.device_put(a, NamedSharding(mesh, P() if s is None else s)) for a, s in zip(arrays, specs)]
    compiled = jax.jit(function).lower(*placed).compile()
    found = _collectives(compiled) - set(allowed)
    assert not found, f"collectives {sorted(found)} in the compiled HLO"
    return compiled(*placed)


def _close(actual, expected, tolerance: float, what: str) -> None:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    error = float(np.max(np.abs(actual - expected), initial=0.0))
    assert error <= tolerance, f"{what}: max error {error:.3g} > {tolerance:.3g}"


def _same_as_unsharded(function, arrays, specs, mesh, tolerance: float, *, split_like=None, **options) -> list:
    """The sharded outputs (leaves), checked against function(*arrays) on one device, the first
    split by PartitionSpec `split_like` if given."""
    import jax
    from jax.sharding import NamedSharding

    sharded = jax.tree.leaves(_sharded_run(function, arrays, specs, mesh, **options))
    if split_like is not None:
        expected = NamedSharding(mesh, split_like)
        assert sharded[0].sharding.is_equivalent_to(expected, sharded[0].ndim), \
            f"output split as {sharded[0].sharding}, not as {expected}"
    for i, (a, b) in enumerate(zip(sharded, jax.tree.leaves(jax.jit(function)(*arrays)))):
        _close(a, b, tolerance, f"output {i} against the unsharded call")
    return sharded


def _mesh(shape, names):
    import jax
    from jax.sharding import Mesh

    return Mesh(np.array(jax.devices()[:DEVICES]).reshape(shape), names)


def _loss(function, argnums):
    """Gradients of sum(f^2) / 2 of the first output of `function` in `argnums`."""
    import jax

    def loss(*arrays):
        out = jax.tree.leaves(function(*arrays))[0]
        return 0.5 * (out.astype("float32") ** 2).sum()

    return jax.grad(loss, argnums=argnums)


def rope_table_batch(backend: str) -> None:
    """Mesh of 8 over the batch: apply_rotary_pos_emb by tables, and its gradient."""
    from jax.sharding import PartitionSpec as P
    from trinix import reference
    from trinix.jax import apply_rotary_pos_emb

    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((8, 8, 2, 16), np.float32), rng.standard_normal((8, 8, 1, 16), np.float32)
    cos, sin = (t.astype(np.float32) for t in reference.rope_cos_sin(np.arange(8), reference.rope_inv_freq(16)))

    def rotate(q, k):
        return apply_rotary_pos_emb(q, k, cos, sin, backend=backend)

    mesh, specs = _mesh((8,), ("data",)), (P("data"), P("data"))
    q_rot, k_rot = _same_as_unsharded(rotate, (q, k), specs, mesh, 1e-6, split_like=specs[0])
    _close(q_rot, reference.rope_rotate(q, cos[:, None], sin[:, None]), 1e-5, "q_rot against the reference")
    _same_as_unsharded(_loss(rotate, (0, 1)), (q, k), specs, mesh, 1e-5)


def rope_sequence(backend: str) -> None:
    """Mesh 2 x 4, the sequence split 4 ways: rope_rotate gives each shard's tokens their global
    positions (offset + s), with and without position ids; gradients too."""
    from jax.sharding import PartitionSpec as P
    from trinix import reference
    from trinix.jax import rope_rotate

    rng = np.random.default_rng(1)
    q, k = rng.standard_normal((2, 16, 2, 16), np.float32), rng.standard_normal((2, 16, 2, 16), np.float32)
    inv_freq = reference.rope_inv_freq(16)
    ids = np.broadcast_to(np.arange(16, dtype=np.int32)[::-1] + 7, (2, 16)).copy()
    mesh, spec = _mesh((2, 4), ("data", "seq")), P("data", "seq")

    def by_offset(q, k):
        return rope_rotate(q, k, inv_freq, offset=5, backend=backend)

    def by_ids(q, k, ids):
        return rope_rotate(q, k, inv_freq, position_ids=ids, backend=backend)

    for function, arrays, positions in ((by_offset, (q, k), np.arange(16) + 5), (by_ids, (q, k, ids), ids[0])):
        q_rot, _ = _same_as_unsharded(function, arrays, (spec,) * len(arrays), mesh, 1e-6, split_like=spec)
        cos, sin = reference.rope_cos_sin(positions, inv_freq)
        _close(q_rot, reference.rope_rotate(q, cos[:, None], sin[:, None]), 1e-5, "q_rot against the reference")
    _same_as_unsharded(_loss(by_offset, (0, 1)), (q, k), (spec, spec), mesh, 1e-5)


def alibi_heads(backend: str) -> None:
    """Mesh 4 x 2, batch and heads: alibi_bias, alibi_add and alibi_softmax (and its gradient)
    get each head shard's global slopes from slopes split with the heads, or replicated."""
    from jax.sharding import PartitionSpec as P
    from trinix import reference
    from trinix.jax import alibi_add, alibi_bias, alibi_slopes, alibi_softmax

    rng = np.random.default_rng(2)
    scores = rng.standard_normal((4, 4, 8, 8), np.float32)
    slopes = np.asarray(alibi_slopes(4, backend="xla"))
    mesh = _mesh((4, 2), ("data", "model"))
    bias = reference.alibi_bias(slopes, 8, 8, causal=True)
    for slopes_spec in (P("model"), None):
        def add(scores, slopes):
            return alibi_add(scores, slopes, causal=True, backend=backend)

        (out,) = _same_as_unsharded(add, (scores, slopes), (P("data", "model"), slopes_spec), mesh, 0,
                                    split_like=P("data", "model"))
        _close(out, scores + bias, 1e-5, "alibi_add against the reference")

    def softmax(scores, slopes):
        return alibi_softmax(scores, slopes, scale=0.5, causal=True, backend=backend)

    specs = (P("data", "model"), P("model"))
    (out,) = _same_as_unsharded(softmax, (scores, slopes), specs, mesh, 1e-6, split_like=specs[0])
    _close(out, reference.alibi_softmax(scores, slopes, scale=0.5, causal=True), 1e-5, "alibi_softmax")
    _same_as_unsharded(_loss(softmax, 0), (scores, slopes), specs, mesh, 1e-5)
    (out,) = _same_as_unsharded(lambda slopes: alibi_bias(slopes, 4, 8, backend=backend), (slopes,),
                                (P("model"),), mesh, 0, split_like=P("model"))
    _close(out, reference.alibi_bias(slopes, 4, 8), 1e-5, "alibi_bias against the reference")


def _causal_gqa(seed: int, batch: int, heads: int, backend: str):
    """(q (batch, 8, heads, 16), k and v (batch, 8, 2, 16), the heads' slopes) from `seed`, and
    causal ALiBi attention of them through `backend`."""
    from trinix.jax import alibi_slopes, attention

    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, 8, heads, 16), np.float32)
    k, v = rng.standard_normal((2, batch, 8, 2, 16), np.float32)
    slopes = np.asarray(alibi_slopes(heads, backend="xla"))

    def attend(q, k, v, slopes):
        return attention(q, k, v, alibi=slopes, causal=True, backend=backend)

    return (q, k, v, slopes), attend


def attention_heads(backend: str) -> None:
    """Mesh 4 x 2, batch and heads, GQA (4 query heads on 2 KV heads) with causal ALiBi:
    attention and its gradients, against the reference's."""
    from jax.sharding import PartitionSpec as P
    from trinix import reference

    arrays, attend = _causal_gqa(3, batch=4, heads=4, backend=backend)
    q, k, v, slopes = arrays
    specs = (P("data", None, "model"),) * 3 + (P("model"),)
    (out,) = _same_as_unsharded(attend, arrays, specs, _mesh((4, 2), ("data", "model")), 1e-5, split_like=specs[0])
    _close(out, reference.attention(q, k, v, slopes, alibi="causal")[0], 1e-5, "attention against the reference")
    grads = _same_as_unsharded(_loss(attend, (0, 1, 2)), arrays, specs, _mesh((4, 2), ("data", "model")), 1e-5)
    for name, grad, expected in zip("qkv", grads, reference.attention_vjp(q, k, v, out, slopes, alibi="causal")):
        _close(grad, expected, 1e-4, f"d{name} against the reference")


def attention_heads_undivided(backend: str) -> None:
    """Mesh 2 x 4, q's heads split by 4 with 2 KV heads (GQA, 4 query heads each), which a split
    by 4 cannot share out: the heads are gathered (collectives allowed), forward and backward
    compile, and both equal the unsharded call."""
    from jax.sharding import PartitionSpec as P

    arrays, attend = _causal_gqa(5, batch=2, heads=8, backend=backend)
    specs = (P("data", None, "model"), P("data"), P("data"), P("model"))
    mesh = _mesh((2, 4), ("data", "model"))
    _same_as_unsharded(attend, arrays, specs, mesh, 1e-5, allowed=COLLECTIVES)
    _same_as_unsharded(_loss(attend, (0, 1, 2)), arrays, specs, mesh, 1e-5, allowed=COLLECTIVES)


def context_parallel(backend: str) -> None:
    """Mesh 4 x 2, batch by 4 and the sequence by 2 in zigzag order: context_parallel_attention
    with causal ALiBi inside shard_map, forward and backward; a ring of collective-permutes, no
    gather of K and V."""
    import jax
    from jax.sharding import PartitionSpec as P
    from trinix import reference
    from trinix.jax import alibi_slopes, context_parallel_attention, zigzag_order, zigzag_restore

    rng = np.random.default_rng(4)
    q = rng.standard_normal((4, 16, 2, 16), np.float32)
    k, v = rng.standard_normal((2, 4, 16, 1, 16), np.float32)
    slopes = np.asarray(alibi_slopes(2, backend="xla"))
    mesh, spec = _mesh((4, 2), ("data", "seq")), P("data", "seq")

    def attend(q, k, v):
        local = jax.shard_map(
            lambda q, k, v: context_parallel_attention(q, k, v, axis_name="seq", alibi=slopes, causal=True,
                                                       zigzag=True, backend=backend),
            mesh=mesh, in_specs=spec, out_specs=spec)
        return local(q, k, v)

    arrays = [np.asarray(zigzag_order(x, 2)) for x in (q, k, v)]
    allowed = ("collective-permute",)
    (out,) = _sharded_run(lambda *a: (attend(*a),), arrays, (spec,) * 3, mesh, allowed=allowed)
    expected = reference.attention(q, k, v, slopes, alibi="causal")[0]
    _close(zigzag_restore(out, 2), expected, 1e-5, "context-parallel attention against the reference")
    grads = _sharded_run(_loss(attend, (0, 1, 2)), arrays, (spec,) * 3, mesh, allowed=allowed)
    for name, grad, ref in zip("qkv", grads, reference.attention_vjp(q, k, v, expected, slopes, alibi="causal")):
        _close(zigzag_restore(grad, 2), ref, 1e-4, f"d{name} against the reference")


def tables(backend: str) -> None:
    """Mesh of 8: rope_cos_sin and alibi_slopes, which have no input to split by, under jit with
    split outputs: each device computes them and keeps its slice, with no collective."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P
    from trinix import reference
    from trinix.jax import alibi_slopes, rope_cos_sin

    split = NamedSharding(_mesh((8,), ("data",)), P("data"))
    inv_freq = reference.rope_inv_freq(16)
    for function, expected in ((lambda: rope_cos_sin(inv_freq, 16, backend=backend),
                                reference.rope_cos_sin(np.arange(16), inv_freq)),
                               (lambda: (alibi_slopes(8, backend=backend),), (reference.alibi_slopes(8),))):
        compiled = jax.jit(function, out_shardings=split).lower().compile()
        assert not _collectives(compiled), f"collectives {sorted(_collectives(compiled))} in the compiled HLO"
        for out, ref in zip(compiled(), expected):
            assert out.sharding.is_equivalent_to(split, out.ndim), f"output sharded {out.sharding}"
            _close(out, ref, 1e-6, "against the reference")


CASES = {case.__name__: case for case in (tables, rope_table_batch, rope_sequence, alibi_heads, attention_heads,
                                          attention_heads_undivided, context_parallel)}


def main() -> None:
    import jax

    assert jax.device_count() >= DEVICES, f"{jax.device_count()} devices: XLA_FLAGS must ask for {DEVICES}"
    outcomes = {}
    for name, case in CASES.items():
        for backend in BACKENDS:
            try:
                case(backend)
                outcomes[f"{name}/{backend}"] = None
            except Exception:  # noqa: BLE001 - reported to the test, which fails with it
                outcomes[f"{name}/{backend}"] = traceback.format_exc()
    print(json.dumps(outcomes))


if __name__ == "__main__":
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={DEVICES}"
    sys.exit(main())
