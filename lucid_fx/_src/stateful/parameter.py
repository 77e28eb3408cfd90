"""``Parameter``, a mutable holder of one array, and who holds its storage.

A Parameter holds its value and gradient as its own arrays until an optimizer
takes it: then both live in a slot of a storage (the optimizer's packed
buffer, :class:`~lucid_fx._src.stateful.storage.ParamPack`) and ``.value`` /
``.grad`` read and write through it. Ownership moves by one protocol, and only
this module assigns a Parameter's attributes:

- a storage adopts a Parameter with ``p.move_into(storage, slot)``;
- it gives the Parameter its arrays back with ``p.move_out()``;
- everyone else reads :attr:`Parameter.storage`: the :class:`StorageSlot` that
  holds the Parameter, or ``None`` while it holds its own arrays.

A storage is anything with the methods of :class:`Storage`; this module does not
know packing.

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

from typing import Any, NamedTuple, Protocol, cast

import jax
import numpy as np

from lucid_fx._src.core.placement import copy_array
from lucid_fx._src.stateful.tracing import check_eager


class Storage(Protocol):
    """What holds the values and gradients of Parameters, one slot each."""

    params: list[Parameter]

    def value_of(self, slot: int) -> jax.Array: ...
    def set_value(self, slot: int, value: Any) -> None: ...
    def grad_of(self, slot: int) -> jax.Array | None: ...
    def set_grad(self, slot: int, grad: jax.Array | None) -> None: ...
    def shape_of(self, slot: int) -> tuple[int, ...]: ...
    def dtype_of(self, slot: int) -> np.dtype: ...
    def release(self, p: Parameter) -> None: ...


class StorageSlot(NamedTuple):
    """Where a Parameter held by an optimizer lives: slot ``slot`` of ``pack``."""

    pack: Storage
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
            value = copy_array(value)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"Parameter needs an array of numbers, got {type(value).__name__}: {error}"
            ) from None
        self._value: jax.Array | None = value
        self._grad: jax.Array | None = None
        self._storage: StorageSlot | None = None

    @property
    def storage(self) -> StorageSlot | None:
        """The pack and slot holding this Parameter, or ``None`` while it holds its own arrays."""
        return self._storage

    def move_into(self, storage: Storage, slot: int) -> None:
        """For a storage adopting this Parameter: from now on ``storage`` holds its value
        and gradient, in ``slot``. The storage already holds the value (it read
        ``.value`` to build its buffer); a gradient set before moves into it."""
        grad = self._grad
        self._storage, self._value, self._grad = StorageSlot(storage, slot), None, None
        if grad is not None:
            storage.set_grad(slot, grad)

    def move_out(self) -> None:
        """For the storage releasing this Parameter: its value and gradient become its
        own arrays again."""
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
            # A copy, as in __init__: the caller may still write to (or donate) its array.
            self._value = copy_array(value)
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
        return self._storage.pack.shape_of(self._storage.slot)

    @property
    def dtype(self) -> np.dtype:
        if self._storage is None:
            return self.value.dtype
        return self._storage.pack.dtype_of(self._storage.slot)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"
