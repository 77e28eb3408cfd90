"""Moving an RMSprop run between PyTorch and lucid_fx: state-dict conversion both ways.

``torch.optim.RMSprop`` and :class:`lucid_fx.RMSprop` share the state-dict layout
(``{"state": {index: {...}}, "param_groups": [...]}``), the state keys (``step``,
``square_avg``, ``grad_avg``, ``momentum_buffer``) and, for a constant lr, the
math. Two things differ, and the conversion handles both:

- The momentum buffer. torch keeps η out of it and multiplies at the end; the
  API page (and lucid_fx) keeps η inside::

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

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

StateDict = dict[str, Any]

# Keys of torch.optim.RMSprop's param groups that lucid_fx has no use for: they
# choose torch's kernels (or record a scheduler's base lr), not the math.
TORCH_ONLY_GROUP_KEYS = frozenset({"foreach", "capturable", "differentiable", "fused"})
_DROPPED_ON_IMPORT = TORCH_ONLY_GROUP_KEYS | {"initial_lr"}
# Keys torch.optim.RMSprop reads; everything else of ours is dropped on export.
_TORCH_HYPERPARAMETERS = ("lr", "momentum", "alpha", "eps", "centered", "weight_decay", "maximize")
_TORCH_STATE_KEYS = ("step", "square_avg", "grad_avg", "momentum_buffer")
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


def _lr_of_each_index(groups: Sequence[Mapping[str, Any]]) -> dict[Any, tuple[int, Any]]:
    return {
        i: (gi, _to_number(g.get("lr"))) for gi, g in enumerate(groups) for i in g.get("params", ())
    }


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


def rmsprop_state_dict_from_torch(state_dict: Mapping[str, Any]) -> StateDict:
    """``torch.optim.RMSprop.state_dict()`` → what :meth:`lucid_fx.RMSprop.load_state_dict` takes.

    Values may be torch tensors or NumPy arrays. Each momentum buffer becomes
    ``lr·b_torch`` with its group's lr; ``step`` becomes int32; torch-only group
    keys are dropped. Everything else is checked by ``load_state_dict``.

    Raises:
      ValueError: a group's lr is 0 while a momentum buffer of it is non-zero
        (converting would erase the buffer: set that group's lr in the dict to
        the lr of the next step first), a complex state, or a step that is not a
        whole number.
    """
    _check_layout(state_dict)
    groups = [
        {k: _to_number(v) for k, v in g.items() if k not in _DROPPED_ON_IMPORT}
        for g in state_dict["param_groups"]
    ]
    for group, saved in zip(groups, state_dict["param_groups"]):
        group["params"] = list(saved.get("params", ()))
    lr_of = _lr_of_each_index(groups)
    state: dict[Any, Any] = {}
    for index, entry in state_dict["state"].items():
        if not isinstance(entry, Mapping):
            state[index] = entry  # load_state_dict names the problem
            continue
        converted = {}
        for key, value in entry.items():
            where = f"state[{index!r}][{key!r}]"
            array = _to_numpy(value)
            if key == "step":
                array = _step_from_torch(array, where)
            elif key in _TORCH_STATE_KEYS:
                _check_real(array, where)
            if key == "momentum_buffer" and index in lr_of:
                gi, lr = lr_of[index]
                if isinstance(lr, (int, float)) and not isinstance(lr, bool):
                    if lr == 0 and _nonzero(array):
                        raise ValueError(
                            f"param_groups[{gi}] has lr 0 and {where} is non-zero: lucid_fx keeps "
                            f"lr inside the momentum buffer (b = lr·b_torch), so converting "
                            f"would erase it. Set the group's lr in the state dict to the lr of "
                            f"the next step before loading."
                        )
                    array = (np.asarray(array, np.float64) * lr).astype(np.asarray(array).dtype)
            converted[key] = array
        state[index] = converted
    return {"state": state, "param_groups": groups}


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


def rmsprop_state_dict_to_torch(
    state_dict: Mapping[str, Any], *, tensors: bool = True
) -> StateDict:
    """A :meth:`lucid_fx.RMSprop.state_dict` in the form ``torch.optim.RMSprop`` loads.

    Each momentum buffer becomes ``b / lr`` with its group's lr, ``step`` a
    float32 scalar, and buffers a configuration uses but the state lacks yet
    (``centered`` or ``momentum`` switched on since the last step) are written
    as zeros, which is what lucid_fx would start them at (torch would fail on a
    missing key). With ``tensors=True`` (the default, which needs torch) the
    values are CPU torch tensors; with ``False``, NumPy arrays.

    Raises:
      ValueError: a group's lr is a schedule (torch's dict holds a number), or
        is 0 while one of its momentum buffers is non-zero (``b / 0`` is
        undefined: export before setting lr to 0), or a state is complex.
    """
    _check_layout(state_dict)
    as_value = _torch_tensor if tensors else np.asarray
    groups, lr_of = [], {}
    for gi, group in enumerate(state_dict["param_groups"]):
        lr = group["lr"]
        if callable(lr):
            raise ValueError(
                f"param_groups[{gi}]['lr'] is a schedule; torch's state dict holds a number: "
                f"set the group's lr to the value of the next step before exporting"
            )
        torch_group: dict[str, Any] = {
            key: _to_number(group[key]) for key in _TORCH_HYPERPARAMETERS if key in group
        }
        torch_group.update(capturable=False, foreach=None, differentiable=False)
        torch_group["params"] = list(group["params"])
        if "param_names" in group:  # torch >= 2.6 keeps them beside the indices
            torch_group["param_names"] = list(group["param_names"])
        groups.append(torch_group)
        lr_of.update({i: (gi, torch_group) for i in group["params"]})
    state: dict[Any, Any] = {}
    for index, entry in state_dict["state"].items():
        if index not in lr_of:
            raise ValueError(f"state[{index!r}] names no parameter of the state dict's groups")
        gi, group = lr_of[index]
        lr = float(group["lr"])
        square_avg = np.asarray(entry["square_avg"])
        converted: dict[str, Any] = {}
        for key in _TORCH_STATE_KEYS:
            where = f"state[{index!r}][{key!r}]"
            if key == "step":
                converted[key] = _torch_step(entry[key]) if tensors else np.float32(entry[key])
                continue
            if key in entry:
                array = np.asarray(entry[key])
            elif (key == "grad_avg" and group.get("centered")) or (
                key == "momentum_buffer" and group.get("momentum", 0) != 0
            ):
                array = np.zeros_like(square_avg)
            else:
                continue
            _check_real(array, where)
            if key == "momentum_buffer":
                if lr == 0 and _nonzero(array):
                    raise ValueError(
                        f"param_groups[{gi}] has lr 0 and {where} is non-zero: torch keeps lr out "
                        f"of the momentum buffer (b_torch = b / lr), so it cannot be recovered. "
                        f"Export before setting lr to 0, or with the lr of the next step."
                    )
                array = array if lr == 0 else (array.astype(np.float64) / lr).astype(array.dtype)
            converted[key] = as_value(array)
        state[index] = converted
    return {"state": state, "param_groups": groups}


def _torch_step(step: Any) -> Any:
    import torch

    # torch.optim.RMSprop keeps step as a 0-d float32 tensor on the CPU.
    return torch.tensor(float(np.asarray(step)), dtype=torch.float32)
