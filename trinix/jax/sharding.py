"""Sharding of trinix's kernel launches under jax.jit: one rule for every op.

A kernel launch (jax-triton's custom call, the interpreter's FFI call) is opaque to XLA's
partitioner, which would gather its inputs onto every device. `shard_local` wraps a launch in
`jax.experimental.custom_partitioning` with a sharding rule that names each dim of each operand
and result by a factor (einsum-like, e.g. q "b s h d" -> "b s h d"): the factors in `shardable`
(batch and heads) may be sharded, every other one is kept whole on each device. Each device then
runs the launch on its shard, planned again from the shard's shapes, and nothing is gathered.

The factor `sequence` (RoPE's sequence dim) may be sharded too: a shard's tokens then sit at
positions that start at `start`, the shard's index times its length, which the launch is given.
Head-sharded ALiBi needs nothing more: slopes (heads,) are split like the heads, so each shard
holds its heads' global slopes.
"""

import math
import re
from typing import Callable, Sequence

import jax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec as P

BATCH, HEADS = "b", "h"


def _words(dims: str) -> list[str]:
    """One operand's rule split by dim: "b s (h g) d" -> ["b", "s", "(h g)", "d"]."""
    return re.findall(r"\([^)]*\)|\S+", dims)


def _factors(word: str) -> list[str]:
    """The factors of one dim: "(h g)" -> ["h", "g"]."""
    return word.strip("()").split()


def _all_factors(dims: str) -> list[str]:
    return [factor for word in _words(dims) for factor in _factors(word)]


def shard_local(fn: Callable, arrays: Sequence[jax.Array | None], dims: Sequence[str | None],
                out_dims: Sequence[str], *, shardable: tuple[str, ...] = (BATCH, HEADS),
                sequence: str | None = None, summed: tuple[str, ...] = ()) -> tuple[jax.Array, ...]:
    """fn(*arrays), a tuple of arrays, run on each device's shard of `arrays` under jit.

    dims: each array's factors, one word per dim ("b s h d", "(h g)" for a dim that is two
    factors, major first), None for an absent array; out_dims: each result's. Factors outside
    `shardable` and `sequence` are replicated. With `sequence` sharded, fn also gets `start=`,
    the first position of the shard's tokens (an int32 scalar). summed: factors the op sums
    over; a result without one, where it is split, is summed over its shards (an all-reduce).
    """
    present = [d for d, array in zip(dims, arrays) if array is not None]
    # Shardy would shard a compound dim's factors over parts of a mesh axis, which
    # custom_partitioning cannot hand to `partition`: its rule names such a dim by one factor of
    # its own, free to be split; `partition` splits the dim along its major factor or not at all.
    rule = [" ".join("_".join(_factors(word)) for word in _words(d)) for d in (*present, *out_dims)]
    # In order of first appearance, as Shardy wants its special factors.
    factors = dict.fromkeys(word for d in rule for word in d.split())
    kept_whole = tuple(factor for factor in factors if factor not in (*shardable, sequence) and "_" not in factor)
    # custom_partitioning binds its function's signature: a partial's keywords would not bind.
    partitioned = custom_partitioning(lambda *arrays: fn(*arrays))

    def split(mesh, arg_shapes):
        """(sizes of the factors, their mesh axes, the sharding of a rule) for these operands."""
        sizes = {}
        for d, arg in zip(dims, arg_shapes):
            for word, size in zip(_words(d or ""), () if arg is None else arg.shape):
                sizes.setdefault(word, size)
        axes = _factor_axes(dims, arg_shapes, sizes, (*shardable, sequence), mesh)

        def sharding(d: str) -> NamedSharding:
            return NamedSharding(mesh, P(*(sum((axes.get(f, ()) for f in _factors(w)), ()) or None
                                           for w in _words(d))))

        return sizes, axes, sharding

    def infer_sharding_from_operands(mesh, arg_shapes, result_shape):  # GSPMD; Shardy reads the rule
        sharding = split(mesh, arg_shapes)[2]
        return tuple(sharding(d) for d in out_dims)

    def partition(mesh, arg_shapes, result_shape):
        sizes, axes, sharding = split(mesh, arg_shapes)

        def lower(*shards):
            if axes.get(sequence):
                shard_length = sizes[sequence] // math.prod(mesh.shape[a] for a in axes[sequence])
                results = fn(*shards, start=jax.lax.axis_index(axes[sequence]) * shard_length)
            else:
                results = fn(*shards)
            sums = [sum((axes.get(f, ()) for f in summed if f not in _all_factors(d)), ()) for d in out_dims]
            return tuple(jax.lax.psum(r, over) if over else r for r, over in zip(results, sums))

        return (mesh, lower, tuple(sharding(d) for d in out_dims),
                tuple(None if arg is None else sharding(d) for d, arg in zip(dims, arg_shapes)))

    partitioned.def_partition(partition, infer_sharding_from_operands,
                              sharding_rule=f"{', '.join(rule[:len(present)])} -> {', '.join(rule[len(present):])}",
                              need_replication_factors=kept_whole)
    # Inside shard_map the results vary over the manual axes the inputs vary over, which
    # custom_partitioning's results do not say, and shard_map's type check needs.
    varying = frozenset().union(*(_varying(array) for array in arrays if array is not None))
    return tuple(jax.lax.pcast(result, tuple(varying - _varying(result)), to="varying")
                 if varying - _varying(result) else result for result in partitioned(*arrays))


def _varying(x) -> frozenset:
    """The manual mesh axes x varies over inside shard_map (jax 0.8 names them aval.vma)."""
    aval = jax.typeof(x)
    return aval.vma if hasattr(aval, "vma") else aval.mat.varying


def _factor_axes(dims, arg_shapes, sizes: dict, shardable, mesh) -> dict[str, tuple[str, ...]]:
    """The mesh axes each shardable factor is split over: those of the first operand dim that
    carries it sharded, so that every operand is split alike (XLA slices the others locally).
    A split compound dim "(h g)" is split along its major factor h, if they divide it."""
    axes = {}
    for d, arg in zip(dims, arg_shapes):
        # An operand without a sharding (GSPMD may leave one undecided) splits nothing.
        for word, entry in zip(_words(d or ""), getattr(getattr(arg, "sharding", None), "spec", ())):
            factor = _factors(word)[0]
            entry = (entry,) if isinstance(entry, str) else tuple(entry or ())
            if entry and factor in shardable and factor not in axes \
                    and sizes[factor] % math.prod(mesh.shape[a] for a in entry) == 0:
                axes[factor] = entry
    return axes
