"""Moving a run between PyTorch and lucid_fx: state-dict conversion both ways.

Every stateful optimizer exchanges torch's state dicts through
:func:`state_dict_from_torch` and :func:`state_dict_to_torch`, which read the
state's schema (:mod:`lucid_fx.state_schema`): the layouts agree, only the step
count's type differs. RMSprop adds one conversion, below.

``torch.optim.RMSprop`` and :class:`lucid_fx.RMSprop` share the state-dict layout
(``{"state": {index: {...}}, "param_groups": [...]}``), the state keys (``step``,
``square_avg``, ``grad_avg``, ``momentum_buffer``) and, for a constant lr, the
math. Two things differ, and the conversion handles both:

- The momentum buffer. torch keeps η out of it and multiplies at the end; the
  Lucid's definition (and lucid_fx) keeps η inside::

      torch:    b_torch = μ·b_torch + g/d          θ ← θ - η·b_torch
      lucid_fx: b       = μ·b       + η·g/d        θ ← θ - b

  so ``b = η·b_torch``, with each group's current lr. When lr is 0 that relation
  erases the buffer (import) or cannot be inverted (export), so both directions
  raise ``ValueError`` naming the group when lr is 0 and a buffer is non-zero. A
  buffer of zeros converts either way.
- ``step``: torch stores a float tensor, lucid_fx an int32 count.

torch's group keys that do not change the math (``foreach``, ``capturable``,
``differentiable``, ``fused``, and ``initial_lr`` that its LR schedulers add)
are dropped on import; lucid_fx's own options that torch lacks
(``skip_nonfinite``, ``state_dtype``) and its ``skipped`` counter are dropped
on export. Complex parameters do not convert: torch treats their real and
imaginary parts as separate elements (two running averages), lucid_fx uses
|g|² (one real average).

Example:
  >>> import numpy as np
  >>> from lucid_fx import torch_compat
  >>> torch_like = {
  ...     "state": {0: {"step": np.float32(3.0), "square_avg": np.ones(2, np.float32),
  ...                   "momentum_buffer": np.full(2, 4.0, np.float32)}},
  ...     "param_groups": [{"lr": 0.5, "momentum": 0.9, "alpha": 0.99, "eps": 1e-08,
  ...                       "centered": False, "weight_decay": 0, "foreach": None,
  ...                       "maximize": False, "capturable": False,
  ...                       "differentiable": False, "params": [0]}],
  ... }
  >>> ours = torch_compat.rmsprop_state_dict_from_torch(torch_like)
  >>> ours["state"][0]["step"], ours["state"][0]["momentum_buffer"].tolist()
  (array(3, dtype=int32), [2.0, 2.0])
  >>> back = torch_compat.rmsprop_state_dict_to_torch(ours, tensors=False)
  >>> back["state"][0]["momentum_buffer"].tolist()
  [4.0, 4.0]
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lucid_fx import state_schema
from lucid_fx.state_schema import Field

StateDict = dict[str, Any]

# Keys of torch.optim.RMSprop's param groups that lucid_fx has no use for: they
# choose torch's kernels (or record a scheduler's base lr), not the math.
TORCH_ONLY_GROUP_KEYS = frozenset({"foreach", "capturable", "differentiable", "fused"})
_DROPPED_ON_IMPORT = TORCH_ONLY_GROUP_KEYS | {"initial_lr"}
# lucid_fx's own options, which torch lacks: dropped on export, kept on import.
LUCID_ONLY_OPTIONS = frozenset({"skip_nonfinite", "state_dtype"})
_NOT_FOR_TORCH = frozenset({"params", "param_names"}) | LUCID_ONLY_OPTIONS
_INT32_MAX = int(np.iinfo(np.int32).max)


def _is_torch_tensor(x: Any) -> bool:
    # Checked by module name so that lucid_fx never imports torch unless asked to.
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def is_torch_state_dict(state_dict: Any) -> bool:
    """True when ``state_dict`` is in ``torch.optim.RMSprop.state_dict()``'s form.

    That is: a group holds one of torch's own keys (``foreach``, ``capturable``,
    ``differentiable``, ``fused``), or the state holds torch tensors. lucid_fx's
    own state dicts have neither. A torch dict whose tensors were turned into
    NumPy arrays is still recognised by its group keys (keep them).
    """
    if not isinstance(state_dict, Mapping):
        return False
    groups = state_dict.get("param_groups")
    state = state_dict.get("state")
    if isinstance(groups, (list, tuple)) and any(
        isinstance(g, Mapping) and TORCH_ONLY_GROUP_KEYS & set(g) for g in groups
    ):
        return True
    return isinstance(state, Mapping) and any(
        isinstance(entry, Mapping) and any(_is_torch_tensor(v) for v in entry.values())
        for entry in state.values()
    )


def _to_numpy(value: Any) -> Any:
    """A private NumPy copy of a torch tensor (bfloat16 included); other values as given."""
    if not _is_torch_tensor(value):
        return value
    import torch

    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:  # NumPy has no bfloat16; ml_dtypes' (jnp's) does
        return value.view(torch.int16).numpy().view(jnp.bfloat16).copy()
    return value.numpy().copy()


def _to_number(value: Any) -> Any:
    """A Python number for a 0-d tensor or array hyper-parameter; other values as given."""
    value = _to_numpy(value)
    if isinstance(value, (np.ndarray, np.generic, jax.Array)) and np.shape(value) == ():
        return np.asarray(value).item()
    return value


def _check_real(array: Any, where: str) -> None:
    if np.iscomplexobj(array):
        raise ValueError(
            f"{where} is complex: torch's RMSprop treats the real and imaginary parts as "
            f"separate elements, lucid_fx averages |g|², so the state does not convert"
        )


def _step_from_torch(value: Any, where: str) -> np.ndarray:
    step = float(np.asarray(value))
    if not (step.is_integer() and 0 <= step <= _INT32_MAX):
        raise ValueError(f"{where} is {step!r}; expected a whole number of steps in [0, 2**31 - 1]")
    return np.asarray(int(step), np.int32)


def _nonzero(array: Any) -> bool:
    return bool(np.any(np.asarray(array, np.float64) != 0))


# A hook that converts one buffer between the two layouts: (key, array, group index,
# group, where) -> array. RMSprop's momentum buffer holds lr (b = lr·b_torch).
BufferConversion = Callable[[str, np.ndarray, int, Mapping[str, Any], str], np.ndarray]


def state_dict_from_torch(
    state_dict: Mapping[str, Any],
    schema: Mapping[str, Field],
    *,
    convert: BufferConversion | None = None,
) -> StateDict:
    """A ``torch.optim.<Optimizer>.state_dict()`` → what ``Optimizer.load_state_dict`` takes.

    Values may be torch tensors or NumPy arrays. ``schema`` is the state's
    (:mod:`lucid_fx.state_schema`): step counts become int32, per-parameter
    scalars (NAdam's ``mu_product``) take the real dtype of the entry's
    buffers, buffers of ``None`` (torch's SGD before momentum) are left out, and
    a count torch does not keep (SGD's) is 1 where the parameter has a buffer
    (it has stepped), else 0. torch-only group keys are dropped. ``convert``
    changes a buffer's layout where the two differ. Everything else is checked
    by ``load_state_dict``.
    """
    _check_layout(state_dict)
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
        arrays = {k: _to_numpy(v) for k, v in entry.items() if v is not None}
        buffers = [np.asarray(v) for k, v in arrays.items()
                   if k in schema and schema[k].kind == "buffer"]
        converted: dict[str, Any] = {}
        for key, array in arrays.items():
            where = f"state[{index!r}][{key!r}]"
            field = schema.get(key)
            if field is not None and field.kind == "per_parameter":
                if np.issubdtype(field.dtype_for(np.float32, None), np.integer):
                    array = _step_from_torch(array, where)
                else:
                    real = np.finfo(buffers[0].dtype).dtype if buffers else np.float32
                    array = np.asarray(array, real)
            elif convert is not None and field is not None and index in group_of:
                gi = group_of[index]
                array = convert(key, np.asarray(array), gi, groups[gi], where)
            converted[key] = array
        for key, field in schema.items():
            if not field.torch_key and field.kind == "per_parameter" and key not in converted:
                converted[key] = np.asarray(1 if buffers else 0, field.dtype_for(np.float32, None))
        state[index] = converted
    return {"state": state, "param_groups": groups}


def rmsprop_state_dict_from_torch(state_dict: Mapping[str, Any]) -> StateDict:
    """``torch.optim.RMSprop.state_dict()`` → what :meth:`lucid_fx.RMSprop.load_state_dict` takes.

    :func:`state_dict_from_torch` with RMSprop's one difference: each momentum
    buffer becomes ``lr·b_torch`` with its group's lr.

    Raises:
      ValueError: a group's lr is 0 while a momentum buffer of it is non-zero
        (converting would erase the buffer: set that group's lr in the dict to
        the lr of the next step first), a complex state, or a step that is not a
        whole number.
    """
    from lucid_fx.rmsprop import RMSpropState

    return state_dict_from_torch(state_dict, state_schema.fields_of(RMSpropState),
                                 convert=rmsprop_buffer_from_torch)


def rmsprop_buffer_from_torch(
    key: str, array: np.ndarray, gi: int, group: Mapping[str, Any], where: str
) -> np.ndarray:
    """RMSprop's buffers from torch's layout: ``b = lr·b_torch``; a complex one is refused."""
    _check_real(array, where)
    lr = group.get("lr")
    if key != "momentum_buffer" or not isinstance(lr, (int, float)) or isinstance(lr, bool):
        return array
    if lr == 0 and _nonzero(array):
        raise ValueError(
            f"param_groups[{gi}] has lr 0 and {where} is non-zero: lucid_fx keeps "
            f"lr inside the momentum buffer (b = lr·b_torch), so converting "
            f"would erase it. Set the group's lr in the state dict to the lr of "
            f"the next step before loading."
        )
    return (np.asarray(array, np.float64) * lr).astype(array.dtype)


def _check_layout(state_dict: Any) -> None:
    groups, state = state_dict.get("param_groups"), state_dict.get("state")
    if not (
        isinstance(groups, (list, tuple))
        and all(isinstance(g, Mapping) for g in groups)
        and isinstance(state, Mapping)
    ):
        raise ValueError(
            "an RMSprop state dict needs 'param_groups' (a list of dicts) and 'state' "
            "(a dict {index: {key: array}})"
        )


def _torch_tensor(array: Any) -> Any:
    import torch

    array = np.ascontiguousarray(np.asarray(array))
    if array.dtype == jnp.bfloat16:
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(array.copy())


def state_dict_to_torch(
    state_dict: Mapping[str, Any],
    schema: Mapping[str, Field],
    uses: Callable[[Mapping[str, Any]], frozenset[str]],
    *,
    convert: BufferConversion | None = None,
    tensors: bool = True,
) -> StateDict:
    """An ``Optimizer.state_dict()`` in the form the matching ``torch.optim`` class loads.

    Only torch's keys go out (``schema``'s ``torch_key`` fields, and every group
    key but lucid_fx's own ``skip_nonfinite`` and ``state_dtype``); step counts
    become float32 scalars, as torch keeps them. Buffers that a group's
    configuration uses (``uses(group)``) but the state lacks yet (momentum
    switched on since the last step) are written as zeros, which is where
    lucid_fx would start them (torch would fail on a missing key). With
    ``tensors=True`` (the default, which needs torch) the values are CPU torch
    tensors; with ``False``, NumPy arrays.

    Raises:
      ValueError: a group's lr is a schedule (torch's dict holds a number), or
        ``convert`` refuses a buffer.
    """
    _check_layout(state_dict)
    as_value = _torch_tensor if tensors else np.asarray
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
        torch_group.update(capturable=False, foreach=None, differentiable=False)
        torch_group["params"] = list(group["params"])
        if "param_names" in group:  # torch >= 2.6 keeps them beside the indices
            torch_group["param_names"] = list(group["param_names"])
        groups.append(torch_group)
        group_of.update({i: (gi, group) for i in group["params"]})
    state: dict[Any, Any] = {}
    for index, entry in state_dict["state"].items():
        if index not in group_of:
            raise ValueError(f"state[{index!r}] names no parameter of the state dict's groups")
        gi, group = group_of[index]
        used = uses(group)
        # A buffer the configuration uses but the entry lacks is written as zeros shaped
        # like the entry's other buffers; an entry with none (SGD without momentum: only
        # its count) has nothing to shape them by, and torch starts such a buffer itself.
        like = next((np.asarray(entry[k]) for k, f in schema.items()
                     if f.kind == "buffer" and k in entry), None)
        converted: dict[str, Any] = {}
        for key, field in schema.items():
            where = f"state[{index!r}][{key!r}]"
            if not field.torch_key:
                continue
            if field.kind == "per_parameter":
                if key in entry:
                    converted[key] = _torch_scalar(entry[key]) if tensors else (
                        np.float32(entry[key]) if key == "step" else np.asarray(entry[key]))
                continue
            if key in entry:
                array = np.asarray(entry[key])
            elif key in used and like is not None:
                array = np.zeros_like(like)
            else:
                continue
            if convert is not None:
                array = convert(key, array, gi, group, where)
            converted[key] = as_value(array)
        state[index] = converted
    return {"state": state, "param_groups": groups}


def rmsprop_state_dict_to_torch(
    state_dict: Mapping[str, Any], *, tensors: bool = True
) -> StateDict:
    """A :meth:`lucid_fx.RMSprop.state_dict` in the form ``torch.optim.RMSprop`` loads.

    :func:`state_dict_to_torch` with RMSprop's one difference: each momentum
    buffer becomes ``b / lr`` with its group's lr.

    Raises:
      ValueError: a group's lr is a schedule (torch's dict holds a number), or
        is 0 while one of its momentum buffers is non-zero (``b / 0`` is
        undefined: export before setting lr to 0), or a state is complex.
    """
    from lucid_fx.rmsprop import RMSpropState, rmsprop

    return state_dict_to_torch(state_dict, state_schema.fields_of(RMSpropState),
                               used_fields(rmsprop), convert=rmsprop_buffer_to_torch,
                               tensors=tensors)


def used_fields(
    factory: Callable[..., Any]
) -> Callable[[Mapping[str, Any]], frozenset[str]]:
    """``group -> the state fields that factory(**group's hyper-parameters)`` makes.

    From the transform's own ``init`` (abstractly evaluated, nothing allocated),
    so the configuration, not a copy of its rules, decides which buffers exist.
    """
    names = frozenset(inspect.signature(factory).parameters)

    def uses(group: Mapping[str, Any]) -> frozenset[str]:
        hyper = {k: v for k, v in group.items() if k in names}
        state = jax.eval_shape(lambda: factory(**hyper).init(jnp.zeros(1)))
        return frozenset(k for k, v in state._asdict().items() if v is not None)

    return uses


def rmsprop_buffer_to_torch(
    key: str, array: np.ndarray, gi: int, group: Mapping[str, Any], where: str
) -> np.ndarray:
    """RMSprop's buffers in torch's layout: ``b_torch = b / lr``; a complex one is refused."""
    _check_real(array, where)
    if key != "momentum_buffer":
        return array
    lr = float(group["lr"])
    if lr == 0 and _nonzero(array):
        raise ValueError(
            f"param_groups[{gi}] has lr 0 and {where} is non-zero: torch keeps lr out "
            f"of the momentum buffer (b_torch = b / lr), so it cannot be recovered. "
            f"Export before setting lr to 0, or with the lr of the next step."
        )
    return array if lr == 0 else (array.astype(np.float64) / lr).astype(array.dtype)


def _torch_scalar(value: Any) -> Any:
    import torch

    # torch keeps step counts (and NAdam's mu_product, ASGD's eta and mu) as 0-d
    # float tensors on the CPU: float32 for a count, the value's own dtype otherwise.
    array = np.asarray(value)
    if np.issubdtype(array.dtype, np.integer):
        return torch.tensor(float(array), dtype=torch.float32)
    return torch.from_numpy(array.copy())
