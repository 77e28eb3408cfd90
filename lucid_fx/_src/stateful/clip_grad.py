r"""In-place gradient clipping of Parameters: torch's ``clip_grad_norm_`` and ``clip_grad_value_``.

The stateful face's counterpart of :func:`lucid_fx.clip_by_global_norm`: call
it between ``fx.backward`` and ``optimizer.step()``, as in torch. Of the given
Parameters, those whose ``.grad`` is ``None`` are ignored; the others have
gradients g_1, …, g_n, and for ``norm_type`` p::

    ‖g‖_p     = (Σ_i Σ_j |g_ij|^p)^(1/p)          (p = inf: max_ij |g_ij|)
    coef      = min(1, max_norm / (‖g‖_p + 1e-6))
    g_i      ← coef · g_i                         (for every i)

which is torch's "norm of the per-parameter norms" (for p > 0 the two are the
same number). ``|·|`` is the modulus, so a complex gradient counts by its
absolute values and is scaled as a whole. :func:`clip_grad_value_` instead
clamps every entry to ``[-clip_value, clip_value]``.

Each function is one compiled call over the gradients as the optimizer stores
them (a few packed buffers, :mod:`lucid_fx._src.stateful.storage`), not a loop over the
Parameters: a pack's slots that were not given, or have no gradient, are
masked out of the norm and written back unchanged. Which slots count is data,
so a second call over the same packs (each again counted whole, or again in
part) does not recompile, whatever the values, ``max_norm`` or ``clip_value``.

Where this differs from torch, on purpose:

- The norm is computed without overflow or underflow: when the plain sum of
  ``|g|^p`` is not finite or is tiny, it is recomputed scaled by ``max |g|``.
  Float32 gradients of magnitude 1e30 thus have a finite norm (torch: ``inf``,
  and the gradients become 0 or nan) and tiny ones a non-zero norm.
- The norm and ``coef`` are accumulated in float32 at least (float64 for
  float64 gradients); the returned norm has the promoted dtype of the gradients
  (bfloat16 for bfloat16 ones, as torch returns), but ``coef`` comes from the
  unrounded norm. Each gradient is then multiplied by ``coef`` in its own dtype.
- A Parameter listed twice counts once (torch would count, and scale, it twice).
- An empty gradient adds nothing, also to the inf-norm (torch raises there).
- ``norm_type`` must be > 0 (``inf`` included): torch's results for 0 or
  negative orders are not norms. ``max_norm`` and ``clip_value`` must be
  numbers >= 0; ``inf`` is accepted, as in torch (``clip_grad_norm_(ps, inf)``
  just measures the norm).
- A complex gradient has no order, so :func:`clip_grad_value_` refuses it
  (``TypeError``); torch raises too.
- JAX arrays are immutable: "in place" means each ``.grad`` is replaced by a
  new array (an array read from ``.grad`` before the call keeps its values).

Every check runs before anything changes, so a call that raises leaves every
gradient as it was; that includes ``error_if_nonfinite=True`` meeting a nan or
inf norm.

Example:
  >>> import jax.numpy as jnp, lucid_fx as fx
  >>> model = {"w": fx.Parameter(jnp.array([1.0, 1.0])), "b": fx.Parameter(jnp.zeros(1))}
  >>> optimizer = fx.RMSprop(fx.parameters(model), lr=0.1)
  >>> loss = fx.backward(lambda m: jnp.sum(3.0 * m["w"]) + 4.0 * m["b"][0], model)
  >>> norm = fx.clip_grad_norm_(fx.parameters(model), max_norm=1.0)   # ‖(3, 3, 4)‖ ≈ 5.83
  >>> round(float(norm), 4), [round(g, 4) for g in model["w"].grad.tolist()]
  (5.831, [0.5145, 0.5145])
  >>> fx.clip_grad_value_(fx.parameters(model), clip_value=0.6)
  >>> [round(g, 4) for g in model["b"].grad.tolist()]
  [0.6]
  >>> optimizer.step()
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lucid_fx._src.core.layout import Layout
from lucid_fx._src.core.placement import shard_like
from lucid_fx._src.core.scalars import as_traced
from lucid_fx._src.core.validation import check_flag, check_hyperparameter
from lucid_fx._src.stateful.autodiff import Parameter
from lucid_fx._src.stateful.param_groups import check_implementation_options
from lucid_fx._src.stateful.storage import ParamPack, held_by
from lucid_fx._src.stateful.tracing import check_eager

__all__ = ["clip_grad_norm_", "clip_grad_value_"]

# torch's guard in coef = max_norm / (norm + EPS): an all-zero gradient does not divide by 0.
EPS = 1e-6


# ----------------------------------------------------------------- gathering


class _Gathered:
    """The gradients of the given Parameters, as stored: pack buffers and loose arrays.

    ``masks[k]`` says which slots of ``packs[k]`` count (``None``: all of them);
    ``plain`` are Parameters outside any pack, ``plain_grads`` their gradients.
    """

    __slots__ = ("masks", "packs", "plain", "plain_grads", "representatives")

    def __init__(self, fn: str, parameters: Parameter | Iterable[Parameter]) -> None:
        self.packs: list[ParamPack] = []
        self.representatives: list[Parameter] = []  # one given Parameter per pack, for errors
        self.masks: list[np.ndarray | None] = []
        self.plain: list[Parameter] = []
        self.plain_grads: list[Any] = []
        given: dict[int, tuple[ParamPack, Parameter, list[int]]] = {}  # id(pack) -> slots given
        loose: dict[int, Parameter] = {}  # a repeated Parameter counts once
        for i, p in enumerate(_as_list(fn, parameters)):
            if not isinstance(p, Parameter):
                raise TypeError(
                    f"{fn}: parameters[{i}] is a {type(p).__name__}, not an fx.Parameter; "
                    f"pass fx.parameters(model), or wrap arrays in fx.Parameter(...)"
                )
            held = held_by(p)
            if held is None:
                if p.grad is not None:
                    loose.setdefault(id(p), p)
                continue
            pack, slot = held
            entry = given.get(id(pack))
            if entry is None:
                entry = given[id(pack)] = (pack, p, [])
            entry[2].append(slot)  # a repeated slot is marked twice: counted once
        for holder, p, slots in given.values():
            counted = np.zeros(len(holder.layout), bool)
            counted[slots] = True
            counted &= holder.has_grad
            if not counted.any():
                continue
            # Folding writes every hand-assigned gradient of the pack into its buffer.
            holder.check_grads(caller=f"{fn}: ")
            self.packs.append(holder)
            self.representatives.append(p)
            self.masks.append(None if counted.all() else counted)
        for p in loose.values():
            self.plain.append(p)
            self.plain_grads.append(_checked_plain_grad(fn, p))

    @property
    def empty(self) -> bool:
        return not self.packs and not self.plain

    def pack_grads(self) -> list[jax.Array]:
        grads = [holder.folded_grad() for holder in self.packs]
        assert all(g is not None for g in grads)  # a pack with a gradient slot has a buffer
        return grads  # type: ignore[return-value]

    def write(self, pack_grads: list[jax.Array], plain_grads: list[jax.Array]) -> None:
        for holder, grad in zip(self.packs, pack_grads):
            holder.set_grad_buffer(grad)
        for p, grad in zip(self.plain, plain_grads):
            p.grad = grad


def _as_list(fn: str, parameters: Any) -> list[Any]:
    if isinstance(parameters, Parameter):
        return [parameters]
    if isinstance(parameters, (jax.Array, np.ndarray, np.generic, str, bytes, dict)) or not (
        isinstance(parameters, Iterable)
    ):
        raise TypeError(
            f"{fn}: parameters must be an fx.Parameter or an iterable of them, got a "
            f"{type(parameters).__name__}; pass fx.parameters(model), or wrap arrays "
            f"in fx.Parameter(...)"
        )
    return list(parameters)


def _checked_plain_grad(fn: str, p: Parameter) -> Any:
    grad = p.grad
    if not isinstance(grad, (jax.Array, np.ndarray)):
        raise TypeError(f"{fn}: {p!r} has a .grad of type {type(grad).__name__}; expected an array")
    if not jnp.issubdtype(grad.dtype, jnp.inexact):
        raise TypeError(
            f"{fn}: {p!r} has a gradient of dtype {grad.dtype}; expected floating point or complex"
        )
    if tuple(grad.shape) != p.shape:
        raise ValueError(
            f"{fn}: {p!r} has a gradient of shape {tuple(grad.shape)}; expected {p.shape}"
        )
    return grad


def _norm_order(norm_type: Any) -> float:
    """``norm_type`` as a float > 0 (``inf`` and ``"inf"`` included), or ``ValueError``."""
    order = None
    if not isinstance(norm_type, (bool, np.bool_)):
        try:
            order = float(norm_type)
        except (TypeError, ValueError):
            order = None
    if order is None or not order > 0:  # nan fails too
        raise ValueError(
            f"Invalid norm_type value: {norm_type!r} (expected a number > 0, or inf)"
        )
    return order


def _real_dtype(dtype: Any) -> np.dtype:
    return np.dtype(jnp.finfo(dtype).dtype)


def _accumulation_dtype(dtype: Any) -> np.dtype:
    """float32 at least: bfloat16/float16 norms would round every partial sum."""
    return np.dtype(jnp.promote_types(_real_dtype(dtype), jnp.float32))


# ----------------------------------------------------------------- compiled math


def _counted_abs(grad: jax.Array, mask: jax.Array | None, layout: Layout | None) -> jax.Array:
    """|grad| in the accumulation dtype, 0 where the slot does not count."""
    a = jnp.abs(grad).astype(_accumulation_dtype(grad.dtype))
    if mask is None:
        return a
    assert layout is not None
    return jnp.where(layout.slot_mask(mask).reshape(a.shape), a, 0)


def _total_norm(order: float, pieces: list[jax.Array], dtype: np.dtype) -> jax.Array:
    """‖pieces‖_order of the non-negative ``pieces`` taken together, in ``dtype``."""
    pieces = [a.astype(dtype) for a in pieces]

    def maximum() -> jax.Array:
        return jnp.max(jnp.stack([jnp.max(a, initial=0) for a in pieces]))

    def power_sum(scale: jax.Array | None) -> jax.Array:
        scaled = pieces if scale is None else [a / scale for a in pieces]
        terms = [a * a if order == 2 else a**order for a in scaled]
        return jnp.sum(jnp.stack([jnp.sum(t) for t in terms]))

    def root(s: jax.Array) -> jax.Array:
        return jnp.sqrt(s) if order == 2 else s ** (1 / order)

    if order == math.inf:
        return maximum()
    if order == 1:
        return power_sum(None)

    def rescaled() -> jax.Array:
        # (Σ (|g|/m)^p)^(1/p)·m with m = max |g|: no overflow, no underflow. A nan or
        # inf m is the answer itself, and m = 0 means all zeros.
        m = maximum()
        usable = jnp.isfinite(m) & (m > 0)
        safe = jnp.where(usable, m, 1)
        return jnp.where(usable, safe * root(power_sum(safe)), m)

    direct = power_sum(None)
    # Below sqrt(tiny), entries whose p-th power underflowed might matter.
    enough = jnp.isfinite(direct) & (direct >= math.sqrt(jnp.finfo(dtype).tiny))
    return jax.lax.cond(enough, lambda: root(direct), rescaled)


@jax.jit(static_argnums=(0, 1))
def _clip_norm(
    order: float,
    layouts: tuple[Layout, ...],
    pack_grads: list[jax.Array],
    masks: list[Any],
    plain_grads: list[Any],
    max_norm: jax.Array,
) -> tuple[jax.Array, jax.Array, list[jax.Array], list[jax.Array]]:
    """(total norm, is it finite, clipped pack buffers, clipped loose gradients)."""
    grads = [*pack_grads, *plain_grads]
    accumulate = np.dtype(jnp.result_type(*[_accumulation_dtype(g.dtype) for g in grads]))
    result = np.dtype(jnp.result_type(*[_real_dtype(g.dtype) for g in grads]))
    pieces = [_counted_abs(g, m, pl) for g, m, pl in zip(pack_grads, masks, layouts)]
    pieces += [_counted_abs(g, None, None) for g in plain_grads]
    total = _total_norm(order, pieces, accumulate)
    coef = jnp.minimum(max_norm.astype(accumulate) / (total + EPS), 1)

    def scaled(g: jax.Array) -> jax.Array:
        return g * coef.astype(_real_dtype(g.dtype))

    new_packs = [
        shard_like(g, scaled(g) if m is None
                   else jnp.where(pl.slot_mask(m).reshape(g.shape), scaled(g), g))
        for g, m, pl in zip(pack_grads, masks, layouts)
    ]
    new_plain = [shard_like(g, scaled(g)) for g in plain_grads]
    return total.astype(result), jnp.isfinite(total), new_packs, new_plain


@jax.jit(static_argnums=(0,))
def _clip_value(
    layouts: tuple[Layout, ...],
    pack_grads: list[jax.Array],
    masks: list[Any],
    plain_grads: list[Any],
    clip_value: jax.Array,
) -> tuple[list[jax.Array], list[jax.Array]]:
    def clamped(g: jax.Array) -> jax.Array:
        bound = clip_value.astype(g.dtype)
        return jnp.clip(g, -bound, bound)

    new_packs = [
        shard_like(g, clamped(g) if m is None
                   else jnp.where(pl.slot_mask(m).reshape(g.shape), clamped(g), g))
        for g, m, pl in zip(pack_grads, masks, layouts)
    ]
    return new_packs, [shard_like(g, clamped(g)) for g in plain_grads]


# ----------------------------------------------------------------- public API


def clip_grad_norm_(
    parameters: Parameter | Iterable[Parameter],
    max_norm: float,
    norm_type: float | str = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> jax.Array:
    r"""Scales the gradients of ``parameters`` so that their joint norm is at most ``max_norm``.

    torch's ``torch.nn.utils.clip_grad_norm_``: the total norm ``‖g‖`` of all
    gradients together (modulus for complex ones) is computed, and every
    gradient is multiplied by ``min(1, max_norm / (‖g‖ + 1e-6))``. Parameters
    whose ``.grad`` is ``None`` are ignored. One compiled call; see the module
    docstring for the math and the few deliberate differences from torch.

    Args:
      parameters: an :class:`~lucid_fx.Parameter` or an iterable of them, e.g.
        ``fx.parameters(model)`` or ``optimizer.param_groups[0]["params"]``.
      max_norm: the largest total norm let through, a number >= 0 (``inf``:
        only measure).
      norm_type: the order p > 0 of the norm: a number, ``inf`` or ``"inf"``.
      error_if_nonfinite: raise ``RuntimeError`` (and change nothing) when the
        total norm is nan or inf; otherwise the gradients are scaled by the
        non-finite coefficient, as in torch.
      foreach: torch's choice of kernel: None, True or False, accepted and
        checked as torch takes it; the clipping is one compiled call whatever it says.

    Returns:
      The total norm before clipping, a 0-d ``jax.Array`` in the gradients'
      (promoted, real) dtype: float32 for float32 or complex64 gradients.
      ``0.0`` (float32) when no given Parameter has a gradient.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> p, q = fx.Parameter(jnp.zeros(2)), fx.Parameter(jnp.zeros(1))
      >>> p.grad, q.grad = jnp.array([3.0, 0.0]), jnp.array([-4.0])
      >>> norm = fx.clip_grad_norm_([p, q], max_norm=2.5)
      >>> norm.dtype, float(norm)
      (dtype('float32'), 5.0)
      >>> [round(g, 5) for g in p.grad.tolist() + q.grad.tolist()]   # halved
      [1.5, 0.0, -2.0]
      >>> round(float(fx.clip_grad_norm_([p, q], max_norm=10.0, norm_type="inf")), 5)   # below
      2.0
    """
    fn = "clip_grad_norm_"
    check_eager(fn)
    check_hyperparameter("max_norm", max_norm)
    order = _norm_order(norm_type)
    check_flag("error_if_nonfinite", error_if_nonfinite)
    check_implementation_options({"foreach": foreach})
    gathered = _Gathered(fn, parameters)
    if gathered.empty:
        return jnp.zeros((), jnp.float32)
    total, finite, pack_grads, plain_grads = _clip_norm(
        order,
        tuple(holder.layout for holder in gathered.packs),
        gathered.pack_grads(),
        gathered.masks,
        gathered.plain_grads,
        as_traced(float(max_norm)),
    )
    if error_if_nonfinite and not bool(finite):
        shown = "inf" if order == math.inf else order
        raise RuntimeError(
            f"{fn}: the total norm of order {shown} for gradients from `parameters` is "
            f"non-finite ({float(total)}), so it cannot be clipped. To disable this error "
            f"and scale the gradients by the non-finite norm anyway, set "
            f"`error_if_nonfinite=False`"
        )
    gathered.write(pack_grads, plain_grads)
    return total


def clip_grad_value_(
    parameters: Parameter | Iterable[Parameter], clip_value: float, foreach: bool | None = None
) -> None:
    """Clamps every gradient entry of ``parameters`` to ``[-clip_value, clip_value]``.

    torch's ``torch.nn.utils.clip_grad_value_``; Parameters whose ``.grad`` is
    ``None`` are ignored, nan stays nan, and dtypes are kept. One compiled call.

    Args:
      parameters: an :class:`~lucid_fx.Parameter` or an iterable of them.
      clip_value: the bound, a number >= 0 (``inf``: no change). Gradients must
        be real: a complex one raises ``TypeError`` before anything changes.
      foreach: as :func:`clip_grad_norm_`'s: accepted, checked, and changes nothing.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> p = fx.Parameter(jnp.zeros(3))
      >>> p.grad = jnp.array([-5.0, 0.25, 3.0])
      >>> fx.clip_grad_value_(p, clip_value=1.0)
      >>> p.grad.tolist()
      [-1.0, 0.25, 1.0]
    """
    fn = "clip_grad_value_"
    check_eager(fn)
    check_hyperparameter("clip_value", clip_value)
    check_implementation_options({"foreach": foreach})
    gathered = _Gathered(fn, parameters)
    for holder, p in zip(gathered.packs, gathered.representatives):
        if jnp.issubdtype(holder.layout.dtype, jnp.complexfloating):
            _refuse_complex(fn, p)
    for p, grad in zip(gathered.plain, gathered.plain_grads):
        if jnp.issubdtype(grad.dtype, jnp.complexfloating):
            _refuse_complex(fn, p)
    if gathered.empty:
        return
    pack_grads, plain_grads = _clip_value(
        tuple(holder.layout for holder in gathered.packs),
        gathered.pack_grads(),
        gathered.masks,
        gathered.plain_grads,
        as_traced(float(clip_value)),
    )
    gathered.write(pack_grads, plain_grads)


def _refuse_complex(fn: str, p: Parameter) -> None:
    raise TypeError(
        f"{fn}: {p!r} has a complex gradient, and complex numbers cannot be clamped "
        f"(torch refuses too); use clip_grad_norm_, or clip the real and imaginary parts "
        f"yourself"
    )
