"""The generic stateful optimizer: torch's ``Optimizer`` interface over any transform.

``Optimizer`` owns everything that is not math: parameter groups, lazily created
per-parameter state, ``zero_grad``, ``step(closure)``, state dicts and hooks.
The math comes from a transform factory (``fx.rmsprop`` for ``fx.RMSprop``):
each step calls ``factory(**hyperparameters).update`` inside one compiled
function for all groups and parameters. Numeric hyper-parameters enter that
function as arrays, so writing ``param_groups[i]["lr"] = ...`` takes effect at
the next step without recompiling; parameter values and state are donated, so a
step updates them in place.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np

from lucid_fx.autodiff import Parameter
from lucid_fx.base import GradientTransformation, apply_updates

ParamGroup: TypeAlias = dict[str, Any]  # {"params": [Parameter, ...], "lr": ..., ...}
StateDict: TypeAlias = dict[str, Any]
Closure: TypeAlias = Callable[[], Any]
_ParamState: TypeAlias = Any  # the factory's state NamedTuple for one parameter


class RemovableHandle:
    """Returned by ``register_*_hook``; ``remove()`` unregisters the hook."""

    _ids = itertools.count()

    def __init__(self, hooks: OrderedDict[int, Callable[..., Any]]) -> None:
        self._hooks = hooks
        self.id = next(self._ids)

    def remove(self) -> None:
        self._hooks.pop(self.id, None)


def _is_static(value: Any) -> bool:
    """Values that shape the compiled step (flags, dtypes, None) rather than feed it."""
    return value is None or isinstance(value, (bool, str, np.dtype, type))


def _as_hyper_array(value: Any) -> jax.Array:
    # float64 when x64 is on, so float64 parameters see their exact hyper-parameters.
    return jnp.asarray(value, dtype=jnp.result_type(float))


class Optimizer:
    """Base of the stateful optimizers: param groups, state, step, state dicts, hooks.

    Subclasses name their transform factory in ``transform``; its keyword
    arguments (and their defaults) are the hyper-parameters. Hyper-parameters in
    ``structural_zeros`` (name -> state field) are compiled out while they are 0
    and no parameter of the group holds that field yet (momentum's buffer).

    The factory's state for one parameter must be a NamedTuple of arrays (or
    ``None`` for unused fields); its field names are the state-dict keys.
    """

    transform: Callable[..., GradientTransformation]
    structural_zeros: Mapping[str, str] = {}
    skip_flag: str | None = None

    def __init__(self, params: Iterable[Parameter] | Iterable[ParamGroup], *args: Any, **kwargs: Any):
        signature = inspect.signature(type(self).transform)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        self.defaults: dict[str, Any] = dict(bound.arguments)
        self._check_hyperparameters(self.defaults)
        self.param_groups: list[ParamGroup] = []
        self._state: dict[Parameter, _ParamState] = {}
        self._step_pre_hooks: OrderedDict[int, Callable[..., Any]] = OrderedDict()
        self._step_post_hooks: OrderedDict[int, Callable[..., Any]] = OrderedDict()
        self._state_dict_pre_hooks: OrderedDict[int, Callable[..., Any]] = OrderedDict()
        self._state_dict_post_hooks: OrderedDict[int, Callable[..., Any]] = OrderedDict()
        self._load_pre_hooks: OrderedDict[int, Callable[..., Any]] = OrderedDict()
        self._load_post_hooks: OrderedDict[int, Callable[..., Any]] = OrderedDict()

        if isinstance(params, (set, frozenset)):
            raise TypeError(
                "params must be an ordered iterable (a list or tuple), not a set: "
                "the order of a set changes between runs, and state dicts rely on it"
            )
        if isinstance(params, Parameter):
            raise TypeError("params must be an iterable of Parameters, not one Parameter: wrap it in a list")
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list: pass fx.parameters(model)")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    # ----- parameter groups ---------------------------------------------------------

    def _check_hyperparameters(self, hyper: Mapping[str, Any]) -> None:
        # The factory validates its arguments: calling it is the one shared check.
        type(self).transform(**hyper)

    def add_param_group(self, param_group: ParamGroup) -> None:
        """Adds a group: ``{"params": [...], **hyper-parameters}``; missing keys take defaults."""
        if not isinstance(param_group, dict):
            raise TypeError(f"a param group must be a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError("a param group must have a 'params' entry")
        params = param_group["params"]
        if isinstance(params, Parameter):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError(
                "a param group's params must be an ordered iterable (a list or tuple), not a set"
            )
        params = list(params)
        if not params:
            raise ValueError("a param group must hold at least one Parameter")
        unknown = set(param_group) - set(self.defaults) - {"params"}
        if unknown:
            raise ValueError(
                f"unknown hyper-parameter(s) {sorted(unknown)} in param group; "
                f"valid keys: {sorted(self.defaults)}"
            )
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for i, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(
                    f"optimizer can only optimize fx.Parameter objects, but params[{i}] is a "
                    f"{type(p).__name__}: wrap arrays in fx.Parameter(...)"
                )
            if not jnp.issubdtype(p.value.dtype, jnp.inexact):
                raise TypeError(
                    f"optimizer can only optimize floating-point Parameters, but params[{i}] "
                    f"has dtype {p.value.dtype}: cast its value or leave it out"
                )
            if id(p) in seen:
                raise ValueError(
                    f"params[{i}] {p!r} appears more than once (in this group or an earlier "
                    f"one); each Parameter may be optimized by one group only"
                )
            seen.add(id(p))
        group = {**self.defaults, **param_group, "params": params}
        self._check_hyperparameters({k: v for k, v in group.items() if k != "params"})
        self.param_groups.append(group)

    @property
    def state(self) -> Mapping[Parameter, dict[str, jax.Array]]:
        """Parameter -> its state as a dict (torch's keys); a read-only snapshot."""
        return MappingProxyType({p: _fields(s) for p, s in self._state.items()})

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines.append(f"    params: {len(group['params'])} Parameter(s)")
            lines.extend(f"    {k}: {v}" for k, v in sorted(group.items()) if k != "params")
        lines.append(")")
        return "\n".join(lines)

    # ----- gradients and steps ------------------------------------------------------

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clears every ``.grad``: to ``None`` (default) or to zeros of the value's shape."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad = jnp.zeros_like(p.value)

    def step(self, closure: Closure | None = None) -> Any:
        """One optimization step over every Parameter whose ``.grad`` is set.

        ``closure`` (which should zero the grads, compute the loss and call
        ``fx.backward``) runs first and its loss is returned; without it, returns
        ``None``. Parameters without a gradient are skipped, their state untouched.
        The whole step is one compiled call; on error nothing has changed.
        """
        args: tuple[Any, ...] = (closure,) if closure is not None else ()
        kwargs: dict[str, Any] = {}
        for hook in list(self._step_pre_hooks.values()):
            result = hook(self, args, kwargs)
            if result is not None:
                args, kwargs = result
        closure = args[0] if args else kwargs.get("closure")
        loss = closure() if closure is not None else None
        self._apply_step()
        for hook in list(self._step_post_hooks.values()):
            hook(self, args, kwargs)
        return loss

    def _group_call(self, group: ParamGroup) -> tuple[tuple[tuple[str, Any], ...], dict[str, jax.Array]]:
        """Splits a group's hyper-parameters into the compile key and the traced arrays."""
        self._check_hyperparameters({k: v for k, v in group.items() if k != "params"})
        static: list[tuple[str, Any]] = []
        arrays: dict[str, jax.Array] = {}
        for name in self.defaults:
            value = group[name]
            field = self.structural_zeros.get(name)
            if _is_static(value) or callable(value):
                static.append((name, value))
            elif field is not None and value == 0 and not any(
                getattr(self._state.get(p), field, None) is not None for p in group["params"]
            ):
                static.append((name, 0))
            else:
                arrays[name] = _as_hyper_array(value)
        return tuple(static), arrays

    def _apply_step(self) -> None:
        statics, hypers, values, grads, states, owners = [], [], [], [], [], []
        for group in self.param_groups:
            active = [p for p in group["params"] if p.grad is not None]
            for p in active:
                _check_grad(p)
            static, arrays = self._group_call(group)
            statics.append(static)
            hypers.append(arrays)
            values.append([p.value for p in active])
            grads.append([p.grad for p in active])
            states.append([self._state.get(p) for p in active])
            owners.append(active)
        if not any(owners):
            return
        new_values, new_states = _compiled_step(
            type(self).transform, tuple(statics), self.skip_flag, hypers, values, grads, states
        )
        for active, vals, sts in zip(owners, new_values, new_states):
            for p, v, s in zip(active, vals, sts):
                p.value = v
                self._state[p] = s

    # ----- state dicts --------------------------------------------------------------

    def _indexed_params(self) -> list[Parameter]:
        return [p for group in self.param_groups for p in group["params"]]

    def state_dict(self) -> StateDict:
        """torch's layout: ``{"state": {index: {key: np.ndarray}}, "param_groups": [...]}``.

        Indices count Parameters across groups in order. Values are host NumPy
        copies (gathered from every device), so the result pickles anywhere.
        """
        for hook in list(self._state_dict_pre_hooks.values()):
            hook(self)
        index = {id(p): i for i, p in enumerate(self._indexed_params())}
        state = {
            index[id(p)]: {k: np.asarray(jax.device_get(v)) for k, v in _fields(s).items()}
            for p, s in self._state.items()
        }
        state = dict(sorted(state.items()))
        groups = []
        for group in self.param_groups:
            entry = {k: v for k, v in group.items() if k != "params"}
            entry["params"] = [index[id(p)] for p in group["params"]]
            groups.append(entry)
        result: StateDict = {"state": state, "param_groups": groups}
        for hook in list(self._state_dict_post_hooks.values()):
            returned = hook(self, result)
            if returned is not None:
                result = returned
        return result

    def load_state_dict(self, state_dict: StateDict) -> None:
        """Restores hyper-parameters and state; validates everything before changing anything.

        Raises ``ValueError`` naming the first offending entry (group count or
        size, unknown or missing keys, shapes, dtypes); the optimizer is then
        unchanged. Each buffer is placed with its Parameter's current sharding.
        """
        for hook in list(self._load_pre_hooks.values()):
            returned = hook(self, state_dict)
            if returned is not None:
                state_dict = returned
        new_groups, new_state = self._validated(state_dict)
        for group, hyper in zip(self.param_groups, new_groups):
            group.update(hyper)
        self._state = new_state
        for hook in list(self._load_post_hooks.values()):
            hook(self)

    def _validated(self, sd: Any) -> tuple[list[dict[str, Any]], dict[Parameter, _ParamState]]:
        if not isinstance(sd, Mapping) or set(sd) != {"state", "param_groups"}:
            keys = sorted(sd) if isinstance(sd, Mapping) else type(sd).__name__
            raise ValueError(
                f"state dict must have exactly the keys 'state' and 'param_groups', got {keys}"
            )
        saved_groups = sd["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"state dict has {len(saved_groups)} param group(s), the optimizer has "
                f"{len(self.param_groups)}"
            )
        new_groups = []
        for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved.get("params", ())) != len(group["params"]):
                raise ValueError(
                    f"param_groups[{gi}] holds {len(saved.get('params', ()))} parameter(s) in "
                    f"the state dict, {len(group['params'])} in the optimizer"
                )
            unknown = set(saved) - set(self.defaults) - {"params"}
            if unknown:
                raise ValueError(f"param_groups[{gi}] has unknown key(s) {sorted(unknown)}")
            hyper = {k: v for k, v in saved.items() if k != "params"}
            try:
                self._check_hyperparameters({**self.defaults, **hyper})
            except ValueError as error:
                raise ValueError(f"param_groups[{gi}]: {error}") from None
            new_groups.append(hyper)
        index_to_param: dict[Any, Parameter] = {}
        for saved, group in zip(saved_groups, self.param_groups):
            index_to_param.update(zip(saved["params"], group["params"]))
        new_state: dict[Parameter, _ParamState] = {}
        for index, entry in sd["state"].items():
            if index not in index_to_param:
                raise ValueError(f"state[{index!r}] names no parameter of the state dict's groups")
            new_state[index_to_param[index]] = self._state_from_entry(
                index_to_param[index], entry, where=f"state[{index!r}]"
            )
        return new_groups, new_state

    def _state_from_entry(self, p: Parameter, entry: Any, *, where: str) -> _ParamState:
        """The factory's state for ``p`` built from a saved dict, checked against a fresh one."""
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where} must be a dict of arrays, got {type(entry).__name__}")
        template = _full_template(type(self).transform, p)
        known = set(template._fields)
        unknown = set(entry) - known
        if unknown:
            raise ValueError(f"{where} has unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        required = {f for f in _required_fields(type(self).transform, p)}
        missing = required - set(entry)
        if missing:
            raise ValueError(f"{where} is missing key(s) {sorted(missing)}")
        sharding = getattr(p.value, "sharding", None)
        fields = {}
        for name in template._fields:
            if name not in entry:
                fields[name] = None
                continue
            expected = getattr(template, name)
            array = np.asarray(entry[name])
            if array.shape != tuple(expected.shape):
                raise ValueError(
                    f"{where}[{name!r}] has shape {array.shape}, expected {tuple(expected.shape)}"
                )
            if array.dtype != expected.dtype:
                raise ValueError(
                    f"{where}[{name!r}] has dtype {array.dtype}, expected {expected.dtype}"
                )
            fields[name] = array
        placed = {
            name: None if a is None else jax.device_put(a, sharding if a.shape == p.shape else None)
            for name, a in fields.items()
        }
        return type(template)(**placed)

    # ----- hooks --------------------------------------------------------------------

    def _register(self, hooks: OrderedDict[int, Callable[..., Any]], hook: Callable[..., Any]) -> RemovableHandle:
        handle = RemovableHandle(hooks)
        hooks[handle.id] = hook
        return handle

    def register_step_pre_hook(self, hook: Callable[..., Any]) -> RemovableHandle:
        """``hook(optimizer, args, kwargs)`` before each step; may return new ``(args, kwargs)``."""
        return self._register(self._step_pre_hooks, hook)

    def register_step_post_hook(self, hook: Callable[..., Any]) -> RemovableHandle:
        """``hook(optimizer, args, kwargs)`` after each step."""
        return self._register(self._step_post_hooks, hook)

    def register_state_dict_pre_hook(self, hook: Callable[..., Any]) -> RemovableHandle:
        """``hook(optimizer)`` before ``state_dict()`` builds its result."""
        return self._register(self._state_dict_pre_hooks, hook)

    def register_state_dict_post_hook(self, hook: Callable[..., Any]) -> RemovableHandle:
        """``hook(optimizer, state_dict)`` after; may return a replacement dict."""
        return self._register(self._state_dict_post_hooks, hook)

    def register_load_state_dict_pre_hook(self, hook: Callable[..., Any]) -> RemovableHandle:
        """``hook(optimizer, state_dict)`` before loading; may return a replacement dict."""
        return self._register(self._load_pre_hooks, hook)

    def register_load_state_dict_post_hook(self, hook: Callable[..., Any]) -> RemovableHandle:
        """``hook(optimizer)`` after a successful load."""
        return self._register(self._load_post_hooks, hook)


# ----- helpers shared by step and load -----------------------------------------------


def _fields(state: _ParamState) -> dict[str, Any]:
    return {k: v for k, v in state._asdict().items() if v is not None}


def _check_grad(p: Parameter) -> None:
    g, value = p.grad, p.value
    if not isinstance(g, jax.Array):
        raise TypeError(f"{p!r} has a .grad of type {type(g).__name__}; expected a jax.Array")
    if g.shape != value.shape:
        raise ValueError(f"{p!r} has a gradient of shape {tuple(g.shape)}; expected {p.shape}")
    if g.dtype != value.dtype:
        raise ValueError(
            f"{p!r} has a gradient of dtype {g.dtype}; expected {p.dtype} "
            f"(cast the gradient, or the loss inputs, to the parameter's dtype)"
        )


def _abstract(p: Parameter) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(p.shape, p.dtype)


def _full_template(factory: Callable[..., GradientTransformation], p: Parameter) -> Any:
    """The state shape with every optional field on (all hyper-parameters as arrays)."""
    kwargs = _all_on_kwargs(factory)
    return jax.eval_shape(lambda: factory(**kwargs).init(jnp.zeros(p.shape, p.dtype)))


def _required_fields(factory: Callable[..., GradientTransformation], p: Parameter) -> set[str]:
    """Fields present in every configuration: those of the all-defaults state."""
    state = jax.eval_shape(lambda: factory().init(jnp.zeros(p.shape, p.dtype)))
    return set(_fields(state))


def _all_on_kwargs(factory: Callable[..., GradientTransformation]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for name, param in inspect.signature(factory).parameters.items():
        default = param.default
        if isinstance(default, bool):
            kwargs[name] = True
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            kwargs[name] = jnp.asarray(0.5)  # an array, so structure-affecting buffers exist
    return kwargs


@jax.jit(static_argnums=(0, 1, 2), donate_argnums=(4, 6))
def _compiled_step(
    factory: Callable[..., GradientTransformation],
    statics: tuple[tuple[tuple[str, Any], ...], ...],
    skip_flag: str | None,
    hypers: list[dict[str, jax.Array]],
    values: list[list[jax.Array]],
    grads: list[list[jax.Array]],
    states: list[list[_ParamState | None]],
) -> tuple[list[list[jax.Array]], list[list[_ParamState]]]:
    """One step for every group and parameter, traced once per structure.

    Each parameter is its own one-leaf problem, so its step count and buffers
    are its own (torch's per-parameter state). A parameter without state gets the
    transform's fresh ``init``; a buffer the configuration does not use (grad_avg
    after ``centered`` is turned off) is carried through unchanged.
    """
    skipping = [bool(dict(static).get(skip_flag, False)) for static in statics]
    if any(skipping):
        # One non-finite gradient anywhere poisons every gradient of the skipping
        # groups, so each parameter's own check skips (and counts) this step.
        finite = jnp.all(jnp.asarray(
            [jnp.all(jnp.isfinite(g)) for skip, grs in zip(skipping, grads) if skip for g in grs]
        ))
        grads = [
            [jnp.where(finite, g, jnp.nan) for g in grs] if skip else grs
            for skip, grs in zip(skipping, grads)
        ]
    new_values, new_states = [], []
    for static, hyper, vals, grs, sts in zip(statics, hypers, values, grads, states):
        tx = factory(**dict(static), **hyper)
        group_values, group_states = [], []
        for v, g, s in zip(vals, grs, sts):
            fresh = tx.init(v)
            used = fresh if s is None else type(fresh)(
                *(None if f is None else (f if o is None else o) for f, o in zip(fresh, s))
            )
            update, new = tx.update(g, used, v)
            if s is not None:  # re-attach buffers this configuration leaves alone
                new = type(new)(*(o if n is None else n for n, o in zip(new, s)))
            group_values.append(apply_updates(v, update))
            group_states.append(new)
        new_values.append(group_values)
        new_states.append(group_states)
    return new_values, new_states
