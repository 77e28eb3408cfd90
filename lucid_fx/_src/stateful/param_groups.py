"""Parameter groups: what an optimizer's ``params`` argument may be, checked at the boundary.

An optimizer takes Parameters, ``(name, Parameter)`` pairs, or param-group
dicts of either (torch's forms). :func:`as_groups` turns the argument into a
list of group dicts, :func:`checked_group` checks one group and fills in the
defaults, :func:`check_naming` checks the names across groups, and
:func:`options_of` reads a group's options back. Every check
raises before any Parameter moves into an optimizer's storage.

Example:
  >>> import jax.numpy as jnp, lucid_fx as fx
  >>> from lucid_fx._src.stateful.param_groups import as_groups, checked_group, options_of
  >>> p = fx.Parameter(jnp.zeros(2))
  >>> [group] = as_groups("SGD", [("w", p)])
  >>> group = checked_group(group, set(), {"lr": 0.1, "momentum": 0}, lambda hyper: None)
  >>> group["param_names"], options_of(group)
  (['w'], {'lr': 0.1, 'momentum': 0})
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeAlias

import jax.numpy as jnp
import numpy as np

from lucid_fx._src.core.base import GradientTransformation
from lucid_fx._src.stateful.parameter import Parameter

ParamGroup: TypeAlias = dict[str, Any]  # {"params": [Parameter, ...], "lr": ..., ...}
# What optimizers take: Parameters, (name, Parameter) pairs, or param-group dicts of either.
Params: TypeAlias = Iterable[Parameter] | Iterable[tuple[str, Parameter]] | Iterable[ParamGroup]

# The keys torch's schedulers keep in a group are accepted too: resuming a
# scheduler (last_epoch >= 0) needs initial_lr in the group from the start.
SCHEDULER_KEYS = frozenset({"initial_lr", "max_lr", "min_lr", "base_momentum", "max_momentum",
                            "swa_lr"})

# torch's implementation arguments: they choose torch's kernels, never the math. Each
# optimizer takes those its torch class takes, in torch's positions, and keeps them in
# ``defaults`` and every group as torch does; lucid_fx's step is one fused XLA program
# whatever they say.
IMPLEMENTATION_OPTIONS = ("foreach", "fused", "capturable", "differentiable")
_MAY_BE_NONE = frozenset({"foreach", "fused"})


def check_implementation_options(options: Mapping[str, Any]) -> None:
    """Raises unless the implementation options in ``options`` are torch's values.

    ``foreach`` and ``fused`` are None, True or False, ``capturable`` and
    ``differentiable`` True or False (``ValueError`` otherwise). As torch,
    ``fused`` and ``foreach`` may not both be True (``RuntimeError``).
    ``differentiable=True`` is refused (``ValueError``): a stateful step writes
    its Parameters in place, so it has no derivative; the functional face is
    the differentiable one.

    Example:
      >>> from lucid_fx._src.stateful.param_groups import check_implementation_options
      >>> check_implementation_options({"foreach": None, "differentiable": False})
      >>> check_implementation_options({"foreach": "yes"})
      Traceback (most recent call last):
      ...
      ValueError: Invalid foreach value: 'yes' (expected None, True or False)
    """
    for name in IMPLEMENTATION_OPTIONS:
        if name not in options:
            continue
        value = options[name]
        if not (isinstance(value, (bool, np.bool_)) or (value is None and name in _MAY_BE_NONE)):
            expected = "None, True or False" if name in _MAY_BE_NONE else "True or False"
            raise ValueError(f"Invalid {name} value: {value!r} (expected {expected})")
    if options.get("differentiable"):
        raise ValueError(
            "differentiable=True is not supported: a stateful step() writes its Parameters "
            "in place, so there is nothing to differentiate. Differentiate through the "
            "functional face instead, which is pure: tx = fx.adam(...); jax.grad of a "
            "function that calls tx.update(grads, state, params) and fx.apply_updates"
        )
    if options.get("fused") and options.get("foreach"):
        raise RuntimeError("`fused` and `foreach` cannot be `True` together.")


def check_hyperparameters(
    factory: Callable[..., GradientTransformation], hyper: Mapping[str, Any]
) -> None:
    """Raises unless ``hyper`` holds valid implementation options and ``factory`` accepts
    the rest, with a number for lr."""
    check_implementation_options(hyper)
    # The factory validates its arguments: calling it is the one shared check.
    factory(**{k: v for k, v in hyper.items() if k not in IMPLEMENTATION_OPTIONS})
    if callable(hyper.get("lr")):
        raise ValueError(  # noqa: TRY004 (one error type for every bad value)
            "a stateful optimizer takes a number for lr, not a schedule: drive it with "
            "a scheduler from fx.lr_scheduler (it writes param_groups[i]['lr'], no "
            "recompilation), or pass the schedule to a functional transform "
            "(fx.adam(lr=fx.schedules.cosine_annealing_lr(...)))"
        )


def as_groups(owner: str, params: Any) -> list[Any]:
    """``params`` as a non-empty list of group dicts (not yet checked); ``owner`` names the class."""
    if isinstance(params, (set, frozenset)):
        raise TypeError(
            "params must be an ordered iterable (a list or tuple), not a set: "
            "the order of a set changes between runs, and state dicts rely on it"
        )
    if isinstance(params, Mapping):
        hint = ("wrap the group in a list: [group]" if "params" in params
                else "pass fx.parameters(model) or fx.named_parameters(model)")
        raise TypeError(
            f"{owner} got a dict as params (keys {sorted(map(str, params))[:5]}): "
            f"{hint}"
        )
    if isinstance(params, Parameter):
        raise TypeError("params must be an iterable of Parameters, not one Parameter: wrap it in a list")
    if not isinstance(params, Iterable):
        raise TypeError(
            f"params must be an iterable of Parameters or of param-group dicts, "
            f"got {type(params).__name__}: pass fx.parameters(model)"
        )
    groups = list(params)
    if not groups:
        raise ValueError("optimizer got an empty parameter list: pass fx.parameters(model)")
    if not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    return groups


def checked_group(
    param_group: Any, seen: set[int], defaults: Mapping[str, Any],
    check: Callable[[Mapping[str, Any]], None],
) -> ParamGroup:
    """The group with ``defaults`` filled in; raises on any invalid entry. ``seen`` grows.

    ``seen`` holds the ids of the Parameters of earlier groups; ``check`` checks
    the group's hyper-parameters (the optimizer's ``_check_hyperparameters``).
    """
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
    params, names = split_names(list(params))
    if not params:
        raise ValueError("a param group must hold at least one Parameter")
    if "param_names" in param_group:
        raise ValueError(
            "a param group gets its param_names from (name, Parameter) pairs: "
            "pass 'params': fx.named_parameters(model) instead of a 'param_names' entry"
        )
    unknown = set(param_group) - set(defaults) - {"params"} - SCHEDULER_KEYS
    if unknown:
        raise ValueError(
            f"unknown hyper-parameter(s) {sorted(unknown)} in param group; "
            f"valid keys: {sorted(defaults)}"
        )
    for i, p in enumerate(params):
        if not isinstance(p, Parameter):
            raise TypeError(
                f"optimizer can only optimize fx.Parameter objects, but params[{i}] is a "
                f"{type(p).__name__}: wrap arrays in fx.Parameter(...)"
            )
        if not jnp.issubdtype(p.dtype, jnp.inexact):
            raise TypeError(
                f"optimizer can only optimize floating-point Parameters, but params[{i}] "
                f"has dtype {p.dtype}: cast its value or leave it out"
            )
        if id(p) in seen:
            raise ValueError(
                f"params[{i}] {p!r} appears more than once (in this group or an earlier "
                f"one); each Parameter may be optimized by one group only"
            )
        seen.add(id(p))
    group = {**defaults, **param_group, "params": params}
    check(options_of(group, defaults))
    if names is not None:
        group["param_names"] = names
    return group


def options_of(
    group: Mapping[str, Any], keys: Iterable[str] | None = None
) -> dict[str, Any]:
    """A param group's entries but its params and their names; only ``keys`` if given.

    A group may carry keys a scheduler writes (``initial_lr``, ``max_lr``, ...):
    they travel with the group and its state dict, but the transform is called
    with its own keys only (``keys=self.defaults``).
    """
    wanted = None if keys is None else set(keys)
    return {k: v for k, v in group.items()
            if k not in ("params", "param_names") and (wanted is None or k in wanted)}


def _is_named_pair(entry: Any) -> bool:
    return isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str)


def split_names(entries: list[Any]) -> tuple[list[Any], list[str] | None]:
    """``[(name, p), ...]`` -> ``([p, ...], [name, ...])``; plain Parameters -> ``(entries, None)``."""
    named = [_is_named_pair(e) for e in entries]
    if not any(named):
        return entries, None
    if not all(named):
        i = named.index(False)
        raise ValueError(  # torch's type for this mistake
            f"params mixes (name, Parameter) pairs and plain entries (params[{i}] is a "
            f"{type(entries[i]).__name__}): pass fx.named_parameters(model) or fx.parameters(model)"
        )
    return [p for _, p in entries], [name for name, _ in entries]


def check_naming(groups: list[ParamGroup]) -> None:
    """All groups named or none (as torch requires), and every name once across them."""
    named = ["param_names" in g for g in groups]
    if any(named) and not all(named):
        raise ValueError(
            "either every param group gives (name, Parameter) pairs or none does: "
            "state dicts pair parameters by name only when all have one"
        )
    counts = Counter(n for g in groups for n in g.get("param_names", ()))
    repeated = sorted(n for n, count in counts.items() if count > 1)
    if repeated:
        raise ValueError(f"parameter name(s) {repeated} appear more than once")


def bind(cls: type, signature: inspect.Signature, args: Any, kwargs: Any) -> inspect.BoundArguments:
    """``signature.bind(*args, **kwargs)``; a mistake names the class and its valid keys."""
    try:
        return signature.bind(*args, **kwargs)
    except TypeError as error:
        valid = [n for n, p in signature.parameters.items()
                 if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n != "self"]
        unknown = sorted(set(kwargs) - set(valid))
        problem = (f"got unknown keyword argument(s) {unknown}" if unknown
                   else f"was called wrongly ({error})")
        raise TypeError(f"{cls.__name__} {problem}; its arguments are {', '.join(valid)}") from None
