"""trinix under torch.distributed on the CPU: DTensor inputs sharded over batch, heads or (RoPE)
the sequence, and context-parallel attention, through the interpreter and the torch fallback,
forward and backward, against the unsharded result.

The checks run in gloo processes spawned once per world size (starting one costs seconds); each
rank records which checks failed, and each test reads one check's record. The checks of one rank
(a mesh of one device, a ring of one rank) run in the suite's own process, in a world of one.
"""

import datetime
import functools
import json
import re
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.experimental import context_parallel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from trinix.torch import context_parallel as ring_module
from trinix.torch import (FastALiBiPositionEmbedding, FastRoPEPositionEmbedding, alibi_bias, alibi_slopes,
                          apply_rotary_pos_emb, attention, context_parallel_attention, rope_rotate, zigzag_order,
                          zigzag_restore)

BACKENDS = ("interpret", "torch")


def _dtensor(x, mesh, placements):
    return distribute_tensor(x, mesh, placements, src_data_rank=None)


def _compare(function, arrays, placements, mesh, backend, *, differentiable=(0,)):
    """function(*arrays, backend=backend) of DTensors (arrays placed by `placements`; None:
    passed as plain tensors) and their gradients against the unsharded result (of the torch
    fallback: the interpreter costs ~10 ms per program); then again under no_grad."""
    plain = [a.clone().requires_grad_(i in differentiable) for i, a in enumerate(arrays)]
    expected = function(*plain, backend="torch")
    expected = expected if isinstance(expected, tuple) else (expected,)
    cotangents = [torch.randn_like(out) for out in expected]
    torch.autograd.backward(expected, cotangents)
    sharded = [a if p is None else _dtensor(a, mesh, p) for a, p in zip(arrays, placements)]
    for i in differentiable:
        sharded[i].requires_grad_()
    got = function(*sharded, backend=backend)
    got = got if isinstance(got, tuple) else (got,)
    torch.autograd.backward(got, [_dtensor(g, mesh, out.placements) for g, out in zip(cotangents, got)])
    for out, want in zip(got, expected):
        assert out.placements == tuple(placements[0]), (out.placements, placements[0])
        torch.testing.assert_close(out.full_tensor(), want, rtol=1e-5, atol=1e-5)
    for i in differentiable:
        torch.testing.assert_close(sharded[i].grad.full_tensor(), plain[i].grad, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # nothing to differentiate: the outputs are wrapped another way, to the same DTensors
        inferred = function(*sharded, backend=backend)
    for out, differentiated, want in zip(inferred if isinstance(inferred, tuple) else (inferred,), got, expected):
        assert not out.requires_grad
        assert (out.placements, out.shape, out.stride()) == (
            differentiated.placements, differentiated.shape, differentiated.stride())
        torch.testing.assert_close(out.full_tensor(), want, rtol=1e-5, atol=1e-5)


def check_rope(backend, mesh):
    """RoPE over heads, the sequence (positions made global, or given), batch, or replicated; in
    place."""
    rope = FastRoPEPositionEmbedding(dim=16)
    q, k = torch.randn(2, 8, 4, 16), torch.randn(2, 8, 2, 16)
    cos, sin = rope(q, 12)
    for shard in (Shard(2), Shard(1)):  # heads; the sequence, at global positions
        _compare(lambda q, k, backend: rope_rotate(q, k, rope.inv_freq, offset=3, backend=backend), (q, k),
                 ([shard], [shard]), mesh, backend, differentiable=(0, 1))
    for shard in (Shard(0), Shard(1), Replicate()):
        _compare(lambda q, k, cos, sin, backend: apply_rotary_pos_emb(q, k, cos[2:], sin[2:], backend=backend),
                 (q, k, cos, sin), ([shard], [shard], None, None), mesh, backend, differentiable=(0, 1))
    ids = torch.arange(5, 13).repeat(2, 1)  # given, sharded with the sequence of "bhsd"
    _compare(lambda q, k, ids, backend: rope_rotate(q, k, rope.inv_freq, position_ids=ids, layout="bhsd",
                                                    backend=backend),
             (q.transpose(1, 2), k.transpose(1, 2), ids), ([Shard(2)], [Shard(2)], [Shard(1)]), mesh, backend,
             differentiable=(0, 1))
    # A cotangent placed otherwise than its output (here replicated) reaches q redistributed to q's placement.
    plain, cotangent = q.clone().requires_grad_(), torch.randn_like(q)
    rope.rotate(plain, k)[0].backward(cotangent)
    sharded = _dtensor(q, mesh, [Shard(2)]).requires_grad_()
    rotated = rope.rotate(sharded, _dtensor(k, mesh, [Shard(2)]), backend=backend)[0]
    rotated.backward(_dtensor(cotangent, mesh, [Replicate()]))
    assert sharded.grad.placements == (Shard(2),)
    torch.testing.assert_close(sharded.grad.full_tensor(), plain.grad)
    dq, dk = _dtensor(q, mesh, [Shard(2)]), _dtensor(k, mesh, [Shard(2)])
    assert rope.rotate(dq, dk, inplace=True, backend=backend)[0] is dq
    torch.testing.assert_close(dq.full_tensor(), rope.rotate(q, k)[0])


def check_alibi(backend, mesh):
    """ALiBi of the model's heads on scores sharded over batch or heads; a bias of sharded slopes."""
    alibi = FastALiBiPositionEmbedding(num_heads=4)  # the model's heads, whose scores are sharded below
    scores = torch.randn(2, 4, 8, 8)
    for shard in (Shard(0), Shard(1)):
        _compare(lambda s, backend: alibi.add_to_scores(s, backend=backend), (scores,), ([shard],), mesh, backend)
        _compare(lambda s, backend: alibi.softmax(s, scale=0.3, causal=True, backend=backend), (scores,),
                 ([shard],), mesh, backend)
    sharded = alibi_bias(_dtensor(alibi.slopes, mesh, [Shard(0)]), 8, 12, backend=backend)
    assert sharded.placements == (Shard(0),)
    torch.testing.assert_close(sharded.full_tensor(), alibi_bias(alibi.slopes, 8, 12))


def check_attention(backend, mesh):
    """Attention with ALiBi over heads ("bshd") and batch ("bhsd")."""
    alibi = FastALiBiPositionEmbedding(num_heads=4)
    q, k, v = torch.randn(2, 8, 4, 16), torch.randn(2, 8, 2, 16), torch.randn(2, 8, 2, 16)
    for layout, shard in (("bshd", Shard(2)), ("bhsd", Shard(0))):
        arrays = (q, k, v) if layout == "bshd" else tuple(x.transpose(1, 2) for x in (q, k, v))
        _compare(lambda q, k, v, backend: attention(q, k, v, alibi=alibi, causal=True, layout=layout, backend=backend),
                 arrays, ([shard],) * 3, mesh, backend, differentiable=(0, 1, 2))


def check_ops_directly(backend, mesh):
    """trinix's torch.library ops on DTensors, by their registered strategies: shard-local, no
    redistribution."""
    q = _dtensor(torch.randn(2, 8, 4, 16), mesh, [Shard(2)])
    o, lse = torch.ops.trinix.attention_fwd(q, q, q, None, None, None, "none", False, 0.25, None, "bshd", None,
                                            None, True)
    assert (o.placements, lse.placements) == ((Shard(2),), (Shard(1),))
    assert o.to_local().shape == (2, 8, 2, 16)
    scores = _dtensor(torch.randn(2, 4, 8, 8), mesh, [Shard(1)])
    slopes = _dtensor(alibi_slopes(4), mesh, [Shard(0)])
    out = torch.ops.trinix.alibi_add(scores, slopes, 0, False, True)
    assert out.placements == (Shard(1),)
    torch.testing.assert_close(out.full_tensor(), torch.ops.trinix.alibi_add(
        scores.full_tensor(), slopes.full_tensor(), 0, False, True))


def check_refused(backend, mesh):
    """Placements trinix cannot run shard-local: a ValueError naming the argument."""
    q = torch.randn(2, 8, 4, 16)
    rope = FastRoPEPositionEmbedding(dim=16, backend=backend)
    alibi = FastALiBiPositionEmbedding(num_heads=4, backend=backend)
    scores = torch.randn(2, 4, 8, 8)
    cases = [
        (lambda: rope.rotate(_dtensor(q, mesh, [Shard(3)]), q), "q has placement S(3)"),  # head_dim
        (lambda: rope.rotate(_dtensor(q, mesh, [Shard(1)]), q, offset=torch.tensor(2)), "offset must be an int"),
        (lambda: alibi.add_to_scores(_dtensor(scores, mesh, [Shard(2)])), "scores has placement S(2)"),
        (lambda: attention(*(_dtensor(q, mesh, [Shard(1)]),) * 3, backend=backend),
         "heads (dim 2) only (Shard or Replicate); over the sequence, use context_parallel_attention"),
        (lambda: attention(q, *(_dtensor(torch.randn(2, 8, 1, 16), mesh, [Shard(2)]),) * 2, backend=backend),
         "k of shape (2, 8, 1, 16)"),  # one key head cannot split over two ranks
        (lambda: alibi.add_to_scores(DTensor.from_local(scores, mesh, [Partial()])), "scores has placement P"),
        (lambda: context_parallel_attention(*(_dtensor(q, mesh, [Shard(2)]),) * 3, backend=backend),
         "must be sharded over the sequence on exactly one mesh dim"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            call()


def check_context_parallel(backend, mesh):
    """Ring attention on sequence shards (zigzag or in order) against attention on the whole."""
    group, rank, size = mesh.get_group(), mesh.get_local_rank(), mesh.size()
    alibi = FastALiBiPositionEmbedding(num_heads=2)
    q, k, v = torch.randn(1, 16, 2, 16), torch.randn(1, 16, 1, 16), torch.randn(1, 16, 1, 16)
    do = torch.randn_like(q)
    cases = [dict(causal=True, zigzag=True, alibi=alibi)]
    if backend == "torch":
        cases += [dict(causal=False, zigzag=False, alibi=alibi), dict(causal=True, zigzag=False, alibi=None),
                  dict(causal=False, zigzag=True, alibi=None)]
    for case in cases:
        whole = [x.clone().requires_grad_() for x in (q, k, v)]
        expected = attention(*whole, alibi=case["alibi"], causal=case["causal"], backend="torch")
        expected.backward(do)
        order = functools.partial(zigzag_order, parts=size) if case["zigzag"] else (lambda x: x)
        restore = functools.partial(zigzag_restore, parts=size) if case["zigzag"] else (lambda x: x)
        shards = [order(x).chunk(size, 1)[rank].clone().requires_grad_() for x in (q, k, v)]
        o = context_parallel_attention(*shards, group=group, backend=backend, **case)
        o.backward(order(do).chunk(size, 1)[rank])
        for got, want in zip((o, *(x.grad for x in shards)), (expected, *(x.grad for x in whole))):
            parts = [torch.empty_like(got) for _ in range(size)]
            dist.all_gather(parts, got.detach().contiguous(), group=group)
            torch.testing.assert_close(restore(torch.cat(parts, 1)), want, rtol=1e-5, atol=1e-5)
    _check_ring_of_dtensors([Shard(1)], size, mesh, backend)


def _check_ring_of_dtensors(placements, ring_size, mesh, backend):
    """context_parallel_attention of DTensors in zigzag order, sharded by `placements` (the
    sequence over a mesh dim of ring_size ranks), against attention on the whole sequence."""
    alibi = FastALiBiPositionEmbedding(num_heads=4)
    q, k, v = torch.randn(2, 16, 4, 16), torch.randn(2, 16, 2, 16), torch.randn(2, 16, 2, 16)
    do = torch.randn_like(q)
    whole = [x.clone().requires_grad_() for x in (q, k, v)]
    expected = attention(*whole, alibi=alibi, causal=True, backend="torch")
    expected.backward(do)
    sharded = [_dtensor(zigzag_order(x, ring_size), mesh, placements).requires_grad_() for x in (q, k, v)]
    o = context_parallel_attention(*sharded, alibi=alibi, causal=True, zigzag=True, backend=backend)
    o.backward(_dtensor(zigzag_order(do, ring_size), mesh, placements))
    assert o.placements == tuple(placements)
    for got, want in zip((o, *(x.grad for x in sharded)), (expected, *(x.grad for x in whole))):
        torch.testing.assert_close(zigzag_restore(got.full_tensor(), ring_size), want, rtol=1e-5, atol=1e-5)


def check_torch_context_parallel(backend, mesh):
    """Under torch's context_parallel, which shards its buffers in zigzag (head-tail) order:
    RoPE by the position ids sharded with them, then context_parallel_attention(zigzag=True),
    against the whole sequence."""
    group, size = mesh.get_group(), mesh.size()
    alibi = FastALiBiPositionEmbedding(num_heads=2)
    inv_freq = 1 / 100 ** (torch.arange(0, 16, 2).double().numpy() / 16)
    q, k, v = torch.randn(1, 16, 2, 16), torch.randn(1, 16, 1, 16), torch.randn(1, 16, 1, 16)
    expected = attention(*rope_rotate(q, k, inv_freq, backend="torch"), v, alibi=alibi, causal=True, backend="torch")
    ids = torch.arange(16)[None]
    buffers = [q, k, v, ids]
    with context_parallel(mesh, buffers=buffers, buffer_seq_dims=[1] * 4, no_restore_buffers=set(buffers)):
        q_rot, k_rot = rope_rotate(q, k, inv_freq, position_ids=ids, backend=backend)
        o = context_parallel_attention(q_rot, k_rot, v, group=group, alibi=alibi, causal=True, zigzag=True,
                                       backend=backend)
    parts = [torch.empty_like(o) for _ in range(size)]
    dist.all_gather(parts, o, group=group)
    torch.testing.assert_close(zigzag_restore(torch.cat(parts, 1), size), expected, rtol=1e-5, atol=1e-5)


def check_mesh_2d(backend, mesh):
    """A 2 x 2 mesh sharding batch and heads at once."""
    rope, alibi = FastRoPEPositionEmbedding(dim=16), FastALiBiPositionEmbedding(num_heads=4)
    q, k, v = torch.randn(2, 8, 4, 16), torch.randn(2, 8, 2, 16), torch.randn(2, 8, 2, 16)
    placements = [Shard(0), Shard(2)]
    _compare(lambda q, k, backend: rope_rotate(q, k, rope.inv_freq, backend=backend), (q, k),
             (placements,) * 2, mesh, backend, differentiable=(0, 1))
    _compare(lambda q, k, v, backend: attention(q, k, v, alibi=alibi, causal=True, backend=backend), (q, k, v),
             (placements,) * 3, mesh, backend, differentiable=(0, 1, 2))
    if backend == "torch":  # heads over mesh dim 0, the ring over mesh dim 1: global slopes and positions
        _check_ring_of_dtensors([Shard(2), Shard(1)], 2, mesh, backend)


# By world size: (check, backends). The ring of 4 runs the torch fallback only: its kernels are
# those of the ring of 2, and through the interpreter it took 14 s here.
CHECKS = {2: tuple((name, BACKENDS) for name in ("rope", "alibi", "attention", "refused", "context_parallel",
                                                 "torch_context_parallel"))
          + (("ops_directly", ("interpret",)),),
          4: (("context_parallel", ("torch",)), ("mesh_2d", BACKENDS))}


def _worker(rank: int, world_size: int, store: str, out: str) -> None:

    torch.set_num_threads(1)  # the ranks share the CPU
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=120))
    failures = {}
    for name, backends in CHECKS[world_size]:
        mesh = init_device_mesh("cpu", (2, 2) if name == "mesh_2d" else (world_size,))
        for backend in backends:
            torch.manual_seed(0)  # every rank makes the same arrays, and keeps its shard of them
            try:
                globals()[f"check_{name}"](backend, mesh)
            except Exception:  # recorded for the test of this check; the other checks go on
                failures[f"{name}-{backend}"] = traceback.format_exc()
    with open(f"{out}/{rank}.json", "w") as file:
        json.dump(failures, file)
    dist.barrier()  # torch 2.11's gloo aborted a rank that left while another still sent
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def failures(tmp_path_factory):
    """failures(world_size): the failed checks of that many ranks, by "check-backend (rank r)";
    the ranks run once."""

    @functools.cache
    def of(world_size: int) -> dict:
        tmp = tmp_path_factory.mktemp(f"world{world_size}")
        mp.spawn(_worker, args=(world_size, str(tmp / "store"), str(tmp)), nprocs=world_size)
        failed = {}
        for rank in range(world_size):
            recorded = json.loads((tmp / f"{rank}.json").read_text())
            failed.update({f"{name} (rank {rank})": error for name, error in recorded.items()})
        return failed

    return of


@pytest.mark.parametrize("world_size, check, backend", [
    (size, name, backend) for size, checks in CHECKS.items() for name, backends in checks for backend in backends])
def test_sharded_equals_unsharded(failures, world_size, check, backend):
    failed = {name: error for name, error in failures(world_size).items() if name.startswith(f"{check}-{backend} ")}
    assert not failed, "\n".join(failed.values())


@pytest.fixture(scope="module")
def one_device_mesh(tmp_path_factory):
    """A gloo world of this process alone, and its mesh of one device."""
    store = tmp_path_factory.mktemp("world1") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


class _OpsOnDTensors(TorchDispatchMode):
    """Records trinix's torch.library ops dispatched with a DTensor among their arguments (a mode
    sees an op before DTensor's dispatch does)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "trinix" and any(isinstance(x, DTensor) for x in tree_leaves((args, kwargs))):
            self.seen.append(func.name())
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_device_mesh_runs_local(one_device_mesh, backend):
    """DTensors of a mesh of one device run the plain path on their local tensors, no trinix op
    dispatched on a DTensor, with the plain call's values and gradients."""
    torch.manual_seed(0)
    rope, alibi = FastRoPEPositionEmbedding(dim=16), FastALiBiPositionEmbedding(num_heads=4)
    q, k, v, scores = torch.randn(2, 8, 4, 16), torch.randn(2, 8, 2, 16), torch.randn(2, 8, 2, 16), torch.randn(2, 4, 8, 8)
    calls = [
        (lambda q, k: rope.rotate(q, k, offset=3, backend=backend), (q, k), Shard(1)),
        (lambda scores: alibi.add_to_scores(scores, backend=backend), (scores,), Shard(1)),
        (lambda q, k, v: attention(q, k, v, alibi=alibi, causal=True, backend=backend), (q, k, v), Shard(2)),
        (lambda q, k, v: context_parallel_attention(q, k, v, alibi=alibi, causal=True, zigzag=True, backend=backend),
         (q, k, v), Shard(1)),
    ]
    for function, arrays, placement in calls:
        plain = [x.clone().requires_grad_() for x in arrays]
        expected = function(*plain)
        expected = expected if isinstance(expected, tuple) else (expected,)
        torch.autograd.backward(expected, [torch.ones_like(out) for out in expected])
        sharded = [_dtensor(x, one_device_mesh, [placement]).requires_grad_() for x in arrays]
        with _OpsOnDTensors() as mode:
            got = function(*sharded)
            got = got if isinstance(got, tuple) else (got,)
            torch.autograd.backward(got, [torch.ones_like(out) for out in got])
        assert not mode.seen, f"trinix ops dispatched on DTensors: {mode.seen}"
        for out, want in zip((*got, *(x.grad for x in sharded)), (*expected, *(x.grad for x in plain))):
            assert isinstance(out, DTensor)
            torch.testing.assert_close(out.to_local(), want)


def test_compiled_on_dtensors(one_device_mesh, recwarn):
    """torch.compile(fullgraph=True) of RoPE and ALiBi on DTensors: the plain calls' values, with and
    without gradients (eager mode wraps DTensors by other means than Dynamo can trace), and no
    warning from Dynamo at trinix's caches (it traces the functions they cache)."""
    torch.manual_seed(0)
    rope, alibi = FastRoPEPositionEmbedding(dim=16), FastALiBiPositionEmbedding(num_heads=4)
    q, k, scores = torch.randn(2, 8, 4, 16), torch.randn(2, 8, 2, 16), torch.randn(2, 4, 8, 8)
    rotate = torch.compile(lambda q, k: rope.rotate(q, k, offset=3), fullgraph=True)
    add = torch.compile(lambda scores: alibi.add_to_scores(scores), fullgraph=True)
    added = add(_dtensor(scores, one_device_mesh, [Shard(1)]))
    torch.testing.assert_close(added.to_local(), alibi.add_to_scores(scores))
    for differentiable in (False, True):
        plain = [x.clone().requires_grad_(differentiable) for x in (q, k)]
        sharded = [_dtensor(x, one_device_mesh, [Shard(2)]).requires_grad_(differentiable) for x in (q, k)]
        expected, got = rope.rotate(*plain, offset=3), rotate(*sharded)
        assert all(isinstance(out, DTensor) for out in got)
        if differentiable:
            torch.autograd.backward(expected, [torch.ones_like(out) for out in expected])
            torch.autograd.backward(got, [torch.ones_like(out) for out in got])
            expected, got = (*expected, *(x.grad for x in plain)), (*got, *(x.grad for x in sharded))
        for out, want in zip(got, expected):
            torch.testing.assert_close(out.to_local(), want)
    cache_warnings = [str(warning.message) for warning in recwarn if "lru_cache" in str(warning.message)]
    assert not cache_warnings, cache_warnings


@pytest.mark.parametrize("backend", BACKENDS)
def test_ring_of_one_rank_is_attention(one_device_mesh, monkeypatch, backend):
    """context_parallel_attention on a ring of one rank (a group of one, or DTensors of a mesh of
    one device) is attention on the whole sequence, in or out of zigzag order: values and
    gradients, without the ring."""

    def no_ring(*args):
        raise AssertionError("a ring of one rank ran the ring")

    monkeypatch.setattr(ring_module._RingAttention, "apply", no_ring)
    torch.manual_seed(0)
    alibi = FastALiBiPositionEmbedding(num_heads=4)
    q, k, v = torch.randn(2, 8, 4, 16), torch.randn(2, 8, 2, 16), torch.randn(2, 8, 2, 16)
    do = torch.randn_like(q)
    for causal, zigzag, dtensors in ((True, True, False), (False, False, False), (True, True, True)):
        plain = [x.clone().requires_grad_() for x in (q, k, v)]
        expected = attention(*plain, alibi=alibi, causal=causal, backend=backend)
        expected.backward(do)
        if dtensors:
            shards = [_dtensor(x, one_device_mesh, [Shard(1)]).requires_grad_() for x in (q, k, v)]
            o = context_parallel_attention(*shards, alibi=alibi, causal=causal, zigzag=zigzag, backend=backend)
            o.backward(_dtensor(do, one_device_mesh, [Shard(1)]))
            got = [x.to_local() for x in (o, *(x.grad for x in shards))]
        else:
            shards = [x.clone().requires_grad_() for x in (q, k, v)]
            o = context_parallel_attention(*shards, group=one_device_mesh.get_group(), alibi=alibi, causal=causal,
                                           zigzag=zigzag, backend=backend)
            o.backward(do)
            got = [o, *(x.grad for x in shards)]
        for out, want in zip(got, (expected, *(x.grad for x in plain))):
            torch.testing.assert_close(out, want)
