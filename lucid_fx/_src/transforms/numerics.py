"""The building blocks every element-wise optimizer is made of, written once.

An element-wise optimizer (RMSprop, SGD, Adam, ...) is a *kernel* — one pure
function from one parameter's gradient, parameter and state buffers to the
update and the new buffers — plus the same plumbing around it. The plumbing
lives here:

- :func:`map_kernel` runs a kernel leaf by leaf over the gradient, parameter
  and state trees (any of them may be absent) and returns each output column
  as a tree, so that each leaf's update is one fused pass over memory.
- :func:`componentwise` runs a real kernel on the real and imaginary parts of
  complex arrays separately, as torch does with ``torch.view_as_real``.
- The dtype policy: :func:`buffer_dtype` (what a state buffer is stored in),
  :func:`compute_dtype` and :func:`hyper` (what the arithmetic runs in).
- :func:`keep_old_if_nonfinite` (``skip_nonfinite``) and :func:`next_step`
  (the int32 step count, saturating instead of wrapping around).
- The checks at ``init``/``update``: :func:`check_float_leaves`,
  :func:`check_state`, :func:`check_update_trees`.

Example — a plain gradient step ``θ ← θ - η·g`` as a kernel, mapped over a tree:

  >>> import jax.numpy as jnp
  >>> from lucid_fx._src.transforms.numerics import map_kernel
  >>> def kernel(g, *, lr):
  ...     return (-lr * g,)
  >>> grads = {"w": jnp.array([1.0, 2.0]), "b": jnp.array(4.0)}
  >>> (deltas,) = map_kernel(kernel, grads, grads, present=(True,), lr=0.5)
  >>> deltas["w"].tolist(), deltas["b"].tolist()
  ([-0.5, -1.0], -2.0)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

from lucid_fx._src.core.base import PyTree, Updates
from lucid_fx._src.core.scalars import PreciseScalar
from lucid_fx._src.core.validation import check_same_structure

INT32_MAX = np.iinfo(np.int32).max
"""The largest step count; :func:`next_step` stays there instead of wrapping to < 0."""

Kernel = Callable[..., tuple[Any, ...]]


# ------------------------------------------------------------------ mapping a kernel


def tree_leaves_or_none(structure: Any, tree: PyTree | None) -> list[Any]:
    """The leaves of ``tree`` as laid out by ``structure``; ``None`` gives a ``None`` per leaf.

    ``structure`` is a pytree (or a ``PyTreeDef``); ``tree`` must have its
    structure, and may have more below each leaf (as ``flatten_up_to``).

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.transforms.numerics import tree_leaves_or_none
      >>> tree_leaves_or_none({"a": 1, "b": 2}, None)
      [None, None]
      >>> tree_leaves_or_none({"a": 1, "b": 2}, {"a": 10, "b": 20})
      [10, 20]
    """
    treedef: Any = structure if isinstance(structure, jax.tree_util.PyTreeDef) else (
        jax.tree.structure(structure))
    if tree is None:
        return [None] * treedef.num_leaves
    return cast(list[Any], treedef.flatten_up_to(tree))


def map_kernel(
    kernel: Kernel,
    structure: Any,
    *trees: PyTree | None,
    present: Sequence[bool],
    **hyper: Any,
) -> tuple[PyTree | None, ...]:
    """Applies ``kernel(*leaves, **hyper)`` leaf by leaf; returns one tree per output.

    ``trees`` are laid out by ``structure`` (a pytree or a ``PyTreeDef``); a
    tree given as ``None`` (a buffer that is switched off) passes ``None`` to
    every call. The kernel returns a tuple; column ``i`` of the results comes
    back as a tree of ``structure``, or as ``None`` when ``present[i]`` is
    False (that buffer is switched off). Presence is decided by the caller's
    flags, not by the kernel's ``None`` results, so that the state keeps one
    structure for an empty tree of parameters (no leaves, no results) too.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.transforms.numerics import map_kernel
      >>> def kernel(g, b, *, mu):  # b is None when momentum is off
      ...     new_b = g if b is None else mu * b + g
      ...     return -new_b, (None if b is None else new_b)
      >>> g = {"w": jnp.array([1.0, -1.0])}
      >>> deltas, buffers = map_kernel(kernel, g, g, None, present=(True, False), mu=0.9)
      >>> deltas["w"].tolist(), buffers
      ([-1.0, 1.0], None)
    """
    treedef: Any = structure if isinstance(structure, jax.tree_util.PyTreeDef) else (
        jax.tree.structure(structure))
    columns_in = [tree_leaves_or_none(treedef, tree) for tree in trees]
    outs = [kernel(*leaves, **hyper) for leaves in zip(*columns_in)]
    columns: list[list[Any]] = (
        [list(column) for column in zip(*outs)] if outs else [[] for _ in present]
    )
    if len(present) != len(columns):
        raise ValueError(
            f"map_kernel: the kernel returns {len(columns)} outputs but present has {len(present)}"
        )
    return tuple(
        treedef.unflatten(column) if used else None for column, used in zip(columns, present)
    )


def componentwise(kernel: Kernel) -> Kernel:
    """The kernel that runs ``kernel`` on real and imaginary parts separately for complex input.

    torch updates a complex parameter of most optimizers (Adam and its family)
    as a pair of independent reals (``torch.view_as_real``): every running
    average is kept per component, so a second moment holds ``re(g)²`` and
    ``im(g)²`` rather than ``|g|²``. When any positional array is complex, the
    wrapped kernel is called twice — on the real parts and on the imaginary
    parts of every positional array (``None`` stays ``None``) — and each pair
    of outputs is put back together as ``re + i·im``. Keyword arguments
    (hyper-parameters, the step count) go unchanged to both calls. Real input
    calls ``kernel`` once, as it is.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.transforms.numerics import componentwise
      >>> square = componentwise(lambda g: (g * g,))
      >>> square(jnp.array([3 + 4j]))[0].tolist()   # re² + i·im², not (3+4i)²
      [(9+16j)]
      >>> square(jnp.array([3.0]))[0].tolist()
      [9.0]
    """

    @functools.wraps(kernel)
    def wrapped(*arrays: Any, **kwargs: Any) -> tuple[Any, ...]:
        if not any(a is not None and jnp.iscomplexobj(a) for a in arrays):
            return kernel(*arrays, **kwargs)

        def part(take: Callable[[Any], Any]) -> tuple[Any, ...]:
            return kernel(*(None if a is None else take(a) for a in arrays), **kwargs)

        real_parts, imag_parts = part(jnp.real), part(jnp.imag)
        return tuple(
            None if re is None else jax.lax.complex(re, im)
            for re, im in zip(real_parts, imag_parts)
        )

    return wrapped


# ------------------------------------------------------------------ the dtype policy


def buffer_dtype(param_dtype: Any, state_dtype: Any | None = None, *, real: bool = False) -> Any:
    """The dtype of a state buffer for a parameter of ``param_dtype``.

    The buffer takes ``state_dtype`` when given, else the parameter's dtype.
    For a complex parameter it is complex (a real ``state_dtype`` becomes its
    complex counterpart, at least complex64), or the matching real dtype when
    ``real`` (a running average of ``|g|²``).

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.transforms.numerics import buffer_dtype
      >>> buffer_dtype(jnp.bfloat16), buffer_dtype(jnp.bfloat16, jnp.float32)
      (dtype(bfloat16), dtype('float32'))
      >>> buffer_dtype(jnp.complex64), buffer_dtype(jnp.complex64, real=True)
      (dtype('complex64'), dtype('float32'))
    """
    base = jnp.dtype(param_dtype if state_dtype is None else state_dtype)
    if jnp.issubdtype(param_dtype, jnp.complexfloating):
        full = jnp.result_type(base, jnp.complex64) if not jnp.issubdtype(
            base, jnp.complexfloating) else base
        return jnp.finfo(full).dtype if real else full
    return base


def compute_dtype(*arrays: Any) -> Any:
    """The dtype the arithmetic runs in: the widest of ``arrays`` (``None`` skipped), >= float32.

    At least float32 so that ``1 - β`` and small updates keep their precision
    for bfloat16/float16 parameters and buffers; each result is rounded back
    to its own buffer's dtype afterwards.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.transforms.numerics import compute_dtype
      >>> compute_dtype(jnp.ones(2, jnp.bfloat16), None)
      dtype('float32')
      >>> compute_dtype(jnp.ones(2, jnp.complex64), jnp.ones(2, jnp.float32))
      dtype('complex64')
    """
    return jnp.result_type(*[a for a in arrays if a is not None], jnp.float32)


def real_dtype(dtype: Any) -> Any:
    """The real dtype of ``dtype``'s components: complex64 -> float32, float32 -> float32.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.transforms.numerics import real_dtype
      >>> real_dtype(jnp.complex64), real_dtype(jnp.float32)
      (dtype('float32'), dtype('float32'))
    """
    return jnp.finfo(dtype).dtype


def hyper(value: Any, dtype: Any) -> jax.Array:
    """A hyper-parameter (a number, a 0-d or broadcastable array, a tracer) in ``dtype``.

    Derived scalars (``1 - β``, ``1 - η·λ``) should be formed *before* this
    cast, from the value's own precision: from a Python float they are then
    exact to float64 and rounded once, as torch rounds them.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.transforms.numerics import hyper
      >>> float(hyper(1 - 0.999, jnp.float32)) == float(jnp.float32(1 - 0.999))
      True
    """
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        # A constant either way; NumPy rounds it to ``dtype`` as jnp would, without a dispatch.
        return cast(jax.Array, np.asarray(value, dtype))
    if isinstance(value, PreciseScalar):  # the stateful face's double-precision scalars
        return cast(jax.Array, value.value(dtype))
    return jnp.asarray(value).astype(dtype)


def scheduled(value: Any, count: jax.Array) -> Any:
    """``value(count)`` for a schedule (a callable), else ``value`` itself.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.transforms.numerics import scheduled
      >>> scheduled(lambda t: 0.5 ** t, jnp.int32(2)).tolist(), scheduled(0.1, 5)
      (0.25, 0.1)
    """
    return value(count) if callable(value) else value


# ------------------------------------------------------------------ step count and non-finite skip


def next_step(step: Any) -> jax.Array:
    """``step + 1`` for an int32 count, saturating at :data:`INT32_MAX` instead of wrapping.

    Works for a scalar and for an array of per-element counts alike.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.transforms.numerics import INT32_MAX, next_step
      >>> next_step(jnp.int32(0)).tolist(), next_step(jnp.int32(INT32_MAX)).tolist()
      (1, 2147483647)
    """
    return jnp.minimum(step, INT32_MAX - 1) + 1


def all_finite(tree: PyTree) -> jax.Array:
    """True (a 0-d bool array) when no leaf of ``tree`` holds NaN or ±Inf.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.transforms.numerics import all_finite
      >>> bool(all_finite({"a": jnp.ones(2), "b": jnp.array([1.0, jnp.inf])}))
      False
      >>> bool(all_finite({}))
      True
    """
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(tree)]))


def keep_old_if_nonfinite(
    grads: Updates, new_updates: Updates, old: Any, new: Any
) -> tuple[Updates, Any]:
    """Selects zero updates and the ``old`` state when any gradient is NaN or Inf.

    ``old`` and ``new`` are states of one structure (NamedTuples) with an int32
    ``skipped`` field: it counts the skipped steps, and every other field —
    the step count included — is kept from ``old`` on a skip. Nothing else
    happens to a finite step: ``new_updates`` and ``new`` come back unchanged
    (``skipped`` as in ``old``). One global ``all`` over the gradients decides,
    so the whole step is applied or none of it.

    Example:
      >>> import jax.numpy as jnp
      >>> from typing import NamedTuple
      >>> from lucid_fx._src.transforms.numerics import keep_old_if_nonfinite
      >>> class State(NamedTuple):
      ...     step: jnp.ndarray
      ...     skipped: jnp.ndarray
      >>> old, new = State(jnp.int32(3), jnp.int32(0)), State(jnp.int32(4), jnp.int32(0))
      >>> updates, state = keep_old_if_nonfinite(jnp.array([jnp.nan]), jnp.array([1.0]), old, new)
      >>> updates.tolist(), int(state.step), int(state.skipped)
      ([0.0], 3, 1)
    """
    finite = all_finite(grads)
    keep = lambda n, o: jnp.where(finite, n, o)
    updates = jax.tree.map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), new_updates)
    state = jax.tree.map(keep, new._replace(skipped=old.skipped), old)
    skipped = cast(jax.Array, old.skipped)  # present: skip_nonfinite made the state
    return updates, state._replace(skipped=skipped + jnp.where(finite, 0, 1).astype(jnp.int32))


# ------------------------------------------------------------------ checks at init/update


def check_float_leaves(name: str, tree: PyTree, *, what: str = "parameters") -> None:
    """Raises ``TypeError`` at the first leaf of ``tree`` that is not a float/complex array.

    ``name`` is the optimizer's (it starts the message); ``what`` names the
    tree ("parameters", "gradients").

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.transforms.numerics import check_float_leaves
      >>> check_float_leaves("sgd", {"n": jnp.arange(2)})
      Traceback (most recent call last):
      ...
      TypeError: sgd optimizes floating-point parameters only; ['n'] has dtype int32. ...
    """

    def check(path: Any, leaf: Any) -> None:
        where = jax.tree_util.keystr(path) or f"the {what[:-1]}"
        try:
            dtype = jnp.result_type(leaf)
        except TypeError:
            raise TypeError(
                f"{name}: {what} must be arrays; {where} is a {type(leaf).__name__}"
            ) from None
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"{name} optimizes floating-point {what} only; {where} has dtype {dtype}. "
                f"Cast it (e.g. x.astype(jnp.float32)) or leave it out of the optimized tree."
            )

    jax.tree_util.tree_map_with_path(check, tree)


def check_state(
    name: str,
    state: Any,
    state_type: type,
    *,
    always: Sequence[tuple[str, bool, str]] = (),
    per_parameter: Sequence[tuple[str, bool, str]] = (),
    has_parameters: Callable[[Any], bool] | bool = True,
) -> None:
    """Refuses a state made by another transform, or by this one with other flags.

    Each ``(field, used, flag)`` says that ``state.field`` must be present
    exactly when ``used``; otherwise a ``ValueError`` names the field and
    ``flag``, the argument that decides it. ``per_parameter`` fields are per
    parameter trees, which are ``None`` for an empty tree of parameters, so
    they are checked only when ``has_parameters`` (a bool, or a function of the
    state, called once the state is known to be a ``state_type``).

    Example:
      >>> from typing import NamedTuple
      >>> from lucid_fx._src.transforms.numerics import check_state
      >>> class State(NamedTuple):
      ...     buffer: object
      >>> check_state("sgd", State(None), State, per_parameter=[("buffer", True, "momentum")])
      Traceback (most recent call last):
      ...
      ValueError: sgd: the state lacks buffer, so it was made by an sgd with a different ...
    """
    if not isinstance(state, state_type):
        raise TypeError(
            f"{name}: state must be the {state_type.__name__} made by this transform's init, "
            f"got {type(state).__name__}"
        )
    if callable(has_parameters):
        has_parameters = has_parameters(state)
    checks = list(always) + (list(per_parameter) if has_parameters else [])
    for field, used, flag in checks:
        if (getattr(state, field) is not None) != used:
            raise ValueError(
                f"{name}: the state {'lacks' if used else 'has'} {field}, so it was made by "
                f"an {name} with a different {flag}; make it with this transform's init"
            )


def check_update_trees(
    name: str,
    structure: PyTree | None,
    updates: Updates,
    params: PyTree | None,
    *,
    needs_params: str | None = None,
    stateless: bool = False,
) -> None:
    """Checks the gradients (and the parameters, when needed) before an update.

    ``structure`` is a per-parameter tree of the state; the gradients and
    parameters must match it (paths and shapes). A transform that keeps no
    per-parameter state (plain SGD) passes ``stateless=True``: the gradients
    then set the structure the parameters must match. ``needs_params`` is the
    reason ``params`` must be given (for instance ``"weight_decay is
    non-zero"``), or ``None`` when they are optional.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.transforms.numerics import check_update_trees
      >>> g = {"w": jnp.ones(2)}
      >>> check_update_trees("sgd", g, g, None, needs_params="weight_decay is non-zero")
      Traceback (most recent call last):
      ...
      ValueError: sgd: weight_decay is non-zero, so update() needs params: ...
    """
    if not stateless:
        check_same_structure(structure, updates, what="gradients", against="the state")
    check_float_leaves(name, updates, what="gradients")
    if needs_params is not None:
        if params is None:
            raise ValueError(
                f"{name}: {needs_params}, so update() needs params: "
                "call tx.update(grads, state, params)"
            )
        against, what = (updates, "the gradients") if stateless else (structure, "the state")
        check_same_structure(against, params, what="params", against=what)


def lerp(start: jax.Array, end: jax.Array, weight: jax.Array) -> jax.Array:
    """start + weight·(end - start), exact at both ends (weight 0 gives start, 1 gives end);
    torch.lerp's two forms.

    The form is chosen by the weight: from ``start`` for weight < 0.5, from
    ``end`` otherwise, so that neither endpoint is lost to rounding.
    """
    diff = end - start
    if not isinstance(weight, jax.core.Tracer) and np.ndim(weight) == 0:  # choose it here
        return start + weight * diff if weight < 0.5 else end - diff * (1 - weight)
    return jnp.where(weight < 0.5, start + weight * diff, end - diff * (1 - weight))


def one_minus_power(one_minus_beta: jax.Array, t: jax.Array) -> jax.Array:
    """1 - β^t from 1 - β, without the cancellation of forming β^t first.

    In float32, β₂ = 0.999 rounds to 0.99900001, so 1 - β₂^t formed from it
    is 0.00099998713 at t = 1, 1.3e-5 off (torch forms it in float64). From
    1 - β, formed in β's own precision, it is as exact as float32 allows.
    """
    return -jnp.expm1(t * jnp.log1p(-one_minus_beta))


def wide_product(a: Any, b: Any, dtype: Any) -> Any:
    """a·b from the factors' own precision (double for numbers and PreciseScalars), but
    never narrower than ``dtype``: a float32 schedule's η under float64 math would
    otherwise round η·λ, and so 1 - η·λ, to float32."""
    def wide(x: Any) -> Any:
        if isinstance(x, (jax.Array, np.ndarray, np.floating)):
            x = jnp.asarray(x)
            return x.astype(jnp.promote_types(x.dtype, dtype))
        return x

    return wide(a) * wide(b)
