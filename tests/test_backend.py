"""backend="auto": one table (trinix.backend.AUTO) by framework, context and op, read by both
bindings in every context (eager, torch.compile tracing, traced jax arrays)."""

import jax
import jax.numpy as jnp
import torch

from trinix import backend as rule
from trinix.jax import launcher as jax_launcher
from trinix.torch import launcher as torch_launcher

CUDA = torch.device("cuda")  # only named: nothing is allocated on it


def test_the_table_covers_every_framework_context_and_op():
    expected = {(f, c, op) for f, contexts in rule.CONTEXTS.items() for c in contexts for op in rule.OPS}
    assert set(rule.AUTO) == expected
    for (framework, _, _), backend in rule.AUTO.items():
        assert backend in ("triton", rule.FALLBACKS[framework])


def test_auto_off_a_gpu_is_the_frameworks_own_ops():
    for framework, context, op in rule.AUTO:
        assert rule.resolve_backend("auto", True, framework=framework, context=context, op=op, on_gpu=False,
                                    where="cpu") == rule.FALLBACKS[framework]


def test_explicit_backends_ignore_the_table(monkeypatch):
    monkeypatch.setitem(rule.AUTO, ("torch", "eager", "rope"), "torch")
    assert torch_launcher.resolve_backend("triton", True, CUDA, "rope") == "triton"
    assert torch_launcher.resolve_backend("auto", True, CUDA, "rope") == "torch"
    assert torch_launcher.resolve_backend("auto", False, CUDA, "attention") == "torch"


def test_torch_reads_the_compile_context_while_torch_compile_traces():
    chosen = []

    def step(x):
        chosen.extend(torch_launcher.resolve_backend("auto", True, CUDA, op) for op in rule.OPS)
        return x + 1

    torch.compile(step, backend="eager", fullgraph=True)(torch.zeros(2))
    assert chosen == [rule.AUTO["torch", "compile", op] for op in rule.OPS]
    assert [torch_launcher.resolve_backend("auto", True, CUDA, op) for op in rule.OPS] == [
        rule.AUTO["torch", "eager", op] for op in rule.OPS]
    assert rule.AUTO["torch", "compile", "rope"] == "torch"  # Inductor fuses its own rotation


def test_jax_reads_the_jit_context_from_traced_arrays():
    chosen = []

    def step(x):
        chosen.extend(jax_launcher.resolve_backend("auto", True, op, x, platform="gpu") for op in rule.OPS)
        return x + 1

    jax.jit(step)(jnp.zeros(2))
    assert chosen == [rule.AUTO["jax", "jit", op] for op in rule.OPS]
    assert [jax_launcher.resolve_backend("auto", True, op, jnp.zeros(2), platform="gpu") for op in rule.OPS] == [
        rule.AUTO["jax", "eager", op] for op in rule.OPS]
    assert rule.AUTO["jax", "jit", "rope"] == "xla"

