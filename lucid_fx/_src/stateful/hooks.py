"""An optimizer's hooks, as torch's: six registries, each called in registration order.

``Optimizer.register_*_hook`` adds a hook to one registry of :class:`Hooks` and
returns a :class:`RemovableHandle`; the optimizer calls :class:`Hooks`' run
methods around ``step``, ``state_dict`` and ``load_state_dict``. A hook that
returns something other than ``None`` replaces what it was given, where torch
allows that (a step's arguments, a state dict).

Example:
  >>> from lucid_fx._src.stateful.hooks import Hooks, register
  >>> hooks = Hooks()
  >>> handle = register(hooks.state_dict_post, lambda optimizer, sd: {**sd, "seen": True})
  >>> hooks.after_state_dict(None, {"state": {}})
  {'state': {}, 'seen': True}
  >>> handle.remove()
  >>> hooks.after_state_dict(None, {"state": {}})
  {'state': {}}
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeAlias

Hook: TypeAlias = Callable[..., Any]
Registry: TypeAlias = OrderedDict[int, Hook]


class RemovableHandle:
    """Returned by ``register_*_hook``; ``remove()`` unregisters the hook."""

    _ids = itertools.count()

    def __init__(self, hooks: Registry) -> None:
        self._hooks = hooks
        self.id = next(self._ids)

    def remove(self) -> None:
        self._hooks.pop(self.id, None)


def register(registry: Registry, hook: Hook) -> RemovableHandle:
    """Adds ``hook`` at the end of ``registry``; the handle removes it."""
    handle = RemovableHandle(registry)
    registry[handle.id] = hook
    return handle


class Hooks:
    """The six registries of one optimizer, and the calls that run them.

    A run iterates over a copy, so a hook may remove itself (or another).
    """

    __slots__ = ("load_post", "load_pre", "state_dict_post", "state_dict_pre", "step_post",
                 "step_pre")

    def __init__(self) -> None:
        self.step_pre: Registry = OrderedDict()  # hook(optimizer, args, kwargs) -> None | (args, kwargs)
        self.step_post: Registry = OrderedDict()  # hook(optimizer, args, kwargs)
        self.state_dict_pre: Registry = OrderedDict()  # hook(optimizer)
        self.state_dict_post: Registry = OrderedDict()  # hook(optimizer, state_dict) -> None | dict
        self.load_pre: Registry = OrderedDict()  # hook(optimizer, state_dict) -> None | dict
        self.load_post: Registry = OrderedDict()  # hook(optimizer)

    def before_step(
        self, optimizer: Any, closure: Callable[[], Any] | None
    ) -> tuple[Callable[[], Any] | None, tuple[Any, ...], dict[str, Any]]:
        """Runs the step pre-hooks on ``step(closure)``'s arguments; returns the closure
        they leave and the arguments, for :meth:`after_step`."""
        args: tuple[Any, ...] = (closure,) if closure is not None else ()
        kwargs: dict[str, Any] = {}
        for hook in list(self.step_pre.values()):
            result = hook(optimizer, args, kwargs)
            if result is not None:
                args, kwargs = result
        return (args[0] if args else kwargs.get("closure")), args, kwargs

    def after_step(self, optimizer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        _call_each(self.step_post, optimizer, args, kwargs)

    def before_state_dict(self, optimizer: Any) -> None:
        _call_each(self.state_dict_pre, optimizer)

    def after_state_dict(self, optimizer: Any, state_dict: Any) -> Any:
        return _replaced_by_each(self.state_dict_post, optimizer, state_dict)

    def before_load(self, optimizer: Any, state_dict: Any) -> Any:
        return _replaced_by_each(self.load_pre, optimizer, state_dict)

    def after_load(self, optimizer: Any) -> None:
        _call_each(self.load_post, optimizer)


def _call_each(registry: Registry, *args: Any) -> None:
    for hook in list(registry.values()):
        hook(*args)


def _replaced_by_each(registry: Registry, optimizer: Any, value: Any) -> Any:
    """``value`` passed through each hook; one that returns ``None`` keeps it."""
    for hook in list(registry.values()):
        returned = hook(optimizer, value)
        if returned is not None:
            value = returned
    return value
