"""torch's optimizer state dicts, both ways: read by any schema, knowing no algorithm.

lucid_fx's state dicts have torch's layout (``{"state": {index: {...}},
"param_groups": [...]}``) and its state keys, so converting is mostly types:

- values: torch tensors become NumPy arrays, and the other way (on export);
- ``step``: torch keeps a float tensor, lucid_fx an int32 count; a count torch
  does not keep (SGD's, Muon's) is 1 on import where the parameter has state;
- group keys: torch's implementation options (``foreach``, ``capturable``,
  ``differentiable``, ``fused``) are kept both ways, the ``initial_lr`` of torch's
  schedulers is dropped on import, and lucid_fx's own options (``skip_nonfinite``,
  ``state_dtype``) and its ``skipped`` count are dropped on export.

Where a field is declared to hold a group option multiplied in
(``schema.buffer(torch_factor="lr")``: RMSprop's momentum buffer is η·b_torch, as
Lucid's definition keeps η inside it), it is multiplied by the group's value on
import and divided on export; with that value 0 a non-zero buffer is refused
(``ValueError`` naming the group), since the relation erases it. A field that is
real for a complex parameter (RMSprop's ``|g|²`` average) has no torch
counterpart, which treats real and imaginary parts as separate elements: such
a state does not convert.

Example:
  >>> import numpy as np
  >>> import lucid_fx as fx
  >>> from lucid_fx._src.core import schema
  >>> from lucid_fx._src.interop.torch import state_dict_from_torch, state_dict_to_torch
  >>> torch_like = {
  ...     "state": {0: {"step": np.float32(3.0), "square_avg": np.ones(2, np.float32),
  ...                   "momentum_buffer": np.full(2, 4.0, np.float32)}},
  ...     "param_groups": [{"lr": 0.5, "momentum": 0.9, "alpha": 0.99, "eps": 1e-08,
  ...                       "centered": False, "weight_decay": 0, "foreach": None,
  ...                       "maximize": False, "capturable": False,
  ...                       "differentiable": False, "params": [0]}],
  ... }
  >>> ours = state_dict_from_torch(torch_like, schema.of(fx.rmsprop))
  >>> ours["state"][0]["step"], ours["state"][0]["momentum_buffer"].tolist()
  (array(3, dtype=int32), [2.0, 2.0])
  >>> back = state_dict_to_torch(ours, schema.of(fx.rmsprop), tensors=False)
  >>> back["state"][0]["momentum_buffer"].tolist()
  [4.0, 4.0]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import jax
import numpy as np

from lucid_fx._src.core.schema import Field, Schema
from lucid_fx._src.interop.host import from_torch, torch_tensor

StateDict = dict[str, Any]

# A scheduler's record of the base lr, which torch's dicts carry: lucid_fx's own
# scheduler sets it in the optimizer it drives, so an imported one is not taken over.
_DROPPED_ON_IMPORT = frozenset({"initial_lr"})
# lucid_fx's own options, which torch lacks: dropped on export, kept on import. Every
# group of a lucid_fx state dict holds them, so they tell its dicts from torch's.
LUCID_ONLY_OPTIONS = frozenset({"skip_nonfinite", "state_dtype", "ns_dtype"})
_NOT_FOR_TORCH = frozenset({"params", "param_names"}) | LUCID_ONLY_OPTIONS
_INT32_MAX = int(np.iinfo(np.int32).max)


def is_torch_state_dict(state_dict: Any) -> bool:
    """True when ``state_dict`` is in torch's form (``torch.optim.<Optimizer>.state_dict()``).

    Every group of a lucid_fx state dict holds lucid_fx's own options
    (``skip_nonfinite``, ``state_dtype``), which torch's never do; torch's
    implementation options (``foreach``, ...) sit in both, and tensors too once
    a lucid_fx dict went through ``torch.save`` and ``torch.load``, so neither can
    tell them apart. The answer decides whether a buffer is converted
    (RMSprop's momentum), so a dict with those options in some groups and not
    in others is refused (``ValueError``) rather than guessed.
    """
    if not isinstance(state_dict, Mapping):
        return False
    groups = state_dict.get("param_groups")
    if not isinstance(groups, (list, tuple)):
        return False
    ours = {i: bool(LUCID_ONLY_OPTIONS & set(g)) for i, g in enumerate(groups)
            if isinstance(g, Mapping)}  # load_state_dict names any other entry
    if any(ours.values()) and not all(ours.values()):
        raise ValueError(
            f"the state dict's groups {[i for i, o in ours.items() if not o]} lack "
            f"lucid_fx's options {sorted(LUCID_ONLY_OPTIONS)} that its other groups hold: "
            f"it is neither a lucid_fx state dict nor a torch one (was it edited?)"
        )
    return not any(ours.values())


def with_numpy_values(state_dict: Any) -> Any:
    """``state_dict`` with every torch tensor of its per-parameter state as a NumPy copy.

    A lucid_fx state dict saved with ``torch.save`` comes back from ``torch.load``
    with tensors where it had arrays (:class:`lucid_fx._src.interop.host.HostArray`);
    this gives the arrays back, bit for bit. Anything else is returned as given.
    """
    if not isinstance(state_dict, Mapping) or not isinstance(state_dict.get("state"), Mapping):
        return state_dict
    state = {index: {k: from_torch(v) for k, v in entry.items()} if isinstance(entry, Mapping)
             else entry for index, entry in state_dict["state"].items()}
    return {**state_dict, "state": state}


def _to_number(value: Any) -> Any:
    """A Python number for a 0-d tensor or array hyper-parameter; other values as given."""
    value = from_torch(value)
    if isinstance(value, (np.ndarray, np.generic, jax.Array)) and np.shape(value) == ():
        return np.asarray(value).item()
    return value


def _step_from_torch(value: Any, where: str) -> np.ndarray:
    step = float(np.asarray(value))
    if not (step.is_integer() and 0 <= step <= _INT32_MAX):
        raise ValueError(f"{where} is {step!r}; expected a whole number of steps in [0, 2**31 - 1]")
    return np.asarray(int(step), np.int32)


def _real_for_complex(field: Field) -> bool:
    """Whether ``field`` holds real numbers for a complex parameter (an average of |g|²)."""
    return field.kind == "array" and not np.issubdtype(
        field.dtype_for(np.complex64, None), np.complexfloating)


def _refuse_complex(array: np.ndarray, where: str) -> None:
    if np.iscomplexobj(array):
        raise ValueError(
            f"{where} is complex: torch treats a complex parameter's real and imaginary "
            f"parts as separate elements, while this optimizer keeps real numbers for it "
            f"(|g|²), so the state does not convert"
        )


def _factor(field: Field, key: str, gi: int, group: Mapping[str, Any], array: np.ndarray,
            where: str, *, exporting: bool) -> tuple[float, bool]:
    """The group option ``field`` holds multiplied in, and whether the array is refused
    for it (0 with a non-zero array)."""
    value = group.get(cast(str, field.torch_factor))
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return 1.0, False
    if value == 0 and bool(np.any(np.asarray(array, np.float64) != 0)):
        option, what = field.torch_factor, key.replace("_", " ")
        if exporting:
            raise ValueError(
                f"param_groups[{gi}] has {option} 0 and {where} is non-zero: torch keeps "
                f"{option} out of the {what} (b_torch = b / {option}), so it cannot be "
                f"recovered. Export before setting {option} to 0, or with the {option} of "
                f"the next step."
            )
        raise ValueError(
            f"param_groups[{gi}] has {option} 0 and {where} is non-zero: lucid_fx keeps "
            f"{option} inside the {what} (b = {option}·b_torch), so converting would erase "
            f"it. Set the group's {option} in the state dict to the {option} of the next "
            f"step before loading."
        )
    return float(value), True


def _check_layout(state_dict: Any) -> None:
    groups, state = state_dict.get("param_groups"), state_dict.get("state")
    if not (
        isinstance(groups, (list, tuple))
        and all(isinstance(g, Mapping) for g in groups)
        and isinstance(state, Mapping)
    ):
        raise ValueError(
            "a state dict needs 'param_groups' (a list of dicts) and 'state' "
            "(a dict {index: {key: array}})"
        )


def state_dict_from_torch(state_dict: Mapping[str, Any], declared: Schema) -> StateDict:
    """A ``torch.optim.<Optimizer>.state_dict()`` → what ``Optimizer.load_state_dict`` takes.

    Values may be torch tensors or NumPy arrays. ``declared`` is the state's
    schema (:mod:`lucid_fx._src.core.schema`): step counts become int32,
    per-parameter numbers (NAdam's ``mu_product``) take the real dtype of the
    entry's arrays, arrays of ``None`` (torch's SGD before momentum) are left
    out, a count torch does not keep (SGD's) is 1 where the parameter has an
    array (it has stepped), else 0, and a field with a ``torch_factor`` is
    multiplied by it. Everything else is checked by ``load_state_dict``.
    """
    _check_layout(state_dict)
    fields = declared.fields
    groups = [
        {k: _to_number(v) for k, v in g.items() if k not in _DROPPED_ON_IMPORT}
        for g in state_dict["param_groups"]
    ]
    for group, saved in zip(groups, state_dict["param_groups"]):
        group["params"] = list(saved.get("params", ()))
    group_of = {i: gi for gi, g in enumerate(groups) for i in g["params"]}
    state: dict[Any, Any] = {}
    for index, entry in state_dict["state"].items():
        if not isinstance(entry, Mapping):
            state[index] = entry  # load_state_dict names the problem
            continue
        arrays = {k: from_torch(v) for k, v in entry.items() if v is not None}
        shaped = [np.asarray(v) for k, v in arrays.items()
                  if k in fields and fields[k].kind == "array"]
        converted: dict[str, Any] = {}
        for key, array in arrays.items():
            where = f"state[{index!r}][{key!r}]"
            field = fields.get(key)
            if field is not None and field.kind == "scalar":
                if np.issubdtype(field.dtype_for(np.float32, None), np.integer):
                    array = _step_from_torch(array, where)
                else:
                    real = np.finfo(shaped[0].dtype).dtype if shaped else np.float32
                    array = np.asarray(array, real)
            elif field is not None and field.kind == "array":
                if any(_real_for_complex(f) for f in fields.values()):
                    _refuse_complex(np.asarray(array), where)
                if field.torch_factor is not None and index in group_of:
                    gi = group_of[index]
                    factor, scale = _factor(field, key, gi, groups[gi], array, where,
                                            exporting=False)
                    if scale:
                        array = (np.asarray(array, np.float64) * factor).astype(array.dtype)
            converted[key] = array
        for key, field in fields.items():
            if not field.torch_key and field.kind == "scalar" and key not in converted:
                converted[key] = np.asarray(1 if shaped else 0, field.dtype_for(np.float32, None))
        state[index] = converted
    return {"state": state, "param_groups": groups}


def fields_in_use(declared: Schema, group: Mapping[str, Any]) -> frozenset[str]:
    """The array fields a group's configuration keeps (its switches on)."""
    return frozenset(name for name, field in declared.fields.items()
                     if field.kind == "array" and (field.switch is None or field.switch not in
                                                   group or declared.switched_on(name, group)))


def state_dict_to_torch(
    state_dict: Mapping[str, Any],
    declared: Schema,
    *,
    tensors: bool = True,
    param_names: ParamNames | None = None,
) -> StateDict:
    """An ``Optimizer.state_dict()`` in the form the matching ``torch.optim`` class loads.

    torch's ``load_state_dict`` pairs parameters by position (it ignores
    ``param_names``), so ``param_names``, the names of the torch side's
    parameters in its order, puts the state in that order
    (:func:`in_torch_order`); without it the order is lucid_fx's, and each
    group carries its ``param_names`` (when the optimizer has them) for a reader
    to check. Only torch's keys go out (the schema's ``torch_key`` fields, and
    every group key but lucid_fx's own); step counts become float32 scalars, as
    torch keeps them, and every array keeps its shape (a 0-d parameter's is 0-d).
    Arrays that a group's configuration uses but the state lacks yet (momentum
    switched on since the last step) are written as zeros, which is where
    lucid_fx would start them (torch would fail on a missing key). With
    ``tensors=True`` (the default, which needs torch) the values are CPU torch
    tensors; with ``False``, NumPy arrays.

    Raises:
      ValueError: a group's lr is a schedule (torch's dict holds a number), a
        field's ``torch_factor`` is 0 while the field is not, or a complex
        parameter's state holds real numbers (see the module).
    """
    _check_layout(state_dict)
    if param_names is not None:
        state_dict = in_torch_order(state_dict, param_names)
    as_value = torch_tensor if tensors else np.asarray
    fields = declared.fields
    groups, group_of = [], {}
    for gi, group in enumerate(state_dict["param_groups"]):
        if callable(group.get("lr")):
            raise ValueError(  # noqa: TRY004 (one error type for every bad value)
                f"param_groups[{gi}]['lr'] is a schedule; torch's state dict holds a number: "
                f"set the group's lr to the value of the next step before exporting"
            )
        torch_group: dict[str, Any] = {
            key: _to_number(value) for key, value in group.items()
            if key not in _NOT_FOR_TORCH
        }
        torch_group["params"] = list(group["params"])
        if "param_names" in group:  # torch >= 2.6 keeps them beside the indices
            torch_group["param_names"] = list(group["param_names"])
        groups.append(torch_group)
        group_of.update({i: (gi, group) for i in group["params"]})
    real_fields = any(_real_for_complex(f) for f in fields.values())
    state: dict[Any, Any] = {}
    for index, entry in state_dict["state"].items():
        if index not in group_of:
            raise ValueError(f"state[{index!r}] names no parameter of the state dict's groups")
        gi, group = group_of[index]
        used = fields_in_use(declared, group)
        # An array the configuration uses but the entry lacks is written as zeros shaped
        # like the entry's other parameter-shaped arrays; an entry with none (SGD without
        # momentum: only its count) has nothing to shape them by, and torch starts such an
        # array itself.
        like = next((np.asarray(entry[k]) for k, f in fields.items()
                     if f.kind == "array" and f.shape is None and k in entry), None)
        if real_fields and like is not None and any(
                np.iscomplexobj(np.asarray(v)) for v in entry.values()):
            raise ValueError(
                f"state[{index!r}] belongs to a complex parameter: torch treats its real "
                f"and imaginary parts as separate elements, while this optimizer keeps real "
                f"numbers for it (|g|²), so the state does not convert"
            )
        converted: dict[str, Any] = {}
        for key, field in fields.items():
            where = f"state[{index!r}][{key!r}]"
            if not field.torch_key:
                continue
            if field.kind == "scalar":
                if key in entry:
                    converted[key] = _torch_scalar(entry[key]) if tensors else (
                        np.float32(entry[key]) if key == "step" else np.asarray(entry[key]))
                continue
            if key in entry:
                array = np.asarray(entry[key])
            elif key in used and like is not None and field.shape is None:
                array = np.zeros_like(like)
            else:
                continue
            if field.torch_factor is not None:
                factor, scale = _factor(field, key, gi, group, array, where, exporting=True)
                if scale and factor != 0:
                    array = (array.astype(np.float64) / factor).astype(array.dtype)
            converted[key] = as_value(array)
        state[index] = converted
    return {"state": state, "param_groups": groups}


# The torch side's parameter names in its order: one flat list (model.named_parameters()),
# or one list per param group.
ParamNames = Sequence[str] | Sequence[Sequence[str]]


def torch_positions(state_dict: Mapping[str, Any], param_names: ParamNames) -> list[list[Any]]:
    """Per group, the state dict's parameter indices in the torch side's order.

    ``param_names`` is either one flat list, the torch model's order
    (``[n for n, _ in model.named_parameters()]``): each group keeps its
    parameters, ordered as the list orders them; or one list per group, each the
    exact order of torch's group. Every name of the state dict must be listed
    once, and nothing else (``ValueError`` naming the missing, unknown and
    repeated names). The state dict must name its parameters (an optimizer made
    from ``fx.named_parameters``).
    """
    if isinstance(param_names, str):
        raise TypeError("param_names must be a list of names (or one list per group), "
                        "not one string")
    groups = state_dict["param_groups"]
    if not all("param_names" in g for g in groups):
        raise ValueError(
            "param_names pairs parameters by name, but this optimizer's parameters have no "
            "names: create it with fx.named_parameters(model)"
        )
    ours = [list(g["param_names"]) for g in groups]
    if param_names and all(isinstance(n, str) for n in param_names):
        flat = list(cast(Sequence[str], param_names))
        _check_names(flat, [n for names in ours for n in names], "param_names")
        position = {name: i for i, name in enumerate(flat)}
        wanted = [sorted(names, key=position.__getitem__) for names in ours]
    else:
        wanted = [list(names) for names in param_names]
        if len(wanted) != len(groups):
            raise ValueError(
                f"param_names has {len(wanted)} list(s), the state dict {len(groups)} param "
                f"group(s): give one list per group, or one flat list"
            )
        for gi, (names, mine) in enumerate(zip(wanted, ours)):
            _check_names(names, mine, f"param_names[{gi}]")
    return [[dict(zip(g["param_names"], g["params"]))[name] for name in names]
            for g, names in zip(groups, wanted)]


def in_torch_order(state_dict: Mapping[str, Any], param_names: ParamNames) -> StateDict:
    """``state_dict`` with its parameters in the torch side's order (see
    :func:`torch_positions`), renumbered 0, 1, ... across groups as torch numbers them.

    Example:
      >>> import numpy as np
      >>> from lucid_fx._src.interop.torch import in_torch_order
      >>> ours = {"state": {0: {"step": np.int32(1)}},
      ...         "param_groups": [{"lr": 0.1, "params": [0, 1], "param_names": ["b", "w"]}]}
      >>> torch_order = in_torch_order(ours, ["w", "b"])
      >>> torch_order["param_groups"][0]["param_names"], torch_order["state"]
      (['w', 'b'], {1: {'step': np.int32(1)}})
    """
    positions = torch_positions(state_dict, param_names)
    name_of = {i: n for g in state_dict["param_groups"]
               for i, n in zip(g["params"], g["param_names"])}
    new_groups, new_state, count = [], {}, 0
    for group, old in zip(state_dict["param_groups"], positions):
        indices = list(range(count, count + len(old)))
        count += len(old)
        for new, index in zip(indices, old):
            if index in state_dict["state"]:
                new_state[new] = state_dict["state"][index]
        new_groups.append({**group, "params": indices, "param_names": [name_of[i] for i in old]})
    return {"state": new_state, "param_groups": new_groups}


def _check_names(given: Sequence[str], mine: Sequence[str], what: str) -> None:
    """Raises ``ValueError`` unless ``given`` lists each of ``mine`` once, and nothing else."""
    repeated = sorted({n for n in given if list(given).count(n) > 1})
    missing, unexpected = sorted(set(mine) - set(given)), sorted(set(given) - set(mine))
    if repeated or missing or unexpected:
        raise ValueError(
            f"{what} must list this optimizer's parameter names once each: missing "
            f"{missing}, unknown {unexpected}, repeated {repeated}"
        )


def _torch_scalar(value: Any) -> Any:
    import torch

    # torch keeps step counts (and NAdam's mu_product, ASGD's eta and mu) as 0-d
    # float tensors on the CPU: float32 for a count, the value's own dtype otherwise.
    array = np.asarray(value)
    if np.issubdtype(array.dtype, np.integer):
        return torch.tensor(float(array), dtype=torch.float32)
    return torch.from_numpy(array.copy())
