r"""Weight averaging as pure functions: torch's averaging functions, and an EMA/SWA of a pytree.

The math of :mod:`lucid_fx.swa_utils` exists here once. For an average W̄ of
the weights W after ``n`` models averaged (``n_averaged``)::

    n = 0:       W̄ ← W                                  (the first update copies)
    SWA:         W̄ ← W̄ + (W - W̄) / (n + 1)              (the arithmetic mean of every W)
    EMA:         W̄ ← lerp(W̄, W, 1 - decay)
                   = W̄ + (1 - decay)·(W - W̄)              (W̄_k = decay·W̄_{k-1} + (1-decay)·W_k)
    then         n ← n + 1

so after updates with W_1, …, W_k, SWA holds their mean (1/k)·Σ_i W_i and EMA
holds decay^(k-1)·W_1 + Σ_{i=2..k} (1-decay)·decay^(k-i)·W_i.

torch's four factories are here, with torch's names and formulas (each rounds
as torch's does):

============================  ======================================================
``get_swa_avg_fn()``          ``W̄ + (W - W̄) / (n + 1)`` (torch's default on CPU)
``get_swa_multi_avg_fn()``    ``lerp(W̄, W, 1 / (n + 1))`` (torch's default on GPU)
``get_ema_avg_fn(decay)``     ``decay·W̄ + (1 - decay)·W``
``get_ema_multi_avg_fn(d)``   ``lerp(W̄, W, 1 - decay)`` (torch's EMA recipe)
============================  ======================================================

where ``lerp`` is torch's (:func:`lucid_fx._src.transforms.numerics.lerp`: from
W̄ for a weight below 0.5, from W otherwise). Ours **return** the new average
(``avg_fn(averaged, current, n) -> new``; a ``multi_avg_fn`` returns the list of
new arrays), where torch's ``multi_avg_fn`` writes into its first list in place
and returns ``None``: JAX arrays are immutable. A custom function is written the
same way. The factories' functions carry ``decay`` as data (a pytree leaf), so
a compiled average takes a new decay without compiling again.

:func:`weight_average` is the functional twin of ``AveragedModel``: a pure
``init(params) -> state`` / ``update(params, state) -> state`` pair over any
pytree of arrays, to call inside a jitted training step; :func:`ema_average`
and :func:`swa_average` are its two common forms. The stateful
``AveragedModel`` calls the same ``update`` on its packed buffers.

Relation to ``optax.ema``: ``optax.ema(decay, debias=True)`` is a gradient
transformation that replaces the *updates* by their moving average (a momentum,
optionally divided by ``1 - decay^t``); it keeps no average of the parameters.
The EMA here averages the *parameters* and leaves training alone, as torch's
``AveragedModel`` does. ``optax.incremental_update(params, average, 1 - decay)``
is the same recurrence without the first-update copy (torch's
``get_ema_avg_fn`` form).

Example:
  >>> import jax, jax.numpy as jnp, lucid_fx as fx
  >>> from lucid_fx.swa_utils import ema_average, swa_average
  >>> swa, ema = swa_average(), ema_average(decay=0.5)
  >>> params = jnp.array([0.0])
  >>> s, e = swa.init(params), ema.init(params)
  >>> for w in (1.0, 2.0, 6.0):
  ...     s = swa.update(jnp.array([w]), s)
  ...     e = jax.jit(ema.update)(jnp.array([w]), e)
  >>> s.average.tolist(), e.average.tolist(), int(s.n_averaged)   # mean 3; 0.25·1 + 0.25·2 + 0.5·6
  ([3.0], [3.75], 3)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, TypeAlias, cast

import jax
import jax.numpy as jnp

from lucid_fx._src.core.base import Params
from lucid_fx._src.core.dtypes import cast_scalar, compute_dtype, real_dtype
from lucid_fx._src.core.placement import copy_array
from lucid_fx._src.core.scalars import PreciseScalar
from lucid_fx._src.core.validation import (
    check_float_leaves,
    check_hyperparameter,
    check_same_structure,
    concrete_value,
)
from lucid_fx._src.transforms.numerics import lerp

__all__ = [
    "AveragingFunction",
    "AveragingState",
    "WeightAveraging",
    "ema_average",
    "get_ema_avg_fn",
    "get_ema_multi_avg_fn",
    "get_swa_avg_fn",
    "get_swa_multi_avg_fn",
    "swa_average",
    "weight_average",
]

# avg_fn(averaged, current, n_averaged) -> the new average, one array at a time
AvgFn: TypeAlias = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
# multi_avg_fn([averaged], [current], n_averaged) -> [new averages], one list per dtype
MultiAvgFn: TypeAlias = Callable[[list[jax.Array], list[jax.Array], jax.Array], list[jax.Array]]


# ----------------------------------------------------------------- torch's averaging functions


def _decay_checked(decay: Any) -> Any:
    check_hyperparameter("decay", decay, high=1.0)
    return decay


@jax.tree_util.register_pytree_node_class
class AveragingFunction:
    """One of torch's averaging functions, as data: the formula is static, ``decay`` a leaf.

    Made by the four factories of this module; called as torch's are:
    ``fn(averaged, current, n_averaged)`` for an ``avg_fn`` (one array),
    ``fn([averaged], [current], n_averaged)`` for a ``multi_avg_fn`` (lists). It
    returns the new average (a list for the multi form). As a pytree whose leaf
    is ``decay``, it can be an argument of a jitted function: a new decay is new
    data, not a new compilation. Its math is element-wise (``elementwise``), so
    the stateful face may run it on packed buffers.

    Attributes:
      formula: ``"swa"`` or ``"ema"``.
      multi: whether it is the ``multi_avg_fn`` form (lists, torch's lerp).
      decay: the EMA's decay (a number, a traced scalar, or a PreciseScalar
        inside a trace); ``None`` for SWA.
    """

    __slots__ = ("decay", "formula", "multi")
    elementwise = True

    def __init__(self, formula: Literal["swa", "ema"], multi: bool, decay: Any = None) -> None:
        self.formula = formula
        self.multi = multi
        self.decay = decay

    def one(self, averaged: jax.Array, current: jax.Array, n_averaged: jax.Array) -> jax.Array:
        """The new average of one array, in the arithmetic's dtype rounded to ``averaged``'s."""
        compute = compute_dtype(averaged, current)
        real = real_dtype(compute)
        a, w = averaged.astype(compute), current.astype(compute)
        if self.formula == "swa":
            count = (jnp.asarray(n_averaged) + 1).astype(real)
            new = lerp(a, w, 1 / count) if self.multi else a + (w - a) / count
        elif self.multi:
            # 1 - decay formed from decay's own precision, then rounded once (as torch does)
            new = lerp(a, w, cast_scalar(1 - self.decay, real))
        else:
            new = cast_scalar(self.decay, real) * a + cast_scalar(1 - self.decay, real) * w
        return new.astype(averaged.dtype)

    def __call__(self, averaged: Any, current: Any, n_averaged: Any) -> Any:
        if not self.multi:
            return self.one(averaged, current, n_averaged)
        return [self.one(a, c, n_averaged) for a, c in zip(averaged, current, strict=True)]

    def tree_flatten(self) -> tuple[tuple[Any, ...], tuple[str, bool]]:
        decay = self.decay
        if decay is not None and not isinstance(decay, (PreciseScalar, jax.core.Tracer)):
            # At double precision into a trace, so that 1 - decay rounds once (PreciseScalar).
            decay = PreciseScalar.of(decay)
        return (decay,), (self.formula, self.multi)

    @classmethod
    def tree_unflatten(cls, aux: tuple[str, bool], children: tuple[Any, ...]) -> AveragingFunction:
        formula, multi = aux
        return cls(formula, multi, children[0])  # type: ignore[arg-type]

    def __repr__(self) -> str:
        name = f"get_{self.formula}_{'multi_' if self.multi else ''}avg_fn"
        if self.formula == "swa":
            return f"{name}()"
        number = concrete_value(self.decay)
        return f"{name}(decay={'<traced>' if number is None else number})"


def get_ema_multi_avg_fn(decay: float = 0.999) -> AveragingFunction:
    """torch's EMA over lists of arrays: each ``W̄ ← lerp(W̄, W, 1 - decay)``; returns the new list.

    ``decay`` must be in [0, 1] (``ValueError`` naming it otherwise). torch's
    function updates its first list in place; this one returns the new arrays.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx.swa_utils import get_ema_multi_avg_fn
      >>> fn = get_ema_multi_avg_fn(0.75)
      >>> [a.tolist() for a in fn([jnp.array([0.0])], [jnp.array([4.0])], 1)]
      [[1.0]]
    """
    return AveragingFunction("ema", True, _decay_checked(decay))


def get_swa_multi_avg_fn() -> AveragingFunction:
    """torch's SWA over lists of arrays: each ``W̄ ← lerp(W̄, W, 1 / (n + 1))``; returns the new list.

    ``1 / (n + 1)`` is formed in the arrays' precision (torch forms it as a
    float32 tensor, also for float64 arrays).

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx.swa_utils import get_swa_multi_avg_fn
      >>> [a.tolist() for a in get_swa_multi_avg_fn()([jnp.array([1.0])], [jnp.array([4.0])], 2)]
      [[2.0]]
    """
    return AveragingFunction("swa", True)


def get_ema_avg_fn(decay: float = 0.999) -> AveragingFunction:
    """torch's EMA of one array: ``decay·W̄ + (1 - decay)·W``; ``decay`` in [0, 1].

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx.swa_utils import get_ema_avg_fn
      >>> get_ema_avg_fn(0.75)(jnp.array([0.0]), jnp.array([4.0]), 1).tolist()
      [1.0]
    """
    return AveragingFunction("ema", False, _decay_checked(decay))


def get_swa_avg_fn() -> AveragingFunction:
    """torch's SWA of one array: ``W̄ + (W - W̄) / (n + 1)``, the running arithmetic mean.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx.swa_utils import get_swa_avg_fn
      >>> get_swa_avg_fn()(jnp.array([1.0]), jnp.array([4.0]), 2).tolist()
      [2.0]
    """
    return AveragingFunction("swa", False)


def check_avg_fns(owner: str, avg_fn: Any, multi_avg_fn: Any) -> None:
    """At most one of them, each ``None`` or callable; ``ValueError``/``TypeError`` otherwise."""
    if avg_fn is not None and multi_avg_fn is not None:
        raise ValueError(
            f"{owner}: give avg_fn or multi_avg_fn, not both (got avg_fn={avg_fn!r} and "
            f"multi_avg_fn={multi_avg_fn!r})"
        )
    for name, fn in (("avg_fn", avg_fn), ("multi_avg_fn", multi_avg_fn)):
        if fn is not None and not callable(fn):
            raise TypeError(
                f"{owner}: {name} must be a function (averaged, current, n_averaged) -> new "
                f"average, got {type(fn).__name__}: {fn!r:.60}"
            )


def averaged_arrays(
    avg_fn: AvgFn | None, multi_avg_fn: MultiAvgFn | None,
    averaged: Sequence[jax.Array], current: Sequence[jax.Array], n_averaged: jax.Array,
) -> list[jax.Array]:
    """The new averages of ``averaged`` with ``current`` (lists of arrays, pairwise alike).

    Where ``n_averaged`` is 0 the result is ``current`` (torch's first update
    copies); elsewhere it is the averaging function's: ``multi_avg_fn`` called once
    per dtype with the lists of that dtype, else ``avg_fn`` (default
    :func:`get_swa_avg_fn`) per array. Each result is cast to its average's dtype.
    """
    if multi_avg_fn is not None:
        groups: dict[Any, list[int]] = {}
        for i, a in enumerate(averaged):
            groups.setdefault(a.dtype, []).append(i)
        new: list[Any] = [None] * len(averaged)
        for members in groups.values():
            out = multi_avg_fn([averaged[i] for i in members], [current[i] for i in members],
                               n_averaged)
            if not isinstance(out, (list, tuple)) or len(out) != len(members):
                raise TypeError(
                    f"multi_avg_fn must return the list of new averages ({len(members)} arrays), "
                    f"got {type(out).__name__}: JAX arrays are immutable, so where torch's "
                    f"function writes into its first list in place, return the new values"
                )
            for i, array in zip(members, out):
                new[i] = array
    else:
        fn = avg_fn if avg_fn is not None else get_swa_avg_fn()
        new = [fn(a, c, n_averaged) for a, c in zip(averaged, current, strict=True)]
    first = jnp.asarray(n_averaged) == 0
    result = []
    for a, c, m in zip(averaged, current, new, strict=True):
        m = jnp.asarray(m)
        if m.shape != a.shape:
            raise ValueError(
                f"the averaging function returned an array of shape {m.shape} for an average "
                f"of shape {a.shape}"
            )
        result.append(jnp.where(first, c.astype(a.dtype), m.astype(a.dtype)))
    return result


# ----------------------------------------------------------------- the functional twin


class AveragingState(NamedTuple):
    """The state of :func:`weight_average`: torch's ``AveragedModel`` as a pytree.

    Attributes:
      n_averaged: int32 count of updates so far (0 after ``init``).
      average: the averaged parameters, a pytree shaped as the parameters.
    """

    n_averaged: jax.Array
    average: Params


class WeightAveraging(NamedTuple):
    """A weight average: ``init(params) -> state`` and ``update(params, state) -> state``."""

    init: Callable[[Params], AveragingState]
    update: Callable[[Params, AveragingState], AveragingState]


def weight_average(avg_fn: AvgFn | None = None,
                   multi_avg_fn: MultiAvgFn | None = None) -> WeightAveraging:
    r"""A pure, jittable average of a pytree of parameters: ``AveragedModel``'s functional twin.

    ``init(params)`` starts an :class:`AveragingState` holding a copy of
    ``params`` with ``n_averaged = 0``; ``update(params, state)`` averages
    ``params`` in (the first update copies them, as torch's does) and counts
    it. The average is ``avg_fn`` or ``multi_avg_fn`` (at most one; torch's
    factories or your own, written against them: they return the new average),
    by default SWA (:func:`get_swa_avg_fn`). ``update`` runs under ``jax.jit``,
    ``vmap`` and sharding; ``state.average`` is read like the parameters.

    Raises ``ValueError`` if both functions are given, ``TypeError`` if one is
    not callable or a parameter is not a floating-point array, and ``ValueError``
    naming the first differing path if ``update``'s params do not match the state.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from lucid_fx.swa_utils import get_ema_avg_fn, weight_average
      >>> averaging = weight_average(avg_fn=get_ema_avg_fn(0.5))
      >>> state = averaging.init({"w": jnp.zeros(2)})
      >>> for w in (2.0, 4.0):
      ...     state = jax.jit(averaging.update)({"w": jnp.full(2, w)}, state)
      >>> state.average["w"].tolist(), int(state.n_averaged)   # 2, then 0.5·2 + 0.5·4
      ([3.0, 3.0], 2)
    """
    check_avg_fns("weight_average", avg_fn, multi_avg_fn)

    def init(params: Params) -> AveragingState:
        check_float_leaves("weight_average", params)
        # A copy: the caller may donate its parameters to a jitted step.
        average = jax.tree.map(copy_array, params)
        return AveragingState(jnp.zeros((), jnp.int32), average)

    def update(params: Params, state: AveragingState) -> AveragingState:
        if not isinstance(state, AveragingState):
            raise TypeError(
                f"weight_average: state must be the AveragingState made by init, got "
                f"{type(state).__name__}"
            )
        check_same_structure(state.average, params, what="params", against="the average")
        check_float_leaves("weight_average", params)
        averaged, treedef = jax.tree.flatten(state.average)
        current = cast(Any, treedef).flatten_up_to(params)
        new = averaged_arrays(avg_fn, multi_avg_fn, averaged, current, state.n_averaged)
        return AveragingState(state.n_averaged + 1, jax.tree.unflatten(treedef, new))

    return WeightAveraging(init, update)


def ema_average(decay: float = 0.999) -> WeightAveraging:
    r"""The exponential moving average of the parameters, as torch's EMA recipe computes it.

    ``weight_average(multi_avg_fn=get_ema_multi_avg_fn(decay))``: the first
    update copies the parameters, then ``W̄ ← W̄ + (1 - decay)·(W - W̄)`` (torch's
    lerp). ``decay`` in [0, 1]; it may be a traced scalar (not checked then), so
    a decay that changes is passed as data and compiles once.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx.swa_utils import ema_average
      >>> ema = ema_average(decay=0.9)
      >>> state = ema.init(jnp.zeros(1))
      >>> for w in (1.0, 0.0):
      ...     state = ema.update(jnp.array([w]), state)
      >>> round(float(state.average[0]), 6)   # 1, then 0.9·1 + 0.1·0
      0.9
    """
    return weight_average(multi_avg_fn=get_ema_multi_avg_fn(decay))


def swa_average() -> WeightAveraging:
    r"""Stochastic weight averaging: the running arithmetic mean of the parameters.

    ``weight_average()``: after k updates with W_1, …, W_k the average is
    (1/k)·Σ W_i, updated as ``W̄ + (W - W̄) / (n + 1)`` (torch's default on CPU).

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx.swa_utils import swa_average
      >>> swa = swa_average()
      >>> state = swa.init(jnp.zeros(1))
      >>> for w in (1.0, 2.0, 3.0, 6.0):
      ...     state = swa.update(jnp.array([w]), state)
      >>> float(state.average[0]), int(state.n_averaged)
      (3.0, 4)
    """
    return weight_average()
