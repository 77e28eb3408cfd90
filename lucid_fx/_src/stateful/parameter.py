"""``Parameter``, a mutable holder of one array, and who holds its storage.

A Parameter holds its value and gradient as its own arrays until an optimizer
takes it: then both live in a slot of a packed buffer (:class:`~lucid_fx._src.stateful.storage.ParamPack`)
and ``.value`` / ``.grad`` read and write through it. Ownership moves by one
protocol, and only this module assigns a Parameter's attributes:

- ``ParamPack(params)`` adopts them: it calls ``p._move_into(pack, slot)``;
- ``pack.release(p)`` gives ``p`` its arrays back: it calls ``p._move_out()``;
- everyone else reads :attr:`Parameter.storage`: the :class:`PackedSlot` that
  holds the Parameter, or ``None`` while it holds its own arrays.

Example:
  >>> import jax.numpy as jnp, lucid_fx as fx
  >>> p = fx.Parameter(jnp.zeros(3))
  >>> p.storage is None
  True
  >>> optimizer = fx.SGD([p], lr=0.1)
  >>> p.storage.slot, p.storage.pack.params == [p]
  (0, True)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np

from lucid_fx._src.stateful.tracing import check_eager

if TYPE_CHECKING:
    from lucid_fx._src.stateful.storage import ParamPack


class PackedSlot(NamedTuple):
    """Where a Parameter held by an optimizer lives: slot ``slot`` of ``pack``."""

    pack: ParamPack
    slot: int


class Parameter:
    """A mutable holder of one array: ``.value`` (a ``jax.Array``) and ``.grad``.

    The value is copied at construction, so the optimizer may update it in place
    (donate its buffer) without invalidating an array the caller still holds.
    Once an optimizer holds the Parameter, its value and gradient may live in
    the optimizer's packed storage (:mod:`lucid_fx._src.stateful.storage`); reading and
    writing ``.value`` and ``.grad`` work the same, but the shape and dtype of
    the value are then fixed. Parameters compare and hash by identity.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> p = fx.Parameter(jnp.zeros((2, 3)))
      >>> p, p.grad is None
      (Parameter(shape=(2, 3), dtype=float32), True)
    """

    __slots__ = ("__weakref__", "_grad", "_storage", "_value")

    def __init__(self, value: Any) -> None:
        if isinstance(value, jax.core.Tracer):
            check_eager("Parameter(...)", value)
        try:
            value = jnp.array(value, copy=True)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"Parameter needs an array of numbers, got {type(value).__name__}: {error}"
            ) from None
        self._value: jax.Array | None = value
        self._grad: jax.Array | None = None
        self._storage: PackedSlot | None = None

    @property
    def storage(self) -> PackedSlot | None:
        """The pack and slot holding this Parameter, or ``None`` while it holds its own arrays."""
        return self._storage

    def _move_into(self, pack: ParamPack, slot: int) -> None:
        """Called by ``ParamPack`` only: from now on ``pack`` holds value and gradient.

        The pack already holds the value (it read ``.value`` to build its buffer);
        a gradient set before moves into the pack.
        """
        grad = self._grad
        self._storage, self._value, self._grad = PackedSlot(pack, slot), None, None
        if grad is not None:
            pack.set_grad(slot, grad)

    def _move_out(self) -> None:
        """Called by ``ParamPack.release`` only: value and gradient become own arrays again."""
        value, grad = self.value, self.grad
        self._storage, self._value, self._grad = None, value, grad

    @property
    def value(self) -> jax.Array:
        if self._storage is not None:
            return self._storage.pack.value_of(self._storage.slot)
        return cast(jax.Array, self._value)  # set in __init__; None only while packed

    @value.setter
    def value(self, value: Any) -> None:
        check_eager("Parameter.value = ...", value)
        if self._storage is None:
            # A copy, as in __init__: on CPU, jnp.asarray may alias a NumPy array's
            # memory, which the caller can still write to (or an optimizer donate).
            self._value = jnp.array(value, copy=True)
        else:
            self._storage.pack.set_value(self._storage.slot, value)

    @property
    def grad(self) -> jax.Array | None:
        if self._storage is None:
            return self._grad
        return self._storage.pack.grad_of(self._storage.slot)

    @grad.setter
    def grad(self, grad: jax.Array | None) -> None:
        check_eager("Parameter.grad = ...", grad)
        if self._storage is None:
            self._grad = grad
        else:
            self._storage.pack.set_grad(self._storage.slot, grad)

    @property
    def shape(self) -> tuple[int, ...]:
        if self._storage is None:
            return tuple(self.value.shape)
        return self._storage.pack.layout.shapes[self._storage.slot]

    @property
    def dtype(self) -> np.dtype:
        return self.value.dtype if self._storage is None else self._storage.pack.layout.dtype

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"
