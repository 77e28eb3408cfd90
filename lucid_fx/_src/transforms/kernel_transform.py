"""The ``init``/``update`` skeleton every element-wise optimizer shares, written once.

An element-wise optimizer is its validation, its structural decisions (which
buffers exist, whether θ is read) and a kernel (:mod:`lucid_fx._src.transforms.numerics`).
Everything around the kernel is the same for all of them, and
:func:`elementwise_transform` builds it from the state's NamedTuple and its
schema (:mod:`lucid_fx._src.core.schema`):

- ``init``: checks the parameters are float arrays; ``step`` = 0; every
  ``buffer`` field of the schema laid out like the parameters, in the schema's
  dtype, zero or its ``initial`` value; every other per-parameter field (NAdam's
  ``mu_product``) one 0-d value; ``skipped`` = 0 when ``skip_nonfinite``.
- ``update``: checks the state and the trees; negates g when ``maximize``; runs
  the kernel over ``(g, θ, *buffers)`` leaf by leaf; the new state has the next
  step count, the kernel's buffers and the ``advance`` fields; with
  ``skip_nonfinite`` a non-finite step is zero updates and the old state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import jax
import jax.numpy as jnp

from lucid_fx._src.core import schema
from lucid_fx._src.core.base import GradientTransformation, Params, Updates
from lucid_fx._src.core.placement import zeros_like_param
from lucid_fx._src.core.validation import is_static_zero
from lucid_fx._src.transforms.numerics import (
    Kernel,
    check_float_leaves,
    check_state,
    check_update_trees,
    keep_old_if_nonfinite,
    map_kernel,
    next_step,
    real_dtype,
    scheduled,
)
from lucid_fx._src.transforms.numerics import (
    hyper as as_hyper,  # the name `hyper` is an argument here
)

State = TypeVar("State")
PerStep = Callable[[State, jax.Array], Mapping[str, Any]]
"""``(old state, t) -> keyword arguments``; t = ``next_step(state.step)``, 1 at the first update."""

_COMMON = ("step", "skipped")  # every state has them; the skeleton owns them


def elementwise_transform(
    name: str,
    state_type: type[State],
    kernel: Kernel,
    *,
    hyper: PerStep[State],
    maximize: bool,
    skip_nonfinite: bool,
    state_dtype: Any | None,
    switched: Mapping[str, tuple[str, bool]] | None = None,
    needs_params: str | None = None,
    takes_param: bool = True,
    initial: Mapping[str, Any] | None = None,
    advance: PerStep[State] | None = None,
) -> GradientTransformation:
    r"""The :class:`GradientTransformation` that runs ``kernel`` with the shared plumbing.

    ``state_type`` is the optimizer's NamedTuple with its declared schema: it
    has ``step`` (``schema.count()``) and ``skipped`` (``schema.counter()``);
    its ``buffer`` fields, in their order, are the kernel's inputs after g (and
    θ), and the kernel returns ``(delta, *new buffers)`` in the same order.
    Per step, with t = ``next_step(state.step)``::

        g ← -g                                   (maximize only)
        (δ, b₁', …, bₙ') = kernel(g, θ, b₁, …, bₙ, **hyper(state, t))   leaf by leaf
        state' = state with step = t, bᵢ = bᵢ', and the fields of advance(state, t)

    Args:
      name: the optimizer's name, which starts its error messages ("adam").
      state_type: the state's NamedTuple (with ``@state_schema.declare``).
      kernel: the per-leaf function (complex input through
        :func:`lucid_fx._src.transforms.numerics.componentwise` where torch splits it).
      hyper: the kernel's keyword arguments for one update, from the old state
        and t (``lr=scheduled(lr, state.step)``, ``step=t``, the constants).
      maximize: negate the gradients first.
      skip_nonfinite: a step with a NaN or Inf gradient changes nothing and
        counts into ``state.skipped``
        (:func:`lucid_fx._src.transforms.numerics.keep_old_if_nonfinite`).
      state_dtype: the buffers' dtype, as the schema's rule applies it (default:
        each parameter's own).
      switched: buffer -> (the argument that decides it, whether it exists):
        the schema's optional buffers (Adam's ``max_exp_avg_sq``: ``("amsgrad",
        amsgrad)``); a buffer switched off is ``None`` in the state and for the
        kernel. A state made with other switches is refused, naming the argument.
      needs_params: why ``update`` needs the parameters ("weight_decay is
        non-zero"), or ``None``: the kernel then gets ``None`` for θ.
      takes_param: whether the kernel has θ's place after g (Rprop's has not).
      initial: a buffer's or 0-d field's starting value (a number per real
        component; a schedule starts at its value for count 0); buffers not
        named start at 0, every other per-parameter field must be named.
      advance: the new values of the state's fields other than step and the
        buffers (ASGD's η and μ, NAdam's Π), from the old state and t.

    Returns:
      ``GradientTransformation(init, update)`` whose state is ``state_type``.

    Example — SGD without momentum, ``θ ← θ - η·g``, on a state with no buffer:

      >>> from typing import NamedTuple
      >>> import jax, jax.numpy as jnp
      >>> from lucid_fx._src.core import schema
      >>> from lucid_fx._src.transforms.kernel_transform import elementwise_transform
      >>> @schema.declare(step=schema.count(), skipped=schema.counter())
      ... class PlainState(NamedTuple):
      ...     step: jax.Array
      ...     skipped: jax.Array | None
      >>> tx = elementwise_transform(
      ...     "plain", PlainState, lambda g, p, *, lr: (-lr * g,),
      ...     hyper=lambda state, t: {"lr": 0.5}, maximize=False, skip_nonfinite=False,
      ...     state_dtype=None)
      >>> updates, state = tx.update({"w": jnp.array([2.0])}, tx.init({"w": jnp.zeros(1)}))
      >>> updates["w"].tolist(), int(state.step)
      ([-1.0], 1)
    """
    fields = schema.fields_of(state_type)
    switched = dict(switched or {})
    initial = dict(initial or {})
    buffers = [f for f, field in fields.items() if field.kind == "buffer"]
    scalars = [f for f, field in fields.items()
               if field.kind == "per_parameter" and f not in _COMMON]
    optional = {f for f in buffers if fields[f].optional}
    # Programming errors of a factory, caught when it is built.
    if set(switched) != optional or not set(initial) <= {*buffers, *scalars} or not (
            set(scalars) <= set(initial)) or not set(_COMMON) <= set(fields):
        raise TypeError(
            f"{name}: {state_type.__name__}'s fields {tuple(fields)} need step and skipped, "
            f"switched for exactly its optional buffers {sorted(optional)} (got "
            f"{sorted(switched)}) and initial values for its scalars {scalars} (got "
            f"{sorted(initial)})"
        )
    present = {f: switched[f][1] if f in switched else True for f in buffers}
    in_use = [f for f in buffers if present[f]]
    # The state's per-parameter trees set the structure; with none (SGD without
    # momentum) the gradients do.
    reference = in_use[0] if in_use else None
    always = next((f for f in buffers if f not in switched), None)

    def has_parameters(state: Any, updates: Updates) -> bool:
        # An empty tree of params has None for every buffer: nothing to compare there.
        if always is not None:
            return getattr(state, always) is not None
        # Without a buffer that is always there, only one that should not be there can
        # be told apart, so "lacks" is checked against the gradients' leaves.
        return any(getattr(state, f) is not None for f in buffers) or (
            bool(in_use) and bool(jax.tree.leaves(updates)))

    def start(field: str, params: Params) -> Any:
        value = scheduled(initial.get(field, 0), jnp.zeros((), jnp.int32))
        if fields[field].kind != "buffer":  # one value for the whole tree
            dtype = fields[field].tree_dtype(params, state_dtype)
            return jnp.asarray(as_hyper(value, dtype)).reshape(())

        def leaf(p: jax.Array) -> jax.Array:
            dtype = fields[field].dtype_for(jnp.result_type(p), state_dtype)
            zeros = zeros_like_param(p, dtype)
            if is_static_zero(value):
                return zeros
            fill = as_hyper(value, real_dtype(dtype))
            if jnp.issubdtype(dtype, jnp.complexfloating):
                fill = jax.lax.complex(fill, fill)  # both components start there
            return zeros + fill

        return jax.tree.map(leaf, params) if present[field] else None

    def init(params: Params) -> State:
        check_float_leaves(name, params)
        make: Callable[..., State] = state_type  # a NamedTuple: called with its fields
        return make(
            step=jnp.zeros((), jnp.int32),
            skipped=jnp.zeros((), jnp.int32) if skip_nonfinite else None,
            **{f: start(f, params) for f in (*buffers, *scalars)},
        )

    def update(
        updates: Updates, state: Any, params: Params | None = None
    ) -> tuple[Updates, State]:
        check_state(
            name, state, state_type,
            always=[("skipped", skip_nonfinite, "skip_nonfinite")],
            per_parameter=[(f, on, flag) for f, (flag, on) in switched.items()],
            has_parameters=lambda s: has_parameters(s, updates),
        )
        structure = None if reference is None else getattr(state, reference)
        check_update_trees(name, structure, updates, params, needs_params=needs_params,
                           stateless=reference is None)
        grads = jax.tree.map(jnp.negative if maximize else jnp.asarray, updates)
        step = next_step(state.step)
        theta = [params if needs_params is not None else None] if takes_param else []
        deltas, *new_buffers = map_kernel(
            kernel,
            jax.tree.structure(grads if structure is None else structure),
            grads,
            *theta,
            *(getattr(state, f) for f in buffers),
            present=(True, *present.values()),
            **hyper(state, step),
        )
        new_state = state._replace(
            step=step, **dict(zip(buffers, new_buffers)),
            **(advance(state, step) if advance is not None else {}),
        )
        if skip_nonfinite:
            return cast(tuple[Updates, State],
                        keep_old_if_nonfinite(grads, deltas, state, new_state))
        return deltas, cast(State, new_state)

    return GradientTransformation(init, update)
