"""The bridge from JAX's functional autodiff to torch-style stateful training.

``Parameter`` (defined in :mod:`lucid_fx._src.stateful.parameter`, re-exported here) is a
mutable holder (``.value``, ``.grad``); ``parameters`` lists the Parameters of
any pytree; ``backward`` is the JAX spelling of ``loss.backward()``: it
differentiates a loss function of the tree and accumulates into ``.grad``.

Example:
  >>> import jax.numpy as jnp, lucid_fx as fx
  >>> model = {"w": fx.Parameter(jnp.array([1.0, 2.0]))}
  >>> loss = fx.backward(lambda m: jnp.sum(m["w"] ** 2), model)
  >>> float(loss), model["w"].grad.tolist()
  (5.0, [2.0, 4.0])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lucid_fx._src.core.base import PyTree
from lucid_fx._src.core.layout import Layout
from lucid_fx._src.core.naming import dotted_name
from lucid_fx._src.core.placement import shard_like
from lucid_fx._src.stateful.parameter import Parameter
from lucid_fx._src.stateful.storage import ParamPack, held_by
from lucid_fx._src.stateful.tracing import check_eager

# What a loss function reads by mistake when it treats its input as Parameters.
_PARAMETER_ATTRIBUTES = frozenset({"value", "grad"})


def _is_parameter(x: Any) -> bool:
    return isinstance(x, Parameter)


def parameters(tree: PyTree) -> list[Parameter]:
    """The Parameters of ``tree`` in pytree order (each once, first occurrence kept).

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> model = {"b": fx.Parameter(jnp.zeros(2)), "a": [fx.Parameter(jnp.ones(3)), 7]}
      >>> [p.shape for p in fx.parameters(model)]
      [(3,), (2,)]
    """
    seen: dict[int, Parameter] = {}
    for leaf in jax.tree.leaves(tree, is_leaf=_is_parameter):
        if isinstance(leaf, Parameter):
            seen.setdefault(id(leaf), leaf)
    return list(seen.values())


def named_parameters(tree: PyTree) -> list[tuple[str, Parameter]]:
    """``(name, Parameter)`` for the Parameters of ``tree``, in :func:`parameters`' order.

    Names are dotted paths as torch writes them (``{"fc1": {"weight": p}}`` ->
    ``"fc1.weight"``, a list index -> ``"0"``; see :func:`lucid_fx._src.core.naming.dotted_name`).
    Give them to an optimizer, as torch >= 2.6 takes ``model.named_parameters()``:
    its state dicts then carry ``param_names`` and load by name, whatever the order.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> model = {"fc1": {"weight": fx.Parameter(jnp.zeros((2, 3))), "bias": fx.Parameter(jnp.zeros(3))}}
      >>> [name for name, _ in fx.named_parameters(model)]
      ['fc1.bias', 'fc1.weight']
    """
    seen: dict[int, tuple[str, Parameter]] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_parameter)[0]:
        if isinstance(leaf, Parameter):
            seen.setdefault(id(leaf), (dotted_name(path), leaf))
    return list(seen.values())


def _descent_grad(g: jax.Array) -> jax.Array:
    # jax.grad of a real loss w.r.t. a complex input is the conjugate of the
    # steepest-ascent direction; torch's .grad (which the math expects) is not.
    return jnp.conj(g) if jnp.iscomplexobj(g) else g


@jax.jit(static_argnums=(0, 1, 2, 3, 10, 11), donate_argnums=(9,))
def _value_and_accumulated_grad(
    loss_fn: Callable[..., jax.Array],
    treedef: Any,
    layout: tuple[tuple[str, Any], ...],
    pack_layouts: tuple[Layout, ...],
    values: list[jax.Array],
    buffers: list[jax.Array],
    starts: list[tuple[jax.Array, ...]],
    arrays: dict[int, Any],
    old_grads: list[jax.Array | None],
    old_pack_grads: list[jax.Array | None],
    args_def: Any,
    static_args: tuple[tuple[int, Any], ...],
    dynamic_args: list[Any],
) -> tuple[jax.Array, list[jax.Array], list[jax.Array]]:
    """Loss and old gradients plus new ones, compiled once per function and shapes.

    ``layout[i]`` says what leaf ``i`` of the tree is: ``("param", k)`` the k-th
    differentiated value (tied Parameters share k), ``("packed", (j, slot))`` a
    slot of the j-th packed buffer (cut at ``starts[j]``, its offsets as traced
    scalars: :meth:`~lucid_fx._src.stateful.storage.ParamPack.starts`), ``("array", None)`` a constant in
    ``arrays[i]``, ``("static", x)`` the Python value x. ``(args, kwargs)`` are
    rebuilt from ``args_def`` with ``static_args`` at their positions. Packed Parameters are
    differentiated through their whole buffer, so their gradient comes back as
    one buffer too.
    """

    def loss_of(vals: list[jax.Array], views: list[list[jax.Array]]) -> jax.Array:
        leaves = [
            vals[x] if kind == "param"
            else views[x[0]][x[1]] if kind == "packed"
            else arrays[i] if kind == "array"
            else x
            for i, (kind, x) in enumerate(layout)
        ]
        return loss_fn(jax.tree.unflatten(treedef, leaves), *args, **kwargs)

    static = dict(static_args)
    dynamic = iter(dynamic_args)
    args, kwargs = jax.tree.unflatten(
        args_def, [static[i] if i in static else next(dynamic) for i in range(args_def.num_leaves)]
    )

    # Differentiate w.r.t. the unpacked views and concatenate their gradients:
    # differentiating through the slices would add one full-size buffer per slice.
    views = [pl.unpack(b, s) for b, pl, s in zip(buffers, pack_layouts, starts)]
    loss, (grads, view_grads) = jax.value_and_grad(loss_of, argnums=(0, 1))(values, views)
    pack_grads = [pl.pack(g) for g, pl in zip(view_grads, pack_layouts)]

    def accumulate(g: jax.Array, old: jax.Array | None) -> jax.Array:
        return _descent_grad(g) if old is None else old + _descent_grad(g)

    # A gradient is laid out like its parameter: with a batch split over a mesh,
    # it would otherwise come out whole (replicated) on every device.
    return (
        loss,
        [shard_like(v, accumulate(g, old)) for v, g, old in zip(values, grads, old_grads)],
        [shard_like(b, accumulate(g, old)) for b, g, old in zip(buffers, pack_grads, old_pack_grads)],
    )


def backward(loss_fn: Callable[..., jax.Array], tree: PyTree, *args: Any, **kwargs: Any) -> jax.Array:
    """Returns ``loss_fn(tree, *args, **kwargs)`` and adds its gradient into each ``.grad``.

    Every Parameter of ``tree`` is replaced by its array before ``loss_fn`` sees
    it (a Parameter used in several places gets the sum of their gradients);
    other array leaves are passed as constants, other leaves as static Python
    values (they must be hashable). Gradients accumulate across calls, as
    torch's ``loss.backward()`` does, until ``optimizer.zero_grad()``. The loss
    must be a real scalar. Complex Parameters get torch's convention: ``.grad``
    points uphill.

    Compiled once per ``loss_fn`` and shapes/dtypes/structure: pass data as
    arguments to one ``loss_fn`` defined once (a new lambda per call compiles
    every call). In ``args``/``kwargs``, Python bools and strings are static
    (``training=True`` may drive Python control flow); numbers and arrays are
    traced, so a new value does not recompile.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> p = fx.Parameter(jnp.array(3.0))
      >>> _ = fx.backward(lambda m, k: k * m ** 2, p, 2.0)
      >>> _ = fx.backward(lambda m, k: k * m ** 2, p, 2.0)
      >>> float(p.grad)   # 2 * (2 * 2 * 3): accumulated
      24.0
    """
    check_eager("fx.backward")
    leaves, treedef = jax.tree.flatten(tree, is_leaf=_is_parameter)
    plain: list[Parameter] = []
    plain_index: dict[int, int] = {}
    packs: list[ParamPack] = []
    pack_index: dict[int, int] = {}
    arrays: dict[int, Any] = {}
    layout: list[tuple[str, Any]] = []
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, Parameter):
            held = held_by(leaf)
            if held is not None:
                pack, slot = held
                j = pack_index.setdefault(id(pack), len(packs))
                if j == len(packs):
                    packs.append(pack)
                layout.append(("packed", (j, slot)))
                continue
            k = plain_index.setdefault(id(leaf), len(plain))
            if k == len(plain):
                if not jnp.issubdtype(leaf.dtype, jnp.inexact):
                    raise TypeError(
                        f"backward: {leaf!r} is not floating point; only float or complex "
                        f"Parameters have gradients"
                    )
                plain.append(leaf)
            layout.append(("param", k))
        elif isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
            arrays[i] = leaf
            layout.append(("array", None))
        else:
            layout.append(("static", leaf))
    if not plain and not packs:
        raise ValueError("backward: the tree holds no Parameter to differentiate")
    arg_leaves, args_def = jax.tree.flatten((args, kwargs))
    static_args = tuple(
        (i, x) for i, x in enumerate(arg_leaves) if isinstance(x, (bool, np.bool_, str))
    )
    static_positions = {i for i, _ in static_args}
    dynamic_args = [x for i, x in enumerate(arg_leaves) if i not in static_positions]
    try:
        loss, grads, pack_grads = _value_and_accumulated_grad(
            loss_fn,
            treedef,
            tuple(layout),
            tuple(holder.layout for holder in packs),
            [p.value for p in plain],
            [holder.buffer for holder in packs],
            [holder.starts() for holder in packs],
            arrays,
            [p.grad for p in plain],
            [holder.folded_grad() for holder in packs],
            args_def,
            static_args,
            dynamic_args,
        )
    except AttributeError as error:
        if error.name in _PARAMETER_ATTRIBUTES and isinstance(error.obj, jax.core.Tracer):
            raise AttributeError(
                f"backward: loss_fn read .{error.name} of an array: loss_fn receives the tree "
                f"with every Parameter replaced by its plain array, so write m['w'], "
                f"not m['w'].{error.name}"
            ) from error
        raise
    for p, g in zip(plain, grads):
        p.grad = g
    used = [np.zeros(len(holder.layout), bool) for holder in packs]
    for kind, x in layout:
        if kind == "packed":
            used[x[0]][x[1]] = True
    for holder, g, slots in zip(packs, pack_grads, used):
        holder.set_grad_buffer(g, slots)
    return loss
