"""DTensor inputs of trinix's ops: which dims of each op's tensors may be sharded, in one rule per
op, that serves both as the op's registered DTensor sharding strategy and as the public functions'
check of the placements they are given.

Each rank runs the kernel on its own shard; no op gathers. The axes an op may shard are batch
and heads, and a rotation's sequence where position ids come sharded with it. Positions stay
global: ALiBi slopes shard with the heads they belong to, and a rotation of a sharded sequence
reads the global position of each token from its ids.

A public function given a DTensor checks the placements (`sharding`, planned once per signature),
then runs its plain path on each rank's local tensors (`Sharding.run_local`) and wraps the outputs
as DTensor.from_local would: every backend, the kernels' and the torch fallback's, runs on plain
tensors, and no DTensor dispatch runs inside. RoPE and ALiBi's scores run the shards by the plan
made on the global arguments (it does not depend on the dims a shard cuts); attention and the
ALiBi bias check and plan the local tensors again. Plain arguments the rule shards (slopes of
the model's heads, position ids of the whole sequence) are sliced to this rank's part; DTensors
placed otherwise than the rule says are redistributed. The registered strategies serve
torch.ops.trinix.* called on DTensors directly.

A rule takes an op's tensor arguments (tensors, or the DTensorSpecs DTensor gives a strategy,
read by shape only; None where not given) and its layout, and returns `Axes`: for each of them
and each output, the dim of each axis it carries. A tensor without an axis is replicated where
that axis is sharded.
"""

import contextlib
import functools
from typing import Callable, NamedTuple

import torch

from trinix.torch.launcher import cached

if torch.distributed.is_available():
    from torch.distributed.tensor import DTensor, Replicate, Shard
    from torch.distributed.tensor.experimental import register_sharding
else:  # a torch without torch.distributed: no DTensor can reach trinix
    DTensor = None

_SEQUENCE_DIMS = {"bshd": dict(batch=0, seq=1, heads=2), "bhsd": dict(batch=0, heads=1, seq=2),
                  "thd": dict(heads=1)}  # packed tokens belong to sequences that a shard would cut


class Axes(NamedTuple):
    inputs: tuple[dict[str, int] | None, ...]
    outputs: tuple[dict[str, int], ...]


def is_dtensor(tensor) -> bool:
    return DTensor is not None and isinstance(tensor, DTensor)


def _batch_dim(shape, batch: int | None) -> dict[str, int]:
    """{"batch": 0} for a per-sequence tensor of `batch` rows; {} for a broadcast one (1 row)."""
    return {"batch": 0} if batch is not None and batch > 1 and shape[0] == batch else {}


def rotation_axes(arrays: tuple, layout: str) -> Axes:
    """trinix::rope_apply and rope_apply_ (arrays: those of trinix.rope.ROTATION_INPUTS): q and k
    over batch and heads, and over the sequence where position ids give each token its global
    position."""
    q, k, cos, sin, frequencies, positions, offsets, cu_seqlens = arrays
    dims = dict(_SEQUENCE_DIMS[layout])
    if positions is None:
        dims.pop("seq", None)
    batch = q.shape[0] if "batch" in dims else None

    def shared(array):  # the same for every shard
        return None if array is None else {}

    def per_sequence(array):  # (batch or 1, ...): sharded with a batch of more than one
        return None if array is None else _batch_dim(array.shape, batch)

    tables = per_sequence if cos is not None and len(cos.shape) == 3 else shared
    ids = shared(positions) if layout == "thd" else per_sequence(positions)
    if "seq" in dims:
        ids["seq"] = 1
    inputs = (dims, dims, tables(cos), tables(sin), shared(frequencies), ids, per_sequence(offsets), shared(cu_seqlens))
    return Axes(inputs, (dims, dims))


def _slopes_dims(slopes, batch: int | None) -> dict[str, int] | None:
    """(heads,), (1, heads) or (batch, heads) slopes: sharded with the heads (and batch)."""
    if slopes is None:
        return None
    if len(slopes.shape) == 1:
        return dict(heads=0)
    return dict(_batch_dim(slopes.shape, batch), heads=1)


def scores_axes(arrays: tuple, layout: None = None) -> Axes:
    """trinix::alibi_add, alibi_add_ and alibi_softmax (arrays: scores, slopes): scores (batch,
    heads, seqlen_q, seqlen_k) over batch and heads; softmax and the query positions need whole
    rows and columns."""
    scores, slopes = arrays
    dims = dict(batch=0, heads=1)
    return Axes((dims, _slopes_dims(slopes, scores.shape[0])), (dims,))


def bias_axes(arrays: tuple, layout: None = None) -> Axes:
    """trinix::alibi_bias (arrays: slopes): a bias (heads, seqlen_q, seqlen_k) sharded with its
    slopes."""
    return Axes((dict(heads=0),), (dict(heads=0),))


def slopes_axes(arrays: tuple, layout: None = None) -> Axes:
    """trinix::alibi_slopes (arrays: max_bias): computed whole from its head range, replicated."""
    return Axes(({},), ({},))


def attention_axes(arrays: tuple, layout: str) -> Axes:
    """trinix::attention_fwd (arrays: those of trinix.attention.INPUTS), outputs (o, lse), and
    trinix::attention_bwd (arrays: those and o, lse, do), outputs (dq, dk, dv): over batch and
    heads. A query needs every key: context_parallel_attention shards the sequence."""
    q, k, v, slopes, cu_seqlens_q, cu_seqlens_k, *backward = arrays
    dims = dict(_SEQUENCE_DIMS[layout])
    dims.pop("seq", None)
    lse = dict(heads=0) if layout == "thd" else dict(batch=0, heads=1)  # (heads, tokens) or (batch, heads, seqlen_q)
    batch = q.shape[0] if "batch" in dims else None
    packed = tuple(None if cu is None else {} for cu in (cu_seqlens_q, cu_seqlens_k))  # read whole
    inputs = (dims, dims, dims, _slopes_dims(slopes, batch), *packed)
    if backward:
        return Axes(inputs + (dims, lse, dims), (dims, dims, dims))
    return Axes(inputs, (dims, lse))


def ring_axes(arrays: tuple, layout: str) -> Axes:
    """context_parallel_attention on DTensors (arrays: those of trinix.attention.INPUTS): the
    axes of attention, and the sequence of q, k and v, which one mesh dim splits into the ring's
    shards. Not an op's: the ring runs its kernels on local tensors."""
    axes = attention_axes(arrays, layout)
    dims = dict(axes.inputs[0], seq=_SEQUENCE_DIMS[layout]["seq"])
    return Axes((dims, dims, dims, *axes.inputs[3:]), (dims,))


def _placements(dims_of: tuple, axis: str | None) -> list:
    """The placement of each tensor of `dims_of` on a mesh dim sharding `axis` (None: replicated)."""
    return [None if dims is None else Shard(dims[axis]) if axis in dims else Replicate() for dims in dims_of]


def register(name: str, rule: Callable[..., Axes], n_arrays: int, layout_at: int | None = None) -> None:
    """Register `rule` as the DTensor sharding strategy of the op trinix::`name`, whose first
    `n_arrays` arguments are the rule's arrays and argument `layout_at` its layout: on each mesh
    dim every tensor replicated, or one of the axes of the op's first tensor sharded."""
    if DTensor is None:
        return

    op = getattr(torch.ops.trinix, name).default
    returns = len(op._schema.returns)  # none for an op in place

    @register_sharding(op)
    def strategies(*args):
        axes = rule(args[:n_arrays], None if layout_at is None else args[layout_at])
        return [(_placements(axes.outputs[:returns], axis),
                 _placements(axes.inputs, axis) + [None] * (len(args) - n_arrays)) for axis in (None, *axes.inputs[0])]


class Sharding(NamedTuple):
    """How a public function's arguments are sharded, planned once per signature (`sharding`):
    the axis each mesh dim shards (None: replicated), the placements the rule gives each argument
    (None where not given) and each output, and, for a plain argument the rule shards, the
    narrowings (dim, start, length) that cut this rank's part out of it."""

    mesh: object
    mesh_axes: tuple[str | None, ...]
    inputs: tuple[tuple | None, ...]
    outputs: tuple[tuple, ...]
    parts: tuple[tuple[tuple[int, int, int], ...], ...]

    def local(self, array, index: int):
        """This rank's part of argument `index`, as a plain tensor: a DTensor's local shard
        (redistributed first where placed otherwise than the rule says), a plain tensor's slice
        at this rank's mesh coordinate (no communication). Differentiable either way."""
        if is_dtensor(array):
            if tuple(array.placements) != self.inputs[index]:
                array = array.redistribute(self.mesh, self.inputs[index])
            return _to_local(array)
        for dim, start, length in self.parts[index]:
            array = array.narrow(dim, start, length)
        return array

    def run_local(self, function: Callable, arrays: tuple):
        """function(*this rank's parts of `arrays`) (the rule's inputs, in order; see `local`),
        its outputs (one tensor or a tuple) as DTensors placed by the rule: how every public
        function runs on DTensors, the function being its plain path on plain tensors."""
        differentiable = torch.is_grad_enabled() and any(array is not None and array.requires_grad for array in arrays)
        with contextlib.nullcontext() if differentiable else torch.no_grad():  # no_grad: to_local is a plain read
            parts = [None if array is None else self.local(array, index) for index, array in enumerate(arrays)]
            local = function(*parts)
        outputs = local if isinstance(local, tuple) else (local,)
        wrapped = tuple(_from_local(out, self.mesh, placements, differentiable)
                        for out, placements in zip(outputs, self.outputs))
        return wrapped if isinstance(local, tuple) else wrapped[0]


def _to_local(dtensor):
    """dtensor.to_local(), differentiable: in eager mode with gradients by `_ToLocal`."""
    if torch.compiler.is_compiling() or not (torch.is_grad_enabled() and dtensor.requires_grad):
        return dtensor.to_local()  # Dynamo traces to_local, not `_ToLocal`
    return _ToLocal.apply(dtensor)


def _from_local(local, mesh, placements: tuple, differentiable: bool):
    """DTensor.from_local(local, mesh, placements), in eager mode by a spec made once per signature
    (`_spec`): with gradients by `_FromLocal`, without by DTensor's constructor, as FSDP2 wraps."""
    if torch.compiler.is_compiling():  # Dynamo traces from_local, not DTensor's constructor
        return DTensor.from_local(local, mesh, placements)
    spec = _spec(mesh, placements, local.shape, local.stride(), local.dtype)
    return _FromLocal.apply(local, spec) if differentiable else DTensor(local, spec, requires_grad=False)


class _ToLocal(torch.autograd.Function):
    """dtensor.to_local(), its gradient wrapped by a spec made once per signature (`_spec`), where
    DTensor's own to_local makes one at each backward."""

    @staticmethod
    def forward(ctx, dtensor):
        ctx.mesh, ctx.placements = dtensor.device_mesh, dtensor.placements
        local = dtensor.to_local()
        return local.view_as(local)  # a new tensor: autograd marks the output, not the DTensor's own

    @staticmethod
    def backward(ctx, grad):
        spec = _spec(ctx.mesh, ctx.placements, grad.shape, grad.stride(), grad.dtype)
        return DTensor(grad, spec, requires_grad=grad.requires_grad)


class _FromLocal(torch.autograd.Function):
    """DTensor.from_local(local, spec.mesh, spec.placements) given its spec, made once per signature
    (`_spec`): from_local makes it anew at each call."""

    @staticmethod
    def forward(ctx, local, spec):
        ctx.spec = spec
        return DTensor(local.view_as(local), spec, requires_grad=local.requires_grad)

    @staticmethod
    def backward(ctx, grad):
        if grad.placements != ctx.spec.placements:
            grad = grad.redistribute(ctx.spec.mesh, ctx.spec.placements)
        return grad.to_local(), None


@functools.lru_cache(maxsize=1024)
def _spec(mesh, placements: tuple, shape: torch.Size, stride: tuple[int, ...], dtype: torch.dtype):
    """The DTensorSpec that DTensor.from_local gives a local tensor of `shape`, `stride` and `dtype`
    placed by `placements` on `mesh`."""
    return DTensor.from_local(torch.empty_strided(shape, stride, dtype=dtype, device="meta"), mesh, placements)._spec


class _Argument(NamedTuple):
    """What a plan reads of an argument: its shape, and a DTensor's mesh and placements (None for
    a plain tensor)."""

    shape: tuple[int, ...]
    device_mesh: object
    placements: tuple | None


def sharding(names: tuple[str, ...], arrays: tuple, rule: Callable[..., Axes], layout: str | None = None,
             hint: str = "") -> Sharding | None:
    """The sharding of a public function's `arrays` (by argument `names`; the rule's arrays, in
    order), checked against `rule` (of `layout`); None when none is a DTensor. Raises ValueError,
    naming the argument, for a placement the op cannot run shard-local (with `hint`, what to do
    instead): a sharded dim the rule does not allow, two axes on one mesh dim, a partial tensor,
    meshes that differ, or a dim that does not split evenly."""
    if not any(is_dtensor(array) for array in arrays):
        return None
    arguments = tuple(None if array is None else _Argument(tuple(array.shape), array.device_mesh, tuple(array.placements))
                      if is_dtensor(array) else _Argument(tuple(array.shape), None, None) for array in arrays)
    return cached(_plan)(names, arguments, rule, layout, hint)


@functools.lru_cache(maxsize=1024)
def _plan(names: tuple[str, ...], arguments: tuple, rule: Callable[..., Axes], layout: str | None,
          hint: str) -> Sharding:
    """`sharding`'s plan of `arguments` (`_Argument`s, None where not given)."""
    dtensors = [(name, argument) for name, argument in zip(names, arguments)
                if argument is not None and argument.placements is not None]
    axes = rule(arguments, layout)
    dims_of = dict(zip(names, axes.inputs))
    mesh = dtensors[0][1].device_mesh
    mesh_axes = []
    for mesh_dim in range(mesh.ndim):
        chosen = None
        for name, argument in dtensors:
            if argument.device_mesh != mesh:
                raise ValueError(f"{name} lives on device mesh {argument.device_mesh}, {dtensors[0][0]} on {mesh}: "
                                 "trinix's ops take DTensors of one mesh")
            placement = argument.placements[mesh_dim]
            if placement.is_replicate():
                continue
            axis = next((axis for axis, dim in dims_of[name].items()
                         if placement.is_shard(dim)), None) if placement.is_shard() else None
            if axis is None:
                allowed = ", ".join(f"{axis} (dim {dim})" for axis, dim in dims_of[name].items())
                raise ValueError(f"{name} has placement {placement} on mesh dim {mesh_dim}: trinix shards {name} "
                                 f"of shape {argument.shape} " + (f"over {allowed} only (Shard or Replicate)"
                                                                 if allowed else "over no dim (Replicate it)")
                                 + hint)
            if chosen not in (None, axis):
                raise ValueError(f"{name} is sharded over {axis} on mesh dim {mesh_dim}, where another argument "
                                 f"is sharded over {chosen}: one mesh dim shards one axis")
            chosen = axis
        mesh_axes.append(chosen)

    def placements(dims: dict[str, int] | None) -> tuple | None:
        if dims is None:
            return None
        return tuple(Replicate() if axis is None or axis not in dims else Shard(dims[axis]) for axis in mesh_axes)

    inputs = tuple(map(placements, axes.inputs))
    for name, argument, placed in zip(names, arguments, inputs):
        if argument is not None:
            _check_even(name, argument.shape, placed, mesh)
    parts = tuple(() if argument is None or argument.placements is not None else _part(argument.shape, placed, mesh)
                  for argument, placed in zip(arguments, inputs))
    return Sharding(mesh, tuple(mesh_axes), inputs, tuple(map(placements, axes.outputs)), parts)


def _part(shape: tuple[int, ...], placements: tuple, mesh) -> tuple[tuple[int, int, int], ...]:
    """The narrowings (dim, start, length) that cut this rank's part out of a plain tensor of
    `shape` placed by `placements`: mesh dims in order, as DTensor splits."""
    coordinate = mesh.get_coordinate()
    shape, narrowings = list(shape), []
    for mesh_dim, placement in enumerate(placements):
        if placement.is_shard():
            length = shape[placement.dim] // mesh.size(mesh_dim)
            narrowings.append((placement.dim, coordinate[mesh_dim] * length, length))
            shape[placement.dim] = length
    return tuple(narrowings)


def _check_even(name: str, shape, placements, mesh) -> None:
    """A sharded dim must split evenly: the kernels of heads-sharded attention pair query heads
    with key heads by their local counts, and the outputs are rebuilt from equal shards."""
    shards = [1] * len(shape)
    for mesh_dim, placement in enumerate(placements):
        if placement.is_shard():
            shards[placement.dim] *= mesh.size(mesh_dim)
    for dim, count in enumerate(shards):
        if shape[dim] % count:
            raise ValueError(f"{name} of shape {tuple(shape)} is sharded over dim {dim} into {count} parts: "
                             f"its size {shape[dim]} must be a multiple of {count}")


def sharded_over(tensor, axis: str, layout: str) -> bool:
    """Whether `tensor` (in `layout`) is a DTensor sharded over `axis`."""
    if not is_dtensor(tensor) or not isinstance(layout, str):  # a layout the plan checks later
        return False
    dim = _SEQUENCE_DIMS.get(layout, {}).get(axis)
    return dim is not None and any(placement.is_shard(dim) for placement in tensor.placements)
