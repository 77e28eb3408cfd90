"""The ``init``/``update`` skeleton every optimizer of the family shares, written once.

An optimizer of the family is its own validation, its kernel — one pure
function from one parameter's gradient (and state arrays) to the terms it adds
to the parameter and the new state arrays — and the same plumbing around it.
:func:`kernel_transform` is that plumbing, built from the state's NamedTuple and
its declared schema (:mod:`lucid_fx._src.core.schema`):

- ``init``: the parameters are float arrays (real ones where the schema says
  ``real_only``); ``step`` is 0; every array field
  is laid out like its parameter (or in its declared shape), zero or its
  ``initial`` value, and ``None`` while its switch is off; every per-parameter
  number (NAdam's ``mu_product``) is one 0-d value; ``skipped`` is 0 with
  ``skip_nonfinite``.
- ``update``, leaf by leaf (:func:`map_kernel`), in torch's order::

      g ← -g                                   (maximize)
      g ← g + λ·θ                              (weight_decay λ, coupled: L2)
      (u₁, …, uₖ, b₁', …, bₙ') = kernel(g, b₁, …, bₙ, **kernel_args(state, t))
      θ_t = θ·(1 - η·λ) + u₁ + … + uₖ          (decoupled: AdamW's)
      θ_t = θ + u₁ + … + uₖ                    (otherwise)

  returned as the update ``θ_t - θ``; the state gets step t, the kernel's arrays
  and the fields ``advance(state, t)`` gives. With ``skip_nonfinite`` a step with
  a non-finite gradient is zero updates and the old state, counted in ``skipped``.

The arithmetic runs in the widest dtype of the gradient and the state arrays, at
least float32 (:func:`~lucid_fx._src.core.dtypes.compute_dtype`); each result is
rounded to its own array's dtype. A kernel whose parameters torch updates as
pairs of reals (``torch.view_as_real``) runs on real and imaginary parts apart
(:func:`componentwise`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar, cast

import jax
import jax.numpy as jnp
import numpy as np

from lucid_fx._src.core import schema
from lucid_fx._src.core.base import GradientTransformation, Params, PyTree, Updates
from lucid_fx._src.core.dtypes import cast_scalar, compute_dtype, real_dtype
from lucid_fx._src.core.placement import zeros_like_param
from lucid_fx._src.core.validation import (
    check_flag,
    check_float_dtype,
    check_float_leaves,
    check_hyperparameter,
    check_real_leaves,
    check_same_structure,
    check_state,
    check_update_trees,
    is_static_zero,
)
from lucid_fx._src.transforms.numerics import wide_product

INT32_MAX = np.iinfo(np.int32).max
"""The largest step count; :func:`next_step` stays there instead of wrapping to < 0."""

Kernel = Callable[..., tuple[Any, ...]]
State = TypeVar("State")
PerStep = Callable[[State, jax.Array], Mapping[str, Any]]
"""``(old state, t) -> keyword arguments``; t = ``next_step(state.step)``, 1 at the first update."""

_OWNED = ("step", "skipped")  # every state has them; the skeleton keeps them


# ------------------------------------------------------------------ mapping a kernel


def tree_leaves_or_none(structure: Any, tree: PyTree | None) -> list[Any]:
    """The leaves of ``tree`` as laid out by ``structure``; ``None`` gives a ``None`` per leaf.

    ``structure`` is a pytree (or a ``PyTreeDef``); ``tree`` must have its
    structure, and may have more below each leaf (as ``flatten_up_to``).

    Example:
      >>> from lucid_fx._src.transforms.kernel_transform import tree_leaves_or_none
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
    batch_same_shapes: bool = False,
    **kernel_args: Any,
) -> tuple[PyTree | None, ...]:
    """Applies ``kernel(*leaves, **kernel_args)`` leaf by leaf; returns one tree per output.

    ``trees`` are laid out by ``structure`` (a pytree or a ``PyTreeDef``); a
    tree given as ``None`` (a buffer that is switched off) passes ``None`` to
    every call. The kernel returns a tuple; column ``i`` of the results comes
    back as a tree of ``structure``, or as ``None`` when ``present[i]`` is
    False (that buffer is switched off). Presence is decided by the caller's
    flags, not by the kernel's ``None`` results, so that the state keeps one
    structure for an empty tree of parameters (no leaves, no results) too.

    With ``batch_same_shapes``, leaves whose inputs have one shape and dtype each
    are stacked and the kernel runs once over the stack (``jax.vmap``): a matrix
    kernel (Muon's Newton–Schulz) then runs one batched chain of matmuls for a
    model's dozens of equal-shape weights. The results are the per-leaf ones.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.transforms.kernel_transform import map_kernel
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
    rows = list(zip(*[tree_leaves_or_none(treedef, tree) for tree in trees]))
    if batch_same_shapes:
        outs = _batched(kernel, rows, kernel_args)
    else:
        outs = [kernel(*leaves, **kernel_args) for leaves in rows]
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


def _signature(leaves: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(None if x is None else (np.shape(x), jnp.result_type(x)) for x in leaves)


def _batched(kernel: Kernel, rows: list[tuple[Any, ...]], kernel_args: Mapping[str, Any]
             ) -> list[tuple[Any, ...]]:
    """The kernel's results per row, rows of one signature run as one vmapped stack."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, leaves in enumerate(rows):
        groups.setdefault(_signature(leaves), []).append(i)
    outs: list[tuple[Any, ...] | None] = [None] * len(rows)
    for members in groups.values():
        if len(members) == 1:
            outs[members[0]] = kernel(*rows[members[0]], **kernel_args)
            continue
        stacked = [None if rows[members[0]][k] is None else jnp.stack([rows[i][k] for i in members])
                   for k in range(len(rows[members[0]]))]
        results = jax.vmap(functools.partial(kernel, **kernel_args))(*stacked)
        for j, i in enumerate(members):
            outs[i] = tuple(None if r is None else r[j] for r in results)
    return cast(list[tuple[Any, ...]], outs)


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
      >>> from lucid_fx._src.transforms.kernel_transform import componentwise
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


def scheduled(value: Any, count: jax.Array) -> Any:
    """``value(count)`` for a schedule (a callable), else ``value`` itself.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.transforms.kernel_transform import scheduled
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
      >>> from lucid_fx._src.transforms.kernel_transform import INT32_MAX, next_step
      >>> next_step(jnp.int32(0)).tolist(), next_step(jnp.int32(INT32_MAX)).tolist()
      (1, 2147483647)
    """
    return jnp.minimum(step, INT32_MAX - 1) + 1


def all_finite(tree: PyTree) -> jax.Array:
    """True (a 0-d bool array) when no leaf of ``tree`` holds NaN or ±Inf.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.transforms.kernel_transform import all_finite
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
      >>> from lucid_fx._src.transforms.kernel_transform import keep_old_if_nonfinite
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


# ------------------------------------------------------------------ the skeleton


class WeightDecay(NamedTuple):
    """λ and how it enters: added to the gradient (torch's L2, ``coupled``) or as
    ``θ ← θ·(1 - η·λ)`` before the kernel's terms (AdamW's, ``decoupled``)."""

    value: Any
    decoupled: bool = False

    @property
    def used(self) -> bool:
        return not is_static_zero(self.value)


NO_WEIGHT_DECAY = WeightDecay(0)


def _with_weight_decay(kernel: Kernel, decay: WeightDecay, reads_param: bool) -> Kernel:
    """``kernel`` as one leaf's whole step: the gradient into the arithmetic's dtype and
    decayed, the kernel, and its terms added to θ in order (see the module)."""

    def step(grad: jax.Array, param: jax.Array | None, *arrays: Any,
             **kernel_args: Any) -> tuple[Any, ...]:
        compute = compute_dtype(grad, param if reads_param else None, *arrays)
        real = real_dtype(compute)
        g = grad.astype(compute)
        theta = None if param is None or not (decay.used or reads_param) else param.astype(compute)
        if decay.used and not decay.decoupled and theta is not None:
            g = g + cast_scalar(decay.value, real) * theta
        terms, *new_arrays = kernel(g, *([param] if reads_param else []), *arrays, **kernel_args)
        terms = terms if isinstance(terms, tuple) else (terms,)
        if decay.used and decay.decoupled and theta is not None:
            # θ·(1 - ηλ), 1 - ηλ rounded once from η·λ at least as wide as the math; then
            # the terms in torch's order, and back to an update: θ + (θ_t - θ) gives θ_t
            # exactly whenever θ_t is within a factor 2 of θ (Sterbenz).
            total = theta * cast_scalar(1 - wide_product(kernel_args["lr"], decay.value, real),
                                        real)
            for term in terms:
                total = total + term
            delta = total - theta
        else:
            delta = functools.reduce(lambda a, b: a + b, terms)
        return (delta.astype(grad.dtype), *new_arrays)

    return step


def _check_shapes_by_rule(declared: schema.Schema, state: Any, updates: Updates,
                          params: Params | None, fields: Sequence[str]) -> None:
    """A shape-aware state's arrays have their own shapes (Adafactor's row factor: the
    parameter's, last dimension 1): each gradient must give the state's shapes by the
    schema's rules, and the parameters the gradients' shapes."""
    grads = jax.tree_util.tree_flatten_with_path(updates)[0]
    for field in fields:
        leaves = tree_leaves_or_none(updates, getattr(state, field))
        for (path, g), held in zip(grads, leaves):
            expected = declared.fields[field].shape_for(np.shape(g))
            if (None if held is None else np.shape(held)) != expected:
                raise ValueError(
                    f"gradients do not match the state: {jax.tree_util.keystr(path)} has "
                    f"shape {np.shape(g)}, but the state's {field} there is "
                    f"{'absent' if held is None else f'of shape {np.shape(held)}'}"
                )
    if params is not None:
        check_same_structure(updates, params, what="params", against="the gradients")


def kernel_transform(
    name: str,
    state_type: type[State],
    kernel: Kernel,
    *,
    kernel_args: PerStep[State],
    maximize: bool,
    skip_nonfinite: bool,
    state_dtype: Any | None,
    weight_decay: WeightDecay = NO_WEIGHT_DECAY,
    switches: Mapping[str, Any] | None = None,
    complex_parts: bool = True,
    reads_param: str | None = None,
    initial: Mapping[str, Any] | None = None,
    advance: PerStep[State] | None = None,
    batch_same_shapes: bool = False,
) -> GradientTransformation:
    r"""The :class:`GradientTransformation` that runs ``kernel`` with the shared plumbing.

    ``state_type`` is the optimizer's NamedTuple with its declared schema: it
    has ``step`` (``schema.step_count()``) and ``skipped`` (``schema.skipped_count()``);
    its array fields, in their order, are the kernel's inputs after g (and θ), and
    the kernel returns ``(terms, *new arrays)`` in the same order: ``terms`` is the
    amount added to θ, or a tuple of amounts added one after the other (NAdam's
    two ``addcdiv``), in the arithmetic's dtype.

    Args:
      name: the optimizer's name, which starts its error messages ("adam").
      state_type: the state's NamedTuple (with ``@schema.declare``).
      kernel: the per-leaf function: ``kernel(g, [θ,] *arrays, **kernel_args)``,
        g already in the arithmetic's dtype, negated and decayed.
      kernel_args: the kernel's keyword arguments for one update, from the old state
        and t (``lr=scheduled(lr, state.step)``, ``step=t``, the constants); with
        decoupled weight decay they hold ``lr``.
      maximize: negate the gradients first.
      skip_nonfinite: a step with a NaN or Inf gradient changes nothing and
        counts into ``state.skipped`` (:func:`keep_old_if_nonfinite`).
      state_dtype: the arrays' dtype, as the schema's rule applies it (default:
        each parameter's own).
      weight_decay: λ, coupled or decoupled (:class:`WeightDecay`); a static 0 reads no θ.
      switches: the values of the arguments the schema's switches name
        (``{"amsgrad": amsgrad}``); an array switched off is ``None`` in the state
        and for the kernel, and a state made with other switches is refused.
      complex_parts: the kernel runs on real and imaginary parts apart, as
        torch's ``view_as_real`` (:func:`componentwise`); ``False`` where it
        handles complex arrays itself (RMSprop's ``|g|²``).
      reads_param: why the kernel itself reads θ (ASGD's averages), or ``None``:
        it then takes no θ after g.
      initial: an array's or per-parameter number's starting value (a number
        per real component; a schedule starts at its value for count 0); arrays
        not named start at 0, every other per-parameter number must be named.
      advance: the new values of the state's fields other than step and the
        arrays (ASGD's η and μ, NAdam's Π), from the old state and t.
      batch_same_shapes: run the kernel once over each stack of equal-shape leaves
        (:func:`map_kernel`), for kernels of matrix products.

    Returns:
      ``GradientTransformation(init, update)`` whose state is ``state_type``.

    Example — SGD without momentum, ``θ ← θ - η·g``, on a state with no array:

      >>> from typing import NamedTuple
      >>> import jax, jax.numpy as jnp
      >>> from lucid_fx._src.core import schema
      >>> from lucid_fx._src.transforms.kernel_transform import kernel_transform
      >>> @schema.declare(step=schema.step_count(), skipped=schema.skipped_count())
      ... class PlainState(NamedTuple):
      ...     step: jax.Array
      ...     skipped: jax.Array | None
      >>> tx = kernel_transform(
      ...     "plain", PlainState, lambda g, *, lr: (-lr * g,),
      ...     kernel_args=lambda state, t: {"lr": 0.5}, maximize=False, skip_nonfinite=False,
      ...     state_dtype=None)
      >>> updates, state = tx.update({"w": jnp.array([2.0])}, tx.init({"w": jnp.zeros(1)}))
      >>> updates["w"].tolist(), int(state.step)
      ([-1.0], 1)
    """
    check_flag("maximize", maximize)
    check_flag("skip_nonfinite", skip_nonfinite)
    check_float_dtype("state_dtype", state_dtype)
    check_hyperparameter("weight_decay", weight_decay.value)
    check_flag("decoupled_weight_decay", weight_decay.decoupled)
    declared = schema.of_state(state_type)
    fields = declared.fields
    options = {**(switches or {}), "skip_nonfinite": skip_nonfinite}
    initial = dict(initial or {})
    arrays = [f for f, field in fields.items() if field.kind == "array"]
    scalars = [f for f, field in fields.items() if field.kind == "scalar" and f not in _OWNED]
    # Programming errors of a factory, caught when it is built.
    if not set(declared.switches.values()) <= set(options) or not set(initial) <= {
            *arrays, *scalars} or not set(scalars) <= set(initial) or not set(_OWNED) <= set(
            fields):
        raise TypeError(
            f"{name}: {state_type.__name__}'s fields {tuple(fields)} need step and skipped, "
            f"the switches {sorted(declared.switches.values())} (got {sorted(options)}) and "
            f"initial values for its per-parameter numbers {scalars} (got {sorted(initial)})"
        )
    present = {f: declared.switched_on(f, options) for f in arrays}
    in_use = [f for f in arrays if present[f]]
    # The state's per-parameter trees set the structure, one shaped like the parameters
    # where there is one; with none (SGD without momentum) the gradients do.
    reference = next((f for f in in_use if fields[f].shape is None), in_use[0] if in_use else None)
    like_params = reference is None or fields[reference].shape is None
    always = next((f for f in arrays if fields[f].switch is None), None)
    step_fn = _with_weight_decay(kernel, weight_decay, reads_param is not None)
    if complex_parts:
        step_fn = componentwise(step_fn)
    needs_params = reads_param or ("weight_decay is non-zero" if weight_decay.used else None)

    def has_parameters(state: Any, updates: Updates) -> bool:
        # An empty tree of params has None for every array: nothing to compare there.
        if always is not None:
            return getattr(state, always) is not None
        # Without an array that is always there, only one that should not be there can
        # be told apart, so "lacks" is checked against the gradients' leaves.
        return any(getattr(state, f) is not None for f in arrays) or (
            bool(in_use) and bool(jax.tree.leaves(updates)))

    def start(field: str, params: Params) -> Any:
        value = scheduled(initial.get(field, 0), jnp.zeros((), jnp.int32))
        spec = fields[field]
        if spec.kind != "array":  # one value for the whole tree
            dtype = spec.tree_dtype(params, state_dtype)
            return jnp.asarray(cast_scalar(value, dtype)).reshape(())

        def leaf(p: jax.Array) -> jax.Array | None:
            shape = spec.shape_for(np.shape(p))
            if shape is None:
                return None
            dtype = spec.dtype_for(jnp.result_type(p), state_dtype)
            zeros = zeros_like_param(p, dtype) if spec.shape is None else jnp.zeros(shape, dtype)
            if is_static_zero(value):
                return zeros
            fill = cast_scalar(value, real_dtype(dtype))
            if jnp.issubdtype(dtype, jnp.complexfloating):
                fill = jax.lax.complex(fill, fill)  # both components start there
            return zeros + fill

        return jax.tree.map(leaf, params) if present[field] else None

    def init(params: Params) -> State:
        check_float_leaves(name, params)
        if declared.real_only:
            check_real_leaves(state_type.__name__.removesuffix("State"), params)
        make: Callable[..., State] = state_type  # a NamedTuple: called with its fields
        return make(
            step=jnp.zeros((), jnp.int32),
            skipped=jnp.zeros((), jnp.int32) if skip_nonfinite else None,
            **{f: start(f, params) for f in (*arrays, *scalars)},
        )

    def update(
        updates: Updates, state: Any, params: Params | None = None
    ) -> tuple[Updates, State]:
        check_state(
            name, state, state_type,
            always=[("skipped", skip_nonfinite, "skip_nonfinite")],
            per_parameter=[(f, present[f], switch) for f in arrays
                           if (switch := fields[f].switch) is not None],
            has_parameters=lambda s: has_parameters(s, updates),
        )
        structure = None if reference is None else getattr(state, reference)
        check_update_trees(name, structure, updates, params, needs_params=needs_params,
                           stateless=reference is None, shapes=like_params)
        if not like_params:  # no state tree has the parameters' shapes: the rules say
            _check_shapes_by_rule(declared, state, updates, params, in_use)
        grads = jax.tree.map(jnp.negative if maximize else jnp.asarray, updates)
        step = next_step(state.step)
        theta = params if needs_params is not None else None
        deltas, *new_arrays = map_kernel(
            step_fn,
            jax.tree.structure(grads if structure is None or not like_params else structure),
            grads, theta,
            *(getattr(state, f) for f in arrays),
            present=(True, *present.values()),
            batch_same_shapes=batch_same_shapes,
            **kernel_args(state, step),
        )
        new_state = state._replace(
            step=step, **dict(zip(arrays, new_arrays)),
            **(advance(state, step) if advance is not None else {}),
        )
        if skip_nonfinite:
            return cast(tuple[Updates, State],
                        keep_old_if_nonfinite(grads, deltas, state, new_state))
        return deltas, cast(State, new_state)

    return GradientTransformation(init, update)
