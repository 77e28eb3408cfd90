"""The compiled step over packed Parameters, and the state it needs.

``fx.Optimizer.step`` is one call of :func:`compiled_step`: every group and every
pack (:mod:`lucid_fx._src.stateful.storage`) of the optimizer, stepped by the
transform's ``update`` inside one jitted, donated function (one per platform: on
CPU compiled with :data:`CPU_COMPILER_OPTIONS`). How a pack meets the transform
follows its layout:

- a flat buffer is one array to the transform; its per-parameter numbers (a
  step count) are a vector with one entry per Parameter, spread over the
  buffer's elements for the element-wise math and read back after;
- a stack runs the transform once per Parameter, all at once (``jax.vmap``):
  each sees its own array, its own state and its own numbers;
- a single array is the transform's one array.

The step compiles once per structure: the non-traced hyper-parameters
(:func:`split_hyperparameters`), the packs' layouts, and which state fields
exist. So every state arrives complete for its configuration
(:func:`complete_state`), shaped as :func:`pack_template` says, from the
factory's declared schema (:mod:`lucid_fx._src.core.schema`).

Example:
  >>> import lucid_fx as fx
  >>> from lucid_fx._src.stateful.steps import compiled_out_switches
  >>> compiled_out_switches(fx.sgd)
  {'momentum': 'momentum_buffer'}
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from typing import Any, NamedTuple, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np

from lucid_fx._src.core import schema
from lucid_fx._src.core.base import GradientTransformation, apply_updates
from lucid_fx._src.core.layout import Layout
from lucid_fx._src.core.placement import commit_like
from lucid_fx._src.core.scalars import PreciseScalar, as_precise, is_static
from lucid_fx._src.core.validation import is_static_zero
from lucid_fx._src.stateful.storage import ParamPack

PackState: TypeAlias = Any  # the factory's state NamedTuple over one pack
Factory: TypeAlias = Callable[..., GradientTransformation]
StaticKey: TypeAlias = tuple[tuple[str, Any], ...]  # the non-traced hyper-parameters


@cache
def compiled_out_switches(factory: Factory) -> dict[str, str]:
    """Argument -> the state field its value 0 (or False) removes (momentum's buffer)."""
    return {arg: field for field, arg in schema.of(factory).switches.items()
            if arg != "skip_nonfinite"}


def skip_switch(factory: Factory) -> str | None:
    """The argument with which the transform skips a step on non-finite gradients."""
    skipped = schema.of(factory).fields.get("skipped")
    return None if skipped is None else skipped.switch


def traced_shapes(arrays: Mapping[str, Any]) -> tuple[tuple[str, int | None], ...]:
    """The traced hyper-parameters' names and, for pairs (betas), lengths: a cache key."""
    return tuple(sorted((name, len(value) if isinstance(value, tuple) else None)
                        for name, value in arrays.items()))


def split_hyperparameters(
    factory: Factory, group: Mapping[str, Any], names: Iterable[str],
    compiled_out_at_zero: Sequence[str], states: Sequence[PackState | None],
) -> tuple[StaticKey, dict[str, Any]]:
    """Splits a group's hyper-parameters ``names`` into the compile key and the traced arrays.

    Python bools and strings are static, and so are the numbers the factory declares
    structural (:func:`~lucid_fx._src.core.schema.static_arguments`). A Python or NumPy 0 (never an array, whose
    value would have to be read back: :func:`~lucid_fx._src.core.validation.is_static_zero`,
    as the functional face decides) is static too where it removes work
    (``compiled_out_at_zero``) or a state field that no pack of the group
    (``states``) holds yet; any other number is traced, so a new value does not
    recompile.
    """
    switches = compiled_out_switches(factory)
    structural = schema.static_arguments(factory)
    static: list[tuple[str, Any]] = []
    arrays: dict[str, Any] = {}
    for name in names:
        value = group[name]
        field = switches.get(name)
        if is_static(value) or name in structural:
            static.append((name, bool(value) if isinstance(value, np.bool_) else value))
        elif is_static_zero(value) and (name in compiled_out_at_zero or (field is not None and not any(
            getattr(state, field, None) is not None for state in states
        ))):
            static.append((name, 0))
        else:
            # At double precision: torch forms 1 - β in float64 (PreciseScalar).
            arrays[name] = as_precise(value)
    return tuple(static), arrays


def _instance(layout: Layout) -> jax.ShapeDtypeStruct:
    """What the transform sees of a pack: the buffer, or one array of a stack."""
    shape = layout.shapes[0] if layout.kind == "stacked" else layout.buffer_shape
    return jax.ShapeDtypeStruct(shape, layout.dtype)


@cache
def pack_template(
    factory: Factory,
    static: StaticKey,
    array_shapes: tuple[tuple[str, int | None], ...],
    layout: Layout,
) -> dict[str, jax.ShapeDtypeStruct | None]:
    """Field -> shape/dtype (or None when unused) of a pack's state in this configuration."""
    scalar = PreciseScalar.spec()
    hyper = {name: scalar if n is None else (scalar,) * n for name, n in array_shapes}
    state = jax.eval_shape(lambda h, b: factory(**dict(static), **h).init(b), hyper,
                           _instance(layout))
    fields = schema.of(factory).fields
    template: dict[str, jax.ShapeDtypeStruct | None] = {}
    for name, t in state._asdict().items():
        kind = fields[name].kind
        if t is None or kind == "whole":
            template[name] = t
        elif kind == "scalar":  # one per parameter of the pack
            template[name] = jax.ShapeDtypeStruct((len(layout),), t.dtype)
        elif layout.kind == "stacked":
            template[name] = jax.ShapeDtypeStruct((len(layout), *t.shape), t.dtype)
        else:
            template[name] = t
    return template


def masked(mask: jax.Array | None, layout: Layout, kind: str, new: Any, old: Any) -> Any:
    """``new`` where the slot stepped, ``old`` elsewhere."""
    if mask is None or old is None or new is None or kind == "whole":
        return new
    if kind == "scalar":
        return jnp.where(mask, new, old)
    if layout.kind == "stacked":  # any array of the stack's state: one row per Parameter
        return jnp.where(jnp.reshape(mask, (len(layout),) + (1,) * (new.ndim - 1)), new, old)
    return jnp.where(layout.slot_mask(mask).reshape(new.shape), new, old)


def _fresh(factory: Factory, static: StaticKey, arrays: dict[str, Any], pack: ParamPack,
           template: Mapping[str, Any]) -> dict[str, Any]:
    """The transform's ``init`` laid out as ``template``: each Parameter's starting state."""
    tx = factory(**dict(static), **arrays)
    stacked = pack.layout.kind == "stacked"
    # A stack's Parameters start alike (init reads shapes, never values): one, repeated.
    fresh = tx.init(pack.buffer[0] if stacked else pack.buffer)
    fields = {}
    for name, t in template.items():
        value = getattr(fresh, name)
        if t is None or value is None:
            fields[name] = value
        elif stacked or schema.of(factory).fields[name].kind == "scalar":
            fields[name] = commit_like(pack.buffer, jnp.broadcast_to(value, t.shape).astype(
                t.dtype))
        else:  # an array not made like its parameter (a row factor) is committed here
            fields[name] = commit_like(pack.buffer, value)
    return fields


def complete_state(
    factory: Factory, state: PackState | None, initialized: np.ndarray, pack: ParamPack,
    static: StaticKey, arrays: dict[str, Any],
) -> PackState:
    """The pack's state with every field this configuration uses, each Parameter's
    starting where the transform's ``init`` starts it at that Parameter's first step.

    ``state`` is the pack's state so far (``None`` before its first step) and
    ``initialized`` says which slots have state. torch creates a Parameter's
    state at its first step, with the hyper-parameters of then (Rprop's step
    size is the lr of then): so the slots that step for the first time, and
    every field that is new, are taken from a fresh ``init`` with the current
    hyper-parameters. Made here rather than inside the compiled step, so that
    the step's input and output states have one structure and it compiles
    once, also when momentum or centered is switched on mid-run.
    """
    template = pack_template(factory, static, traced_shapes(arrays), pack.layout)
    first = pack.has_grad & ~initialized  # slots stepping for the first time
    if state is not None and not first.any() and all(
        getattr(state, name) is not None for name, t in template.items() if t is not None
    ):
        return state
    fresh = _fresh(factory, static, arrays, pack, template)
    fields = schema.of(factory).fields
    out = {}
    for name, t in template.items():
        old = None if state is None else getattr(state, name)
        kind = fields[name].kind
        if t is None or (old is not None and kind == "whole"):
            out[name] = old
        elif old is None:
            out[name] = fresh[name]
        elif first.any():
            out[name] = masked(first, pack.layout, kind, fresh[name], old)
        else:
            out[name] = old
    return schema.state_type_of(factory)(**out)


def _update_pack(tx: GradientTransformation, layout: Layout, fields: Mapping[str, Any],
                 g: jax.Array, state: PackState, value: jax.Array) -> tuple[Any, PackState]:
    """The transform's update of one pack, as its layout asks (see the module)."""
    present = {name: getattr(state, name) is not None for name in state._fields}
    if layout.kind == "stacked":
        axes = type(state)(*(0 if present[n] and fields[n].kind != "whole" else None
                             for n in state._fields))
        update, new = jax.vmap(tx.update, in_axes=(0, axes, 0),
                               out_axes=(0, type(state)(*(0,) * len(state))))(g, state, value)
        # A whole-state count comes out once per Parameter, all alike.
        return update, new._replace(**{n: getattr(new, n)[0] for n in new._fields
                                       if present[n] and fields[n].kind == "whole"})
    # Per-parameter numbers reach the math per element (Adam's bias correction differs
    # between the parameters of one buffer) and come back per parameter.
    scalars = [n for n in state._fields if present[n] and fields[n].kind == "scalar"]
    state = state._replace(**{n: layout.per_element(getattr(state, n)) for n in scalars})
    update, new = tx.update(g, state, value)
    return update, new._replace(**{n: layout.per_array(getattr(new, n)) for n in scalars})


def _step(
    factory: Factory,
    keys: tuple[tuple[StaticKey, tuple[tuple[Layout, bool], ...]], ...],
    skip_flag: str | None,
    hypers: list[dict[str, Any]],
    buffers: list[list[jax.Array]],
    grads: list[list[jax.Array]],
    states: list[list[PackState | None]],
    masks: list[list[jax.Array | None]],
) -> tuple[list[list[jax.Array]], list[list[PackState]]]:
    """One step for every group and pack, traced once per structure.

    A pack where only some parameters have gradients is stepped whole and the
    others are masked back. Every state arrives complete (new arrays are made
    before the call); a field that the configuration does not use (``grad_avg``
    after ``centered`` is turned off) is carried through unchanged.
    """
    skipping = [skip_flag is not None and bool(dict(static).get(skip_flag)) for static, _ in keys]
    if any(skipping):
        # One non-finite gradient anywhere poisons every gradient of the skipping
        # groups, so each pack's own check skips (and counts) this step.
        finite = jnp.all(jnp.asarray(
            [jnp.all(jnp.isfinite(g)) for skip, grs in zip(skipping, grads) if skip for g in grs]
        ))
        grads = [
            [jnp.where(finite, g, jnp.nan) for g in grs] if skip else grs
            for skip, grs in zip(skipping, grads)
        ]
    fields = schema.of(factory).fields
    new_buffers, new_states = [], []
    for (static, pack_keys), hyper, bufs, grs, sts, mks in zip(
        keys, hypers, buffers, grads, states, masks
    ):
        tx = factory(**dict(static), **hyper)
        group_buffers, group_states = [], []
        for (layout, _), value, g, old, mask in zip(pack_keys, bufs, grs, sts, mks):
            # `old` is complete for this configuration (complete_state);
            # the transform sees only the fields it uses.
            template = pack_template(factory, static, traced_shapes(hyper), layout)
            used = old._replace(**{name: None for name, t in template.items() if t is None})
            update, new = _update_pack(tx, layout, fields, g, used, value)
            new_value = masked(mask, layout, "array", apply_updates(value, update), value)
            new = type(new)(*(
                # re-attach unchanged the fields this configuration leaves alone
                o if n is None else masked(mask, layout, fields[name].kind, n, o)
                for name, n, o in zip(new._fields, new, old)
            ))
            group_buffers.append(new_value)
            group_states.append(new)
        new_buffers.append(group_buffers)
        new_states.append(group_states)
    return new_buffers, new_states


# XLA:CPU keeps a defensive copy of a donated buffer when one output's loop overwrites
# it while another output's loop still reads it (ASGD's θ, read by the average; Rprop's
# step sizes and previous gradient); its region analysis proves an order that needs no
# copy. One 16M-float Parameter on 2 cores: fx.ASGD's step 45 -> 14 ms, fx.Rprop's
# 83 -> 55 ms; the other optimizers compile to the same loops and bytes as without it.
CPU_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


class StepArgs(NamedTuple):
    """The arguments of one call of :func:`compiled_step`'s function, by name: per group,
    its compile key and traced hyper-parameters, and per stepping pack its buffer,
    folded gradient, complete state and mask (``None``: every slot has a gradient)."""

    factory: Factory
    keys: tuple[tuple[StaticKey, tuple[tuple[Layout, bool], ...]], ...]
    skip_flag: str | None
    hypers: list[dict[str, Any]]
    buffers: list[list[jax.Array]]
    grads: list[list[jax.Array | None]]  # folded_grad(): never None for a pack that steps
    states: list[list[PackState | None]]
    masks: list[list[np.ndarray | None]]  # the packs' has_grad, host booleans


cpu_step = jax.jit(_step, static_argnums=(0, 1, 2), donate_argnums=(4, 6),
                   compiler_options=CPU_COMPILER_OPTIONS)
accelerator_step = jax.jit(_step, static_argnums=(0, 1, 2), donate_argnums=(4, 6))


def compiled_step(platform: str) -> Callable[..., Any]:
    """The jitted, donated step for buffers on ``platform``'s devices (``"cpu"``, ``"gpu"``, …).

    :data:`cpu_step`, compiled with :data:`CPU_COMPILER_OPTIONS`, on CPU;
    :data:`accelerator_step`, with XLA's defaults, elsewhere. Their arguments are a
    :class:`StepArgs`; the buffers and states are donated.
    """
    return cpu_step if platform == "cpu" else accelerator_step
