"""Flat layouts: a parameter pytree kept as one contiguous buffer per dtype.

A model with many small tensors spends its optimizer step at the jit boundary
(about 2 µs per array in or out on a CPU), not in arithmetic. Packing every
leaf of a dtype into one 1-D buffer turns a thousand arrays into one or two,
and the RMSprop step over those buffers is the same element-wise math: the
transform is simply applied to a tree whose leaves are the buffers.

Two ways to use it, from least to most speed:

1. :func:`flatten` wraps any transform: your params and grads stay trees, the
   state is kept flat (one buffer per dtype instead of one per leaf).
2. :class:`FlatLayout` keeps the parameters themselves flat across steps: pack
   once; inside the jitted step, unpack (free slicing), differentiate the loss
   with respect to the unpacked tree, pack the gradients, and run
   ``fx.rmsprop`` on the buffers. Every array crossing the jit boundary is then one per dtype.

Packing is dtype-preserving: a bfloat16 leaf goes to the ``"bfloat16"`` buffer,
never upcast. It concatenates arrays, so a leaf's sharding is not kept: use it
for parameters that live whole on one device (or are replicated).

Example:
  >>> import jax, jax.numpy as jnp, lucid_fx as fx
  >>> from lucid_fx._src.scale.flat import FlatLayout
  >>> params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3, jnp.bfloat16)}
  >>> layout = FlatLayout.of(params)
  >>> flat = layout.pack(params)
  >>> {k: (v.shape, str(v.dtype)) for k, v in flat.items()}
  {'bfloat16': ((3,), 'bfloat16'), 'float32': ((6,), 'float32')}
  >>> layout.unpack(flat)["w"].shape
  (2, 3)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lucid_fx._src.core import schema
from lucid_fx._src.core.base import GradientTransformation, OptState, Params, PyTree, Updates
from lucid_fx._src.core.layout import Layout

FlatParams = dict[str, jax.Array]  # dtype name -> 1-D buffer holding every leaf of that dtype


def _dtype_name(leaf: Any) -> str:
    return str(np.dtype(jnp.result_type(leaf)))


def _leaf_path(path: tuple[Any, ...]) -> str:
    return jax.tree_util.keystr(path) or "<root>"


class FlatLayout:
    """Where each leaf of a pytree lives in its dtype's flat buffer.

    Static (shapes, dtypes, tree structure, offsets; no array data), hashable
    and compared by value, so it can be closed over by, or passed as a static
    argument to, a jitted function. ``None`` leaves (frozen parameters) hold no
    slot and come back as ``None``; zero-size leaves hold an empty slot.

    Attributes:
      treedef: the structure of the tree.
      groups: ``dtype name -> Layout`` of that dtype's buffer.
      slots: for each leaf in tree order, ``(dtype name, index in its buffer)``.

    Example:
      >>> import jax, jax.numpy as jnp, lucid_fx as fx
      >>> from lucid_fx._src.scale.flat import FlatLayout
      >>> params = {"w": jnp.zeros((100, 3)), "b": jnp.zeros(3)}
      >>> x, y = jnp.ones((8, 100)), jnp.ones((8, 3))
      >>> def loss(p, x, y):
      ...     return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)
      >>> layout = FlatLayout.of(params)
      >>> flat = layout.pack(params)           # {"float32": Array of 303 floats}
      >>> tx = fx.rmsprop(lr=0.01)
      >>> state = tx.init(flat)                # v is one buffer as well
      >>> @jax.jit
      ... def train_step(flat, state, x, y):
      ...     # Differentiate the unpacked tree, then pack: linear in the leaf count
      ...     # (differentiating through the slices adds one full-size buffer per leaf).
      ...     grads = layout.pack(jax.grad(loss)(layout.unpack(flat), x, y))
      ...     updates, state = tx.update(grads, state, flat)
      ...     return fx.apply_updates(flat, updates), state
      >>> for _ in range(100):
      ...     flat, state = train_step(flat, state, x, y)
      >>> bool(loss(layout.unpack(flat), x, y) < 0.1 * loss(params, x, y))
      True
    """

    __slots__ = ("_hash", "groups", "slots", "treedef")

    def __init__(
        self,
        treedef: jax.tree_util.PyTreeDef,
        groups: dict[str, Layout],
        slots: tuple[tuple[str, int], ...],
    ) -> None:
        if treedef.num_leaves != len(slots):
            raise ValueError(
                f"a FlatLayout needs one slot per leaf: the tree has {treedef.num_leaves} "
                f"leaves, {len(slots)} slots were given"
            )
        self.treedef = treedef
        self.groups = dict(sorted(groups.items()))
        self.slots = tuple(slots)
        self._hash = hash((treedef, tuple(self.groups.items()), self.slots))

    @classmethod
    def of(cls, tree: PyTree) -> FlatLayout:
        """The layout of ``tree``'s leaves (arrays, or anything with a shape and dtype).

        Leaves are grouped by dtype, in tree order within each group.
        """
        leaves, treedef = jax.tree.flatten(tree)
        shapes: dict[str, list[tuple[int, ...]]] = {}
        slots = []
        for leaf in leaves:
            name = _dtype_name(leaf)
            shapes.setdefault(name, [])
            slots.append((name, len(shapes[name])))
            shapes[name].append(np.shape(leaf))
        groups = {name: Layout.flat(group, [name] * len(group)) for name, group in shapes.items()}
        return cls(treedef, groups, tuple(slots))

    @property
    def sizes(self) -> dict[str, int]:
        """Number of elements of each dtype's buffer."""
        return {name: group.total for name, group in self.groups.items()}

    def pack(self, tree: PyTree) -> FlatParams:
        """The leaves of ``tree`` as ``{dtype name: 1-D buffer}`` (traceable).

        Raises:
          ValueError: ``tree`` differs from the layout in structure, a leaf's
            shape or a leaf's dtype (nothing is cast silently); the message
            names the first offending path.
        """
        leaves = self._leaves_of(tree)
        members: dict[str, list[Any]] = {name: [] for name in self.groups}
        for (name, _), leaf in zip(self.slots, leaves):
            members[name].append(leaf)
        return {name: group.pack(members[name]) for name, group in self.groups.items()}

    def unpack(self, flat: FlatParams) -> PyTree:
        """The tree whose leaves are cut from ``flat``'s buffers (traceable; free under jit).

        Leaves keep their buffer's dtype, so the parameters' layout unpacks
        their optimizer state too: a float32 ``square_avg`` kept under the
        ``"bfloat16"`` key (``state_dtype=jnp.float32``), or the real v of
        complex parameters.

        Raises:
          ValueError: ``flat`` lacks a dtype's buffer, has an extra one, or a
            buffer has the wrong shape.
        """
        self._check_buffers(flat)
        pieces = {name: group.unpack(jnp.asarray(flat[name])) for name, group in self.groups.items()}
        return self.treedef.unflatten([pieces[name][index] for name, index in self.slots])

    def _leaves_of(self, tree: PyTree) -> list[Any]:
        paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
        if treedef != self.treedef:
            raise ValueError(
                f"FlatLayout.pack: the tree's structure differs from the layout's "
                f"(expected {self.treedef}, got {treedef})"
            )
        for (path, leaf), (name, index) in zip(paths_leaves, self.slots):
            shape = self.groups[name].shapes[index]
            if np.shape(leaf) != shape or _dtype_name(leaf) != name:
                raise ValueError(
                    f"FlatLayout.pack: {_leaf_path(path)} is {np.shape(leaf)} "
                    f"{_dtype_name(leaf)}, the layout holds {shape} {name} there"
                )
        return [leaf for _, leaf in paths_leaves]

    def _check_buffers(self, flat: Any) -> None:
        if not isinstance(flat, dict) or set(flat) != set(self.groups):
            keys = sorted(flat) if isinstance(flat, dict) else type(flat).__name__
            raise ValueError(
                f"FlatLayout.unpack expects a dict with one buffer per dtype, "
                f"{sorted(self.groups)}; got {keys}"
            )
        for name, group in self.groups.items():
            buffer = flat[name]
            if np.shape(buffer) != (group.total,):
                raise ValueError(
                    f"FlatLayout.unpack: buffer {name!r} has shape {np.shape(buffer)}, "
                    f"expected ({group.total},)"
                )

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (
            isinstance(other, FlatLayout)
            and self._hash == other._hash
            and (self.treedef, self.groups, self.slots)
            == (other.treedef, other.groups, other.slots)
        )

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}: {size}" for name, size in self.sizes.items())
        return f"FlatLayout({len(self.slots)} leaves -> {{{sizes}}})"


def flatten(inner: GradientTransformation) -> GradientTransformation:
    """Runs ``inner`` on one flat buffer per dtype, keeping its state flat.

    ``init`` packs the parameters with :class:`FlatLayout` and returns
    ``inner.init`` of the packed buffers; ``update`` packs the gradients (and
    params, when given), calls ``inner.update`` on them and unpacks the updates
    into the gradients' tree. The math is ``inner``'s, unchanged: an element-wise
    transform such as :func:`lucid_fx.rmsprop` gives the same numbers as on the
    tree. A lucid_fx transform whose math needs shapes (Muon, Adafactor) is refused
    (``ValueError``); other transforms that look across a leaf (per-leaf norms)
    would see the buffers instead; global ones (``clip_by_global_norm``) are
    unaffected.

    Unlike ``optax.flatten``, nothing is upcast: each dtype keeps its buffer.
    Under ``jax.jit`` the state is one array per dtype in and out, which removes
    most of the per-array cost of a many-tensor model; keeping the parameters
    flat too (see :class:`FlatLayout`) removes the rest.

    Args:
      inner: the transform to run on the flat buffers.

    Returns:
      A :class:`GradientTransformation` over the original trees; its state is
      ``inner``'s state over ``{dtype name: buffer}``.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> from lucid_fx._src.scale.flat import flatten
      >>> params = [jnp.ones(2), jnp.ones((2, 2))]
      >>> tx = flatten(fx.rmsprop(lr=0.1))
      >>> state = tx.init(params)
      >>> state.square_avg["float32"].shape
      (6,)
      >>> updates, state = tx.update([jnp.ones(2), jnp.ones((2, 2))], state, params)
      >>> [round(float(u[0]), 3) for u in (updates[0], updates[1][0])]
      [-1.0, -1.0]
    """

    def init(params: Params) -> OptState:
        flat = FlatLayout.of(params).pack(params)
        shaped = schema.shape_aware_states(jax.eval_shape(inner.init, flat))
        if shaped:
            raise ValueError(
                f"flatten packs every leaf into one vector per dtype, which only element-wise "
                f"math allows; {shaped[0].__name__}'s math needs each array's shape: use the "
                f"transform on the tree as it is"
            )
        return inner.init(flat)

    def update(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        layout = FlatLayout.of(updates)
        flat_params = None
        if params is not None:
            try:
                flat_params = layout.pack(params)
            except ValueError as error:
                raise ValueError(
                    f"flatten: params must have their gradients' structure, shapes and "
                    f"dtypes; {error}"
                ) from None
        flat_updates, state = inner.update(layout.pack(updates), state, flat_params)
        return layout.unpack(flat_updates), state

    return GradientTransformation(init, update)
