"""Optimizer state on many devices and hosts: it follows its parameters, or ZeRO-1 splits it.

The public face is :mod:`lucid_fx.sharding`, which documents it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from lucid_fx._src.core import schema
from lucid_fx._src.core.base import GradientTransformation, OptState, Params, PyTree, Updates
from lucid_fx._src.core.placement import bytes_per_device, shard_like, to_host, zeros_like_param

# The placement helpers are documented here, with the tools that build on them.
__all__ = [
    "bytes_per_device",
    "shard_like",
    "split_across",
    "split_sharding",
    "to_host",
    "zero1",
    "zeros_like_param",
]


def _spec_for(shape: tuple[int, ...], axis: str, size: int) -> PartitionSpec:
    """``axis`` on the first dimension that ``size`` divides; replicated if none does."""
    for dim, length in enumerate(shape):
        if length % size == 0 and length >= size:
            return PartitionSpec(*([None] * dim), axis)
    return PartitionSpec()


def _check_axis(mesh: Mesh, axis: str) -> None:
    if axis not in mesh.shape:
        raise ValueError(
            f"mesh has axes {tuple(mesh.shape)}, not {axis!r}; pass the name of the "
            f"axis to split over, e.g. axis={next(iter(mesh.shape))!r}"
        )


def split_sharding(tree: PyTree, mesh: Mesh, axis: str = "data") -> PyTree:
    """A ``NamedSharding`` per leaf that splits it N ways over the mesh axis ``axis``.

    Each leaf is split along its first dimension that the axis size N divides,
    and replicated over the mesh's other axes. Leaves with no such dimension
    (a step count, a bias of 10 elements on 8 devices) stay replicated: they
    are small, and an uneven split would cost padding. This is the placement
    :func:`zero1` gives optimizer state, and a simple FSDP placement for
    parameters (with the batch split over the same axis).

    Args:
      tree: a pytree of arrays (or ``jax.ShapeDtypeStruct``); only shapes are read.
      mesh: the device mesh.
      axis: the mesh axis to split over (default ``"data"``).

    Returns:
      A pytree of ``NamedSharding`` with ``tree``'s structure.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from lucid_fx._src.scale.sharding import split_sharding
      >>> mesh = jax.make_mesh((1,), ("data",))
      >>> split_sharding({"w": jnp.zeros((4, 3)), "n": jnp.zeros(())}, mesh)["w"].spec
      P('data',)
    """
    _check_axis(mesh, axis)
    size = mesh.shape[axis]
    return jax.tree.map(lambda x: NamedSharding(mesh, _spec_for(jnp.shape(x), axis, size)), tree)


def _constrain(x: jax.Array, sharding: NamedSharding) -> jax.Array:
    """Places ``x`` with ``sharding``, eagerly or under jit, for Auto and Explicit axes."""
    names = [n for entry in sharding.spec if entry is not None
             for n in (entry if isinstance(entry, tuple) else (entry,))]
    types = dict(zip(sharding.mesh.axis_names, sharding.mesh.axis_types))
    used = [types[n] for n in names] or list(sharding.mesh.axis_types)
    # Explicit axes are part of the array's type: only reshard may change them.
    if AxisType.Explicit in used:
        return jax.sharding.reshard(x, sharding)
    return jax.lax.with_sharding_constraint(x, sharding)


def split_across(tree: PyTree, mesh: Mesh, axis: str = "data") -> PyTree:
    """Returns ``tree`` placed as :func:`split_sharding` says: 1/N of each leaf per device.

    Works eagerly (a ``device_put``) and under ``jax.jit`` (a sharding constraint),
    on meshes with ``Auto`` or ``Explicit`` axes.

    Example:
      >>> import jax, jax.numpy as jnp, lucid_fx as fx
      >>> from lucid_fx._src.scale.sharding import split_across
      >>> mesh = jax.make_mesh((1,), ("data",))
      >>> state = split_across(fx.rmsprop().init({"w": jnp.ones((4, 3))}), mesh)
      >>> state.square_avg["w"].sharding.spec
      P('data', None)
    """
    return jax.tree.map(_constrain, tree, split_sharding(tree, mesh, axis))


def _check_replicated(params: Params) -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        concrete = isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer)
        if concrete and not leaf.sharding.is_fully_replicated:
            raise ValueError(
                f"zero1 shards the state of replicated (data-parallel) parameters, but "
                f"{jax.tree_util.keystr(path) or 'the parameter'} is already sharded "
                f"({leaf.sharding}); its state follows it without zero1: use the "
                f"transform directly"
            )


def _check_elementwise(what: str, state: OptState) -> None:
    """Raises ``ValueError`` when ``state`` holds a lucid_fx state whose math needs shapes."""
    shaped = schema.shape_aware_states(state)
    if shaped:
        raise ValueError(
            f"{what}; {shaped[0].__name__}'s math needs each array whole (its Newton–Schulz "
            f"or row and column factors see the matrix): shard the parameters instead "
            f"(lucid_fx.sharding.split_across), and the state follows them"
        )


def zero1(tx: GradientTransformation, mesh: Mesh, axis: str = "data") -> GradientTransformation:
    """ZeRO stage 1: ``tx`` with its state split over ``axis``, for replicated parameters.

    In data-parallel training every device holds all parameters and, with a plain
    transform, all of the optimizer state too. ``zero1(tx, mesh)`` keeps each
    state leaf split over the N devices of ``axis`` (see :func:`split_sharding`),
    so each device holds 1/N of it. Per step, each device slices its part of the
    (already averaged) gradient, runs ``tx`` on that slice alone, and the updates
    are all-gathered back to every device::

        g_k  = g[slice k]                    (local: no communication)
        u_k, state_k = tx.update(g_k, state_k, θ[slice k])
        u    = all_gather(u_k)               (replicated, like θ)

    The numbers are those of ``tx`` on one device; only placement changes. Meant
    for parameters replicated over the mesh: a parameter that is already sharded
    (FSDP, tensor parallelism) needs no wrapper, its state follows it, and
    passing one eagerly raises ``ValueError``.

    Args:
      tx: any transform with the optax protocol (lucid_fx's or optax's).
      mesh: the device mesh.
      axis: the data-parallel mesh axis to split the state over (default ``"data"``).

    Returns:
      A :class:`GradientTransformation` with ``tx``'s state structure.

    Example:
      >>> import jax, jax.numpy as jnp, lucid_fx as fx
      >>> from lucid_fx._src.scale.sharding import zero1
      >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
      >>> tx = zero1(fx.rmsprop(lr=0.01), mesh)
      >>> loss = lambda p: jnp.sum((p["w"] - 1.0) ** 2)
      >>> with jax.set_mesh(mesh):  # JAX's context for meshes with Explicit axes
      ...     params = {"w": jnp.zeros(8)}
      ...     state = tx.init(params)
      ...     for _ in range(20):
      ...         updates, state = tx.update(jax.grad(loss)(params), state, params)
      ...         params = fx.apply_updates(params, updates)
      >>> state.square_avg["w"].sharding.spec, round(float(loss(params)), 2)
      (P('data',), 1.08)
    """
    _check_axis(mesh, axis)
    replicated = NamedSharding(mesh, PartitionSpec())

    def split(tree: PyTree) -> PyTree:
        return None if tree is None else split_across(tree, mesh, axis)

    def init(params: Params) -> OptState:
        _check_replicated(params)
        _check_elementwise("zero1 splits each state array over the mesh and updates each "
                           "device's slice alone, which only element-wise math allows",
                           jax.eval_shape(tx.init, params))
        # Compiled with the split layout as its output, so the full, replicated state
        # is never built, not even for a moment.
        layout = split_sharding(jax.eval_shape(tx.init, params), mesh, axis)
        return jax.jit(tx.init, out_shardings=layout)(params)

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        # Slicing the replicated gradient first makes tx's arithmetic run on 1/N of
        # the elements per device, instead of on all of them before a final slice.
        new_updates, new_state = tx.update(split(updates), state, split(params))
        gathered = jax.tree.map(lambda u: _constrain(u, replicated), new_updates)
        return gathered, split(new_state)

    return GradientTransformation(init, update)
