"""The bridge from JAX's functional autodiff to torch-style stateful training.

``Parameter`` is a mutable holder (``.value``, ``.grad``); ``parameters`` lists the
Parameters of any pytree; ``backward`` is the JAX spelling of ``loss.backward()``:
it differentiates a loss function of the tree and accumulates into ``.grad``.

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

from lucid_fx.base import PyTree


class Parameter:
    """A mutable holder of one array: ``.value`` (a ``jax.Array``) and ``.grad``.

    The value is copied at construction, so the optimizer may update it in place
    (donate its buffer) without invalidating an array the caller still holds.
    Parameters compare and hash by identity, like ``torch.nn.Parameter``.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> p = fx.Parameter(jnp.zeros((2, 3)))
      >>> p, p.grad is None
      (Parameter(shape=(2, 3), dtype=float32), True)
    """

    __slots__ = ("value", "grad", "__weakref__")

    def __init__(self, value: Any) -> None:
        self.value: jax.Array = jnp.array(value, copy=True)
        self.grad: jax.Array | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.value.dtype

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


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


def _descent_grad(g: jax.Array) -> jax.Array:
    # jax.grad of a real loss w.r.t. a complex input is the conjugate of the
    # steepest-ascent direction; torch's .grad (which the math expects) is not.
    return jnp.conj(g) if jnp.iscomplexobj(g) else g


@jax.jit(static_argnums=(0, 1, 2))
def _value_and_accumulated_grad(
    loss_fn: Callable[..., jax.Array],
    treedef: Any,
    layout: tuple[tuple[str, Any], ...],
    values: list[jax.Array],
    arrays: dict[int, Any],
    old_grads: list[jax.Array | None],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[jax.Array, list[jax.Array]]:
    """Loss and ``old_grads + ∂loss/∂values``, compiled once per function and shapes.

    ``layout[i]`` says what leaf ``i`` of the tree is: ``("param", k)`` the k-th
    differentiated value (tied Parameters share k), ``("array", None)`` a
    constant in ``arrays[i]``, ``("static", x)`` the Python value x.
    """

    def loss_of(vals: list[jax.Array]) -> jax.Array:
        leaves = [
            vals[x] if kind == "param" else arrays[i] if kind == "array" else x
            for i, (kind, x) in enumerate(layout)
        ]
        return loss_fn(jax.tree.unflatten(treedef, leaves), *args, **kwargs)

    loss, grads = jax.value_and_grad(loss_of)(values)
    summed = [
        _descent_grad(g) if old is None else old + _descent_grad(g)
        for g, old in zip(grads, old_grads)
    ]
    return loss, summed


def backward(loss_fn: Callable[..., jax.Array], tree: PyTree, *args: Any, **kwargs: Any) -> jax.Array:
    """Returns ``loss_fn(tree, *args, **kwargs)`` and adds its gradient into each ``.grad``.

    Every Parameter of ``tree`` is replaced by its array before ``loss_fn`` sees
    it (a Parameter used in several places gets the sum of their gradients);
    other array leaves are passed as constants, other leaves as static Python
    values (they must be hashable). Gradients accumulate across calls, as
    torch's ``loss.backward()`` does, until ``optimizer.zero_grad()``. The loss
    must be a real scalar. Compiled once per ``loss_fn`` and shapes/dtypes/structure.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> p = fx.Parameter(jnp.array(3.0))
      >>> _ = fx.backward(lambda m, k: k * m ** 2, p, 2.0)
      >>> _ = fx.backward(lambda m, k: k * m ** 2, p, 2.0)
      >>> float(p.grad)   # 2 * (2 * 2 * 3): accumulated
      24.0
    """
    leaves, treedef = jax.tree.flatten(tree, is_leaf=_is_parameter)
    params: list[Parameter] = []
    index_of: dict[int, int] = {}
    arrays: dict[int, Any] = {}
    layout: list[tuple[str, Any]] = []
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, Parameter):
            if id(leaf) not in index_of:
                index_of[id(leaf)] = len(params)
                params.append(leaf)
            layout.append(("param", index_of[id(leaf)]))
        elif isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
            arrays[i] = leaf
            layout.append(("array", None))
        else:
            layout.append(("static", leaf))
    if not params:
        raise ValueError("backward: the tree holds no Parameter to differentiate")
    for p in params:
        if not jnp.issubdtype(p.value.dtype, jnp.inexact):
            raise TypeError(
                f"backward: {p!r} is not floating point; only float or complex "
                f"Parameters have gradients"
            )
    loss, grads = _value_and_accumulated_grad(
        loss_fn,
        treedef,
        tuple(layout),
        [p.value for p in params],
        arrays,
        [p.grad for p in params],
        args,
        kwargs,
    )
    for p, g in zip(params, grads):
        p.grad = g
    return loss
