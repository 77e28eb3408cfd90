"""An optimizer's state dict: torch's layout, cut from packs, checked whole, put back in packs.

The layout is torch's: ``{"state": {index: {key: np.ndarray}}, "param_groups":
[{..., "params": [index, ...]}]}``, with indices counting Parameters across
groups in order and the keys of the transform's state schema
(:mod:`lucid_fx._src.core.schema`). Saving cuts each Parameter's entry out of its
pack's host arrays (:func:`param_states`, :func:`framed`); loading checks
everything first (:func:`check_state_values`, :func:`validated`), so a bad
dict changes nothing, then assembles each pack's state from the entries
(:func:`pack_state_from_entries`). ``fx.Optimizer``'s ``state_dict`` and
``load_state_dict`` are these steps in order.

Example:
  >>> import jax.numpy as jnp, lucid_fx as fx
  >>> from lucid_fx._src.stateful.state_dict import check_state_values
  >>> check_state_values({"state": {0: {"step": -1}}}, {"step": "a step count"})
  Traceback (most recent call last):
  ...
  ValueError: state[0]['step'] holds a negative value (-1); a step count is never negative: the state dict was edited or corrupted
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeAlias

import jax
import numpy as np

from lucid_fx._src.core import schema
from lucid_fx._src.core.base import GradientTransformation
from lucid_fx._src.core.placement import commit_like, put_like, to_host
from lucid_fx._src.core.schema import Field
from lucid_fx._src.interop import torch as torch_compat
from lucid_fx._src.interop.host import host_array
from lucid_fx._src.stateful.param_groups import IMPLEMENTATION_OPTIONS, ParamGroup, options_of
from lucid_fx._src.stateful.parameter import Parameter
from lucid_fx._src.stateful.steps import Factory, PackState
from lucid_fx._src.stateful.storage import ParamPack

StateDict: TypeAlias = dict[str, Any]
# Checks one saved per-parameter entry: (Parameter, entry, where=...) -> host arrays.
EntryCheck: TypeAlias = Callable[..., Any]


def present_fields(state: PackState) -> dict[str, Any]:
    """The state's fields that hold something (a field is ``None`` when unused)."""
    return {k: v for k, v in state._asdict().items() if v is not None}


def slot_entry(
    fields: dict[str, np.ndarray], pack: ParamPack, slot: int, declared: Mapping[str, Field]
) -> dict[str, np.ndarray]:
    """One parameter's state dict cut from a pack's host arrays (absent fields left out)."""
    entry: dict[str, np.ndarray] = {}
    for name, value in fields.items():
        kind = declared[name].kind
        if kind == "scalar":
            cut = value[slot].copy()
        elif kind == "whole":
            cut = value
        elif pack.layout.kind == "flat":  # element-wise: shaped like the parameter
            cut = pack.layout.cut(value, slot)
        else:
            cut = np.array(value[slot] if pack.layout.kind == "stacked" else value)
        entry[name] = host_array(cut)  # 0-d arrays, not NumPy scalars: torch.load reads them
    return entry


def param_states(
    packs: Iterable[ParamPack], pack_state: Mapping[ParamPack, PackState],
    initialized: Mapping[ParamPack, np.ndarray], factory: Factory,
) -> list[tuple[Parameter, dict[str, np.ndarray]]]:
    """(Parameter, its state as host arrays) for each Parameter that has state."""
    result = []
    declared = schema.of(factory).fields
    for pack in packs:
        state = pack_state.get(pack)
        if state is None:
            continue
        fields = {k: to_host(v) for k, v in present_fields(state).items()}
        for slot in map(int, np.flatnonzero(initialized[pack])):
            result.append((pack.params[slot], slot_entry(fields, pack, slot, declared)))
    return result


def framed(
    param_groups: Sequence[ParamGroup], states: Iterable[tuple[Parameter, Any]]
) -> StateDict:
    """torch's layout around the per-parameter ``states``: indices in place of Parameters."""
    index = {id(p): i for i, p in enumerate(p for group in param_groups for p in group["params"])}
    state = dict(sorted((index[id(p)], entry) for p, entry in states))
    groups = []
    for group in param_groups:
        entry = {k: plain_value(v) for k, v in group.items() if k != "params"}
        entry["params"] = [index[id(p)] for p in group["params"]]
        groups.append(entry)
    return {"state": state, "param_groups": groups}


def plain_value(value: Any) -> Any:
    """A group's value as Python's own types, which ``torch.load``'s default reads: a NumPy
    or 0-d JAX number as a Python number, a dtype (``jnp.float32``) as its name; a tuple
    (betas) value by value. Anything else as it is."""
    if isinstance(value, (tuple, list)):
        return type(value)(plain_value(v) for v in value)
    if isinstance(value, (np.dtype, type)):  # np.float32, jnp.bfloat16, np.dtype("f4")
        return np.dtype(value).name
    if isinstance(value, (np.generic, np.ndarray, jax.Array)) and np.ndim(value) == 0:
        return np.asarray(value).item()
    return value


def check_state_values(state_dict: Any, never_negative: Mapping[str, str]) -> None:
    """Rejects values no run can produce (an edited or corrupted dict).

    ``never_negative`` maps a state key to what it is (for the message).
    Structure, shapes and dtypes are checked by :func:`validated`.
    """
    state = state_dict.get("state") if isinstance(state_dict, Mapping) else None
    if not isinstance(state, Mapping):
        return
    for index, entry in state.items():
        for key, what in never_negative.items() if isinstance(entry, Mapping) else ():
            array = np.asarray(entry.get(key, 0))
            real = np.issubdtype(array.dtype, np.floating) or np.issubdtype(
                array.dtype, np.integer)
            if real and np.any(array < 0):
                raise ValueError(
                    f"state[{index!r}][{key!r}] holds a negative value ({np.min(array)}); "
                    f"{what} is never negative: the state dict was edited or corrupted"
                )


def validated(
    sd: Any, param_groups: Sequence[ParamGroup], defaults: Mapping[str, Any],
    check_hyperparameters: Callable[[Mapping[str, Any]], None], checked_entry: EntryCheck,
) -> tuple[list[dict[str, Any]], dict[Parameter, Any]]:
    """The saved groups' hyper-parameters and Parameter -> checked entry; raises on any mistake.

    ``checked_entry(p, entry, where=..., group=...)`` checks one saved per-parameter
    entry against its group as the dict restores it (its ``state_dtype``), and is the
    optimizer's ``_checked_entry``, which LBFGS replaces.
    """
    if not isinstance(sd, Mapping) or set(sd) != {"state", "param_groups"}:
        keys = sorted(sd) if isinstance(sd, Mapping) else type(sd).__name__
        raise ValueError(
            f"state dict must have exactly the keys 'state' and 'param_groups', got {keys}"
        )
    saved_groups = sd["param_groups"]
    if not isinstance(saved_groups, (list, tuple)) or not all(
        isinstance(g, Mapping) for g in saved_groups
    ):
        raise ValueError(
            f"state dict's 'param_groups' must be a list of dicts, got {saved_groups!r:.80}"
        )
    if not isinstance(sd["state"], Mapping):
        raise ValueError(  # noqa: TRY004 (one error type for every bad value)
            f"state dict's 'state' must be a dict {{index: {{key: array}}}}, "
            f"got {type(sd['state']).__name__}"
        )
    if len(saved_groups) != len(param_groups):
        raise ValueError(
            f"state dict has {len(saved_groups)} param group(s), the optimizer has "
            f"{len(param_groups)}"
        )
    new_groups = []
    for gi, (saved, group) in enumerate(zip(saved_groups, param_groups)):
        if not isinstance(saved.get("params", ()), (list, tuple)):
            raise ValueError(  # noqa: TRY004 (one error type for every bad value)
                f"param_groups[{gi}]['params'] must be a list of parameter indices, "
                f"got {saved['params']!r:.40}"
            )
        if len(saved.get("params", ())) != len(group["params"]):
            raise ValueError(
                f"param_groups[{gi}] holds {len(saved.get('params', ()))} parameter(s) in "
                f"the state dict, {len(group['params'])} in the optimizer"
            )
        # Keys beyond the factory's (a scheduler's initial_lr, max_lr, ...) are
        # restored with the group, as torch does; only the factory's are checked.
        hyper = options_of(saved)
        # Every hyper-parameter torch has too must be saved: a missing one means a
        # misspelt or foreign dict (lr saved as "learning_rate"), not "use the default".
        # Options that change no number keep the group's values when absent: lucid_fx's
        # own (torch's dicts lack them) and torch's implementation options (which older
        # lucid_fx dicts lack, and torch versions differ in).
        missing = sorted(set(defaults) - set(hyper) - torch_compat.LUCID_ONLY_OPTIONS
                         - set(IMPLEMENTATION_OPTIONS))
        if missing:
            raise ValueError(f"param_groups[{gi}] lacks key(s) {missing}")
        try:
            check_hyperparameters(options_of({**group, **hyper}, defaults))
        except ValueError as error:
            raise ValueError(f"param_groups[{gi}]: {error}") from None
        new_groups.append(hyper)
    seen_indices: set[Any] = set()
    for gi, saved in enumerate(saved_groups):
        for index in saved["params"]:
            if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
                raise ValueError(  # noqa: TRY004 (one error type for every bad value)
                    f"param_groups[{gi}]['params'] holds {index!r:.40}; expected integer indices"
                )
            if index in seen_indices:
                raise ValueError(
                    f"param_groups[{gi}] lists parameter index {index!r} again; each index "
                    f"may appear once in a state dict's param_groups"
                )
            seen_indices.add(index)
    index_to_param = pair_saved_params(saved_groups, param_groups)
    entries: dict[Parameter, Any] = {}
    for index, entry in sd["state"].items():
        if index not in index_to_param:
            raise ValueError(f"state[{index!r}] names no parameter of the state dict's groups")
        p = index_to_param[index]
        group = next(g for g, saved in zip(param_groups, new_groups)
                     if any(q is p for q in g["params"]))
        saved_group = {**group, **new_groups[param_groups.index(group)]}
        entries[p] = checked_entry(p, entry, where=f"state[{index!r}]", group=saved_group)
    return new_groups, entries


def pair_saved_params(
    saved_groups: Sequence[Mapping[str, Any]], param_groups: Sequence[ParamGroup]
) -> dict[Any, Parameter]:
    """Saved index -> the optimizer's Parameter: by name when the dict has names.

    Without ``param_names`` the pairing is by position, as in torch; that
    is only right if both sides list the parameters in the same order, so an
    optimizer whose parameters have names warns (``UserWarning``) at each such load.
    """
    if not any("param_names" in saved for saved in saved_groups):
        if "param_names" in param_groups[0]:
            warnings.warn(
                "the state dict has no param_names, so its state pairs with this optimizer's "
                "parameters by position, which is right only if both list them in the same "
                "order (a dict model lists its keys sorted, a torch module in registration "
                "order). To pair by name, save from a torch optimizer made from "
                "model.named_parameters(), or an fx optimizer made from fx.named_parameters.",
                UserWarning, stacklevel=5)
        return {index: p for saved, group in zip(saved_groups, param_groups)
                for index, p in zip(saved["params"], group["params"])}
    if "param_names" not in param_groups[0]:
        raise ValueError(
            "the state dict names its parameters (param_names), this optimizer's "
            "parameters have no names: create it with fx.named_parameters(model) so "
            "that they pair by name"
        )
    saved_index: dict[str, Any] = {}
    for gi, saved in enumerate(saved_groups):
        names = saved.get("param_names")
        if not isinstance(names, (list, tuple)) or len(names) != len(saved["params"]):
            raise ValueError(
                f"param_groups[{gi}]['param_names'] must list one name per entry of "
                f"'params' ({len(saved['params'])}), got {names!r:.80}"
            )
        saved_index.update(zip(names, saved["params"]))
    mine = {name: p for group in param_groups
            for name, p in zip(group["param_names"], group["params"])}
    missing, unexpected = sorted(set(mine) - set(saved_index)), sorted(set(saved_index) - set(mine))
    if missing or unexpected:
        raise ValueError(
            f"the state dict's parameter names do not match the optimizer's: "
            f"missing {missing}, unexpected {unexpected}"
        )
    return {saved_index[name]: p for name, p in mine.items()}


def checked_entry(
    p: Parameter, entry: Any, *, where: str, factory: Factory, group: Mapping[str, Any],
) -> dict[str, np.ndarray]:
    """A saved per-parameter dict as host arrays, checked against the state's template
    in ``group``'s configuration (its ``state_dtype``)."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where} must be a dict of arrays, got {type(entry).__name__}")  # noqa: TRY004 (one error type for every bad value)
    declared = schema.of(factory).fields
    state_dtype = group.get("state_dtype")
    template = {name: (field.shape_for(p.shape), field.dtype_for(p.dtype, state_dtype))
                for name, field in declared.items()}
    unknown = {k for k in entry if k not in template or template[k][0] is None}
    if unknown:
        raise ValueError(f"{where} has unknown key(s) {sorted(unknown)}; known: "
                         f"{sorted(k for k, (shape, _) in template.items() if shape is not None)}")
    missing = {name for name, field in declared.items() if not field.optional} - set(entry)
    if missing:
        raise ValueError(f"{where} is missing key(s) {sorted(missing)}")
    checked = {}
    for name, value in entry.items():
        shape, dtype = template[name]
        array = np.asarray(value)
        if array.shape != shape:
            raise ValueError(f"{where}[{name!r}] has shape {array.shape}, expected {shape}")
        if array.dtype != dtype:
            raise ValueError(f"{where}[{name!r}] has dtype {array.dtype}, expected {dtype}")
        checked[name] = array
    return checked


def pack_state_from_entries(
    pack: ParamPack, entries: Mapping[Parameter, dict[str, np.ndarray]],
    tx: GradientTransformation, factory: Factory,
) -> tuple[PackState | None, np.ndarray]:
    """One pack's state assembled from per-parameter entries (``tx.init``'s where absent)."""
    initialized = np.array([p in entries for p in pack.params])
    if not initialized.any():
        return None, initialized
    stacked = pack.layout.kind == "stacked"
    one = present_fields(tx.init(pack.buffer[0] if stacked else pack.buffer))
    fields: dict[str, Any] = {}
    for name, field in schema.of(factory).fields.items():
        present = [(slot, entries[p][name]) for slot, p in enumerate(pack.params)
                   if p in entries and name in entries[p]]
        if not present:
            fields[name] = None
        elif field.kind == "scalar":
            # Parameters without saved state start at the transform's initial value.
            values = np.full(len(pack.params), to_host(one[name]) if name in one else 0,
                             present[0][1].dtype)
            for slot, value in present:
                values[slot] = value
            fields[name] = commit_like(pack.buffer, jax.device_put(values))
        elif field.kind == "whole":  # one per pack: the largest saved count
            fields[name] = commit_like(pack.buffer, jax.device_put(max(
                (v for _, v in present), key=int)))
        else:
            dtype = present[0][1].dtype
            start = (np.array(to_host(one[name]), dtype) if name in one
                     else np.zeros(present[0][1].shape, dtype))
            if stacked:  # every slot starts as the transform's init, then the saved ones
                host = np.stack([start] * len(pack.params))
                for slot, value in present:
                    host[slot] = value
            elif pack.layout.kind == "flat":
                host = start
                for slot, value in present:
                    pack.layout.put(host, slot, value)
            else:
                host = np.array(present[0][1])
            fields[name] = put_like(pack.buffer, host)
    return schema.state_type_of(factory)(**fields), initialized
