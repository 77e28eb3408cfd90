"""The gradient-transformation protocol, its type aliases and the combinators.

A transform is a pair of pure functions, ``init(params) -> state`` and
``update(updates, state, params=None) -> (updates, state)``: the protocol optax
defines, so lucid_fx transforms run inside optax's combinators and optax's
transforms run inside ours.

Example:
  >>> import jax.numpy as jnp
  >>> import lucid_fx as fx
  >>> tx = fx.chain(fx.clip_by_global_norm(1.0), fx.rmsprop(lr=0.1))
  >>> params = {"w": jnp.array([1.0, -2.0])}
  >>> state = tx.init(params)
  >>> updates, state = tx.update({"w": jnp.array([3.0, 4.0])}, state, params)
  >>> fx.apply_updates(params, updates)["w"].shape
  (2,)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, TypeAlias

import chex
import jax
import jax.numpy as jnp

# Recurring shapes of data, named so that signatures read as documentation; the
# array types are chex's, as optax's are, so the two libraries' annotations agree.
PyTree = Any
Params = PyTree  # A pytree of parameter arrays.
Updates = PyTree  # A pytree with the structure of Params: gradients, or updates.
OptState = PyTree  # A transform's state: a pytree of arrays.
Scalar: TypeAlias = chex.Numeric  # a Python number or an array (0-d for hyper-parameters)
Schedule = Callable[[jax.Array], Scalar]  # step count (int32, 0 first) -> value
ScalarOrSchedule = Scalar | Schedule


class TransformInitFn(Protocol):
    def __call__(self, params: Params) -> OptState: ...


class TransformUpdateFn(Protocol):
    def __call__(
        self, updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]: ...


class GradientTransformation(NamedTuple):
    """A pure optimizer transform: ``init(params)`` and ``update(updates, state, params)``.

    Structurally the same NamedTuple as ``optax.GradientTransformation``, so the
    two libraries' transforms and combinators mix freely.
    """

    init: TransformInitFn
    update: TransformUpdateFn


class EmptyState(NamedTuple):
    """The state of a transform that keeps none (an empty pytree)."""


def stateless(fn: Callable[[Updates, Params | None], Updates]) -> GradientTransformation:
    """The transform that maps ``(updates, params) -> fn(updates, params)`` and keeps no state.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> double = fx.stateless(lambda u, p: 2 * u)
      >>> double.update(jnp.ones(2), double.init(None))[0].tolist()
      [2.0, 2.0]
    """

    def init(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update(
        updates: Updates, state: EmptyState, params: Params | None = None
    ) -> tuple[Updates, EmptyState]:
        return fn(updates, params), state

    return GradientTransformation(init, update)


def identity() -> GradientTransformation:
    """The transform that passes updates through unchanged and keeps no state.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> fx.identity().update(jnp.ones(2), fx.EmptyState())[0].tolist()
      [1.0, 1.0]
    """
    return stateless(lambda updates, params: updates)


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Applies ``transforms`` in order; the state is the tuple of their states.

    Any object with optax's ``init``/``update`` protocol may take part, optax's
    own transforms included.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> tx = fx.chain(fx.clip_by_global_norm(1.0), fx.identity())
      >>> updates, _ = tx.update(jnp.array([3.0, 4.0]), tx.init(jnp.zeros(2)))
      >>> [round(u, 6) for u in updates.tolist()]
      [0.6, 0.8]
    """

    def init(params: Params) -> tuple[OptState, ...]:
        return tuple(t.init(params) for t in transforms)

    def update(
        updates: Updates, state: tuple[OptState, ...], params: Params | None = None
    ) -> tuple[Updates, tuple[OptState, ...]]:
        if len(state) != len(transforms):
            raise ValueError(
                f"chain: state holds {len(state)} entries but the chain has "
                f"{len(transforms)} transforms; was the state made by this chain's init?"
            )
        new_states = []
        for transform, inner in zip(transforms, state):
            updates, inner = transform.update(updates, inner, params)
            new_states.append(inner)
        return updates, tuple(new_states)

    return GradientTransformation(init, update)


def apply_updates(params: Params, updates: Updates) -> Params:
    """Returns ``params + updates`` leaf by leaf, each result in its parameter's dtype.

    ``None`` leaves (frozen or masked parameters) pass through as ``None``.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> fx.apply_updates({"w": jnp.ones(2, jnp.bfloat16)}, {"w": jnp.ones(2)})["w"].dtype
      dtype(bfloat16)
    """

    def add(p: jax.Array | None, u: Any) -> jax.Array | None:
        if p is None:
            return None
        return jnp.asarray(p + u).astype(jnp.result_type(p))

    return jax.tree.map(add, params, updates, is_leaf=lambda x: x is None)
