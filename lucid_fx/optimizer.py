"""The generic stateful optimizer: torch's ``Optimizer`` interface over any transform.

``Optimizer`` owns everything that is not math: parameter groups, lazily created
per-parameter state, ``zero_grad``, ``step(closure)``, state dicts and hooks.
The math comes from a transform factory (``fx.rmsprop`` for ``fx.RMSprop``):
each step calls ``factory(**hyperparameters).update`` inside one compiled,
donated function for all groups and parameters.

Two choices make that fast. Numeric hyper-parameters enter the compiled step as
arrays, so writing ``param_groups[i]["lr"] = ...`` takes effect at the next step
without recompiling. And the optimizer keeps the small same-dtype Parameters of
a group in one packed buffer (:mod:`lucid_fx.packing`), with their gradients
and state packed alike, so a step moves a few arrays across the jit boundary
instead of several per parameter; ``fx.backward`` differentiates the packed
buffer directly.
"""

from __future__ import annotations

import inspect
import itertools
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np

from lucid_fx import state_schema, torch_compat
from lucid_fx.autodiff import Parameter
from lucid_fx.base import GradientTransformation, apply_updates
from lucid_fx.dispatch import wait_for
from lucid_fx.hyperparameters import PreciseScalar, as_precise, is_static
from lucid_fx.packing import PackLayout, ParamPack, check_grad, per_array, per_element, slot_mask
from lucid_fx.sharding import to_host
from lucid_fx.state_schema import Field
from lucid_fx.tracing import check_eager

if TYPE_CHECKING:
    from typing import Self  # Python 3.11; annotations only, so 3.10 imports fine

ParamGroup: TypeAlias = dict[str, Any]  # {"params": [Parameter, ...], "lr": ..., ...}
# What optimizers take: Parameters, (name, Parameter) pairs, or param-group dicts of either.
Params: TypeAlias = Iterable[Parameter] | Iterable[tuple[str, Parameter]] | Iterable[ParamGroup]
StateDict: TypeAlias = dict[str, Any]
Closure: TypeAlias = Callable[[], Any]
PackState: TypeAlias = Any  # the factory's state NamedTuple over one pack's buffer

# Parameters up to this many elements share packed buffers; larger ones keep
# their own array, so reading their ``.value`` never copies.
PACK_MAX_ELEMENTS = 1 << 16


class RemovableHandle:
    """Returned by ``register_*_hook``; ``remove()`` unregisters the hook."""

    _ids = itertools.count()

    def __init__(self, hooks: OrderedDict[int, Callable[..., Any]]) -> None:
        self._hooks = hooks
        self.id = next(self._ids)

    def remove(self) -> None:
        self._hooks.pop(self.id, None)


def _packable(p: Parameter) -> bool:
    value = p.value
    # An empty array has no element to carry its per-parameter counts in a buffer.
    return 0 < value.size <= PACK_MAX_ELEMENTS and len(value.sharding.device_set) == 1


class Optimizer:
    """Base of the stateful optimizers: param groups, state, step, state dicts, hooks.

    Subclasses name their transform factory in ``transform``; its keyword
    arguments (and their defaults) are the hyper-parameters. ``skip_flag`` names
    the boolean hyper-parameter with which the transform skips a step on
    non-finite gradients; the optimizer makes that decision step-wide, so one
    bad gradient skips every parameter of those groups.

    The factory's state is a NamedTuple that declares its schema
    (:mod:`lucid_fx.state_schema`): which fields are parameter-shaped buffers,
    which are one number per parameter (a step count), their dtypes, and the
    hyper-parameter whose 0 removes a field (compiled out while it is 0 and no
    parameter of the group holds that field yet, as momentum's buffer). Its
    field names are the state-dict keys. A schedule for ``lr`` is not accepted
    here: a scheduler of :mod:`lucid_fx.lr_scheduler` writes ``param_groups``.
    """

    transform: Callable[..., GradientTransformation]
    skip_flag: str | None = None
    # Where a buffer's layout differs from torch's (RMSprop keeps lr inside its
    # momentum buffer): the conversions, as torch_compat.BufferConversion.
    torch_buffer_from: torch_compat.BufferConversion | None = None
    torch_buffer_to: torch_compat.BufferConversion | None = None
    # State fields no run makes negative, and what they are (for the message);
    # counts always, a subclass adds what its math rules out (RMSprop's average).
    never_negative: Mapping[str, str] = {"step": "a step count"}
    # Hyper-parameters compiled out while they are 0, as the functional face does for
    # a Python 0: weight decay then reads no θ (one pass over memory fewer). Writing
    # a non-zero value compiles the step once more; going back to 0 reuses the first.
    compiled_out_at_zero: tuple[str, ...] = ("weight_decay",)

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        # A subclass's explicit __init__ (the signature IDEs and type checkers see)
        # makes Python reject an unknown keyword tersely; bind here first to say more.
        if args or kwargs:
            _bind(cls, inspect.signature(cls.__init__), (None, *args), kwargs)
        return super().__new__(cls)

    def __init__(self, params: Params, *args: Any, **kwargs: Any) -> None:
        check_eager(f"{type(self).__name__}(...)")
        bound = _bind(type(self), inspect.signature(type(self).transform), args, kwargs)
        bound.apply_defaults()
        self.defaults: dict[str, Any] = dict(bound.arguments)
        self._check_hyperparameters(self.defaults)
        self.param_groups: list[ParamGroup] = []
        self._packs: list[list[ParamPack]] = []  # per group
        self._pack_state: dict[ParamPack, PackState] = {}
        self._initialized: dict[ParamPack, np.ndarray] = {}  # slots that have state
        self._state_snapshot: Mapping[Parameter, dict[str, jax.Array]] | None = None
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
        if isinstance(params, Mapping):
            hint = ("wrap the group in a list: [group]" if "params" in params
                    else "pass fx.parameters(model) or fx.named_parameters(model)")
            raise TypeError(
                f"{type(self).__name__} got a dict as params (keys {sorted(map(str, params))[:5]}): "
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
        # Every group is checked before any Parameter moves into this optimizer's
        # storage, so a failed construction leaves the Parameters as they were.
        seen: set[int] = set()
        checked = [self._checked_group(group, seen) for group in groups]
        _check_naming([*checked])
        for group in checked:
            self._add_checked_group(group)

    # ----- parameter groups ---------------------------------------------------------

    def _check_hyperparameters(self, hyper: Mapping[str, Any]) -> None:
        # The factory validates its arguments: calling it is the one shared check.
        type(self).transform(**hyper)
        if callable(hyper.get("lr")):
            raise ValueError(  # noqa: TRY004 (one error type for every bad value)
                "a stateful optimizer takes a number for lr, not a schedule: drive it with "
                "a scheduler from fx.lr_scheduler (it writes param_groups[i]['lr'], no "
                "recompilation), or pass the schedule to a functional transform "
                "(fx.adam(lr=fx.schedules.cosine_annealing_lr(...)))"
            )

    def add_param_group(self, param_group: ParamGroup) -> None:
        """Adds a group: ``{"params": [...], **hyper-parameters}``; missing keys take defaults."""
        check_eager(f"{type(self).__name__}.add_param_group()")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        group = self._checked_group(param_group, seen)
        _check_naming([*self.param_groups, group])
        self._add_checked_group(group)

    def _add_checked_group(self, group: ParamGroup) -> None:
        self.param_groups.append(group)
        self._packs.append(self._make_packs(group["params"]))

    def _checked_group(self, param_group: Any, seen: set[int]) -> ParamGroup:
        """The group with defaults filled in; raises on any invalid entry. ``seen`` grows."""
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
        params, names = _split_names(list(params))
        if not params:
            raise ValueError("a param group must hold at least one Parameter")
        if "param_names" in param_group:
            raise ValueError(
                "a param group gets its param_names from (name, Parameter) pairs: "
                "pass 'params': fx.named_parameters(model) instead of a 'param_names' entry"
            )
        # The keys torch's schedulers keep in a group are accepted too: resuming a
        # scheduler (last_epoch >= 0) needs initial_lr in the group from the start.
        scheduler_keys = {"initial_lr", "max_lr", "min_lr", "base_momentum", "max_momentum"}
        unknown = set(param_group) - set(self.defaults) - {"params"} - scheduler_keys
        if unknown:
            raise ValueError(
                f"unknown hyper-parameter(s) {sorted(unknown)} in param group; "
                f"valid keys: {sorted(self.defaults)}"
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
        group = {**self.defaults, **param_group, "params": params}
        self._check_hyperparameters(_hyperparameters(group, self.defaults))
        if names is not None:
            group["param_names"] = names
        return group

    def _make_packs(self, params: list[Parameter]) -> list[ParamPack]:
        """Moves ``params`` into packed storage: small ones share a buffer per dtype."""
        for p in params:
            if p._pack is not None:
                # Taken over from an earlier optimizer (re-running `opt = RMSprop(...)`
                # is common): that optimizer's storage is retired, so it cannot step
                # a Parameter it no longer holds.
                value, grad = p.value, p.grad
                p._pack.retired = True
                p._pack, p._value, p._grad = None, value, grad
        by_dtype: dict[np.dtype, list[Parameter]] = {}
        packs = []
        for p in params:
            if _packable(p):
                by_dtype.setdefault(p.dtype, []).append(p)
            else:
                packs.append(ParamPack([p], flat=False))
        for members in by_dtype.values():
            start, total = 0, 0
            for end, member in enumerate([*members, None]):
                if member is None or total + member.value.size > ParamPack.MAX_ELEMENTS:
                    packs.append(ParamPack(members[start:end]))
                    start, total = end, 0
                if member is not None:
                    total += member.value.size
        for pack in packs:
            for slot, p in enumerate(pack.params):
                grad = p._grad
                p._pack, p._slot, p._value, p._grad = pack, slot, None, None
                if grad is not None:
                    p.grad = grad
            self._initialized[pack] = np.zeros(len(pack.params), bool)
        return packs

    @property
    def state(self) -> Mapping[Parameter, dict[str, jax.Array]]:
        """Parameter -> its state as a dict (torch's keys); a read-only snapshot.

        Built once per step (one host copy per packed buffer), so reading it in a
        loop over the parameters costs no more than reading it once.
        """
        if self._state_snapshot is None:
            self._state_snapshot = MappingProxyType(defaultdict(dict, {
                p: {k: jnp.asarray(v) for k, v in entry.items()}
                for p, entry in self._param_states()
            }))
        return self._state_snapshot

    def _param_states(self) -> list[tuple[Parameter, dict[str, np.ndarray]]]:
        """(Parameter, its state as host arrays) for each Parameter that has state."""
        result = []
        for packs in self._packs:
            for pack in packs:
                state = self._pack_state.get(pack)
                if state is None:
                    continue
                fields = {k: to_host(v) for k, v in _fields(state).items()}
                schema = _schema(type(self).transform)
                for slot in map(int, np.flatnonzero(self._initialized[pack])):
                    result.append((pack.params[slot], _slot_entry(fields, pack.layout, slot, schema)))
        return result

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines.append(f"    params: {len(group['params'])} Parameter(s)")
            lines.extend(f"    {k}: {v}" for k, v in sorted(_hyperparameters(group).items()))
        lines.append(")")
        return "\n".join(lines)

    # ----- gradients and steps ------------------------------------------------------

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clears every ``.grad``: to ``None`` (default) or, if set, to zeros."""
        check_eager(f"{type(self).__name__}.zero_grad()")
        self._check_not_retired()
        for packs in self._packs:
            for pack in packs:
                if set_to_none:
                    pack.clear_grad()
                else:
                    pack.zero_grad_in_place()

    def step(self, closure: Closure | None = None) -> Any:
        """One optimization step over every Parameter whose ``.grad`` is set.

        ``closure`` (which should zero the grads, compute the loss and call
        ``fx.backward``) runs first and its loss is returned; without it, returns
        ``None``. Parameters without a gradient are skipped, their state untouched.
        The whole step is one compiled call; on error nothing has changed.
        """
        check_eager(f"{type(self).__name__}.step()")
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

    def _group_call(
        self, group: ParamGroup, packs: list[ParamPack]
    ) -> tuple[tuple[tuple[str, Any], ...], dict[str, Any]]:
        """Splits a group's hyper-parameters into the compile key and the traced arrays."""
        self._check_hyperparameters(_hyperparameters(group, self.defaults))
        static: list[tuple[str, Any]] = []
        arrays: dict[str, Any] = {}
        for name in self.defaults:
            value = group[name]
            field = _structural_zeros(type(self).transform).get(name)
            if is_static(value):
                static.append((name, bool(value) if isinstance(value, np.bool_) else value))
            elif value == 0 and (name in self.compiled_out_at_zero or (field is not None and not any(
                getattr(self._pack_state.get(pack), field, None) is not None for pack in packs
            ))):
                static.append((name, 0))
            else:
                # At double precision: torch forms 1 - β in float64 (PreciseScalar).
                arrays[name] = as_precise(value)
        return tuple(static), arrays

    def _check_not_retired(self) -> None:
        if any(pack.retired for packs in self._packs for pack in packs):
            raise RuntimeError(
                f"this {type(self).__name__}'s Parameters were taken over by an optimizer "
                f"created later over the same Parameters; step that one instead"
            )

    def _apply_step(self) -> None:
        # Everything is checked before anything changes: a failed step leaves no trace.
        self._check_not_retired()
        for packs in self._packs:
            for pack in packs:
                for slot, grad in pack.grad_overrides.items():
                    check_grad(pack.params[slot], grad, pack.layout, slot)
        keys, hypers, buffers, grads, states, masks, active = [], [], [], [], [], [], []
        for group, packs in zip(self.param_groups, self._packs):
            static, arrays = self._group_call(group, packs)
            stepping = [pack for pack in packs if pack.has_grad.any()]
            keys.append((static, tuple((pack.layout, not pack.has_grad.all()) for pack in stepping)))
            hypers.append(arrays)
            buffers.append([pack.buffer for pack in stepping])
            grads.append([pack.folded_grad() for pack in stepping])
            states.append([self._complete_state(pack, static, arrays) for pack in stepping])
            masks.append([None if pack.has_grad.all() else pack.has_grad.copy() for pack in stepping])
            active.append(stepping)
        if not any(active):
            return
        if any(len(b.sharding.device_set) > 1 for bufs in buffers for b in bufs):
            # Over a mesh, let at most this step and the one before it be queued:
            # an unbounded queue of steps holding collectives can deadlock
            # (lucid_fx.dispatch). The previous step's outputs are these inputs.
            wait_for(buffers)
        new_buffers, new_states = _compiled_step(
            type(self).transform, tuple(keys), self.skip_flag, hypers, buffers, grads, states, masks
        )
        for stepping, group_buffers, group_states in zip(active, new_buffers, new_states):
            for pack, buffer, state in zip(stepping, group_buffers, group_states):
                pack.set_buffer(buffer)
                self._pack_state[pack] = state
                self._initialized[pack] |= pack.has_grad
        self._state_snapshot = None

    def _complete_state(
        self, pack: ParamPack, static: tuple[tuple[str, Any], ...], arrays: dict[str, Any]
    ) -> PackState:
        """The pack's state with every buffer this configuration uses, each Parameter's
        starting where the transform's ``init`` starts it at that Parameter's first step.

        torch creates a Parameter's state at its first step, with the
        hyper-parameters of then (Rprop's step size is the lr of then): so the
        slots that step for the first time, and every field that is new, are
        taken from a fresh ``init`` with the current hyper-parameters. Made here
        rather than inside the compiled step, so that the step's input and
        output states have one structure and it compiles once, also when
        momentum or centered is switched on mid-run.
        """
        state = self._pack_state.get(pack)
        template = _pack_template(type(self).transform, static, _shapes(arrays), pack.layout)
        first = pack.has_grad & ~self._initialized[pack]  # slots stepping for the first time
        if state is not None and not first.any() and all(
            getattr(state, name) is not None for name, t in template.items() if t is not None
        ):
            return state
        # The init's fields are laid out like the buffer (its init places them);
        # per-parameter scalars (a step count) become one entry per parameter.
        fresh = type(self).transform(**dict(static), **arrays).init(pack.buffer)
        schema = _schema(type(self).transform)
        fields = {}
        for name, t in template.items():
            old = None if state is None else getattr(state, name)
            kind = schema[name].kind
            if t is None or (old is not None and kind == "counter"):
                fields[name] = old
                continue
            new = getattr(fresh, name)
            if kind == "per_parameter":
                new = jnp.broadcast_to(new, t.shape).astype(t.dtype)
            if old is None:
                fields[name] = new
            elif first.any():
                fields[name] = _masked(first, pack.layout, kind, new, old)
            else:
                fields[name] = old
        return _state_type(type(self).transform)(**fields)

    # ----- state dicts --------------------------------------------------------------

    def _indexed_params(self) -> list[Parameter]:
        return [p for group in self.param_groups for p in group["params"]]

    def state_dict(self) -> StateDict:
        """torch's layout: ``{"state": {index: {key: np.ndarray}}, "param_groups": [...]}``.

        Indices count Parameters across groups in order. Values are host NumPy
        copies (gathered from every device), so the result pickles anywhere.
        With several processes (multi-host), every process gets the whole dict:
        gathering is a collective, so every process must call ``state_dict()``.
        """
        for hook in list(self._state_dict_pre_hooks.values()):
            hook(self)
        index = {id(p): i for i, p in enumerate(self._indexed_params())}
        state = dict(sorted((index[id(p)], entry) for p, entry in self._param_states()))
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
        check_eager(f"{type(self).__name__}.load_state_dict()")
        for hook in list(self._load_pre_hooks.values()):
            returned = hook(self, state_dict)
            if returned is not None:
                state_dict = returned
        if torch_compat.is_torch_state_dict(state_dict):
            state_dict = torch_compat.state_dict_from_torch(
                state_dict, _schema(type(self).transform), convert=type(self).torch_buffer_from)
        self._check_state_values(state_dict)
        new_groups, entries = self._validated(state_dict)
        new_pack_state, new_initialized = {}, {}
        for group, hyper, packs in zip(self.param_groups, new_groups, self._packs):
            tx = type(self).transform(**_hyperparameters({**group, **hyper}, self.defaults))
            for pack in packs:
                state, initialized = self._pack_state_from_entries(pack, entries, tx)
                new_pack_state[pack], new_initialized[pack] = state, initialized
        for group, hyper in zip(self.param_groups, new_groups):
            group.update(hyper)
        self._pack_state = {k: v for k, v in new_pack_state.items() if v is not None}
        self._initialized = new_initialized
        self._state_snapshot = None
        for hook in list(self._load_post_hooks.values()):
            hook(self)

    def torch_state_dict(self) -> StateDict:
        """This optimizer's state in the form the matching ``torch.optim`` class loads.

        Values are CPU torch tensors (torch must be installed); ``step`` is a
        float32 tensor, lucid_fx-only keys (``skipped``, ``skip_nonfinite``,
        ``state_dtype``) are dropped, and buffers the configuration uses but
        that do not exist yet are zeros. See
        :func:`lucid_fx.torch_compat.state_dict_to_torch`.
        """
        factory = type(self).transform
        return torch_compat.state_dict_to_torch(
            self.state_dict(), _schema(factory), torch_compat.used_fields(factory),
            convert=type(self).torch_buffer_to)

    def _check_state_values(self, state_dict: Any) -> None:
        """Rejects values no run can produce (an edited or corrupted dict).

        Structure, shapes and dtypes are checked by ``_validated``.
        """
        state = state_dict.get("state") if isinstance(state_dict, Mapping) else None
        if not isinstance(state, Mapping):
            return
        for index, entry in state.items():
            for key, what in self.never_negative.items() if isinstance(entry, Mapping) else ():
                array = np.asarray(entry.get(key, 0))
                real = np.issubdtype(array.dtype, np.floating) or np.issubdtype(
                    array.dtype, np.integer)
                if real and np.any(array < 0):
                    raise ValueError(
                        f"state[{index!r}][{key!r}] holds a negative value ({np.min(array)}); "
                        f"{what} is never negative: the state dict was edited or corrupted"
                    )

    def _validated(self, sd: Any) -> tuple[list[dict[str, Any]], dict[Parameter, dict[str, np.ndarray]]]:
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
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"state dict has {len(saved_groups)} param group(s), the optimizer has "
                f"{len(self.param_groups)}"
            )
        new_groups = []
        for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
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
            hyper = _hyperparameters(saved)
            # Every hyper-parameter torch has too must be saved: a missing one means a
            # misspelt or foreign dict (lr saved as "learning_rate"), not "use the default".
            # lucid_fx's own options keep the group's values when absent (torch's dicts).
            missing = sorted(set(self.defaults) - set(hyper) - torch_compat.LUCID_ONLY_OPTIONS)
            if missing:
                raise ValueError(f"param_groups[{gi}] lacks key(s) {missing}")
            try:
                own = _hyperparameters({**group, **hyper}, self.defaults)
                self._check_hyperparameters(own)
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
        index_to_param = self._pair_saved_params(saved_groups)
        entries: dict[Parameter, dict[str, np.ndarray]] = {}
        for index, entry in sd["state"].items():
            if index not in index_to_param:
                raise ValueError(f"state[{index!r}] names no parameter of the state dict's groups")
            p = index_to_param[index]
            entries[p] = self._checked_entry(p, entry, where=f"state[{index!r}]")
        return new_groups, entries

    def _pair_saved_params(self, saved_groups: Sequence[Mapping[str, Any]]) -> dict[Any, Parameter]:
        """Saved index -> this optimizer's Parameter: by name when the dict has names.

        Without ``param_names`` the pairing is by position, as in torch; that
        is only right if both sides list the parameters in the same order.
        """
        if not any("param_names" in saved for saved in saved_groups):
            return {index: p for saved, group in zip(saved_groups, self.param_groups)
                    for index, p in zip(saved["params"], group["params"])}
        if "param_names" not in self.param_groups[0]:
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
        mine = {name: p for group in self.param_groups
                for name, p in zip(group["param_names"], group["params"])}
        missing, unexpected = sorted(set(mine) - set(saved_index)), sorted(set(saved_index) - set(mine))
        if missing or unexpected:
            raise ValueError(
                f"the state dict's parameter names do not match the optimizer's: "
                f"missing {missing}, unexpected {unexpected}"
            )
        return {saved_index[name]: p for name, p in mine.items()}

    def _checked_entry(self, p: Parameter, entry: Any, *, where: str) -> dict[str, np.ndarray]:
        """A saved per-parameter dict as host arrays, checked against the state's template."""
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where} must be a dict of arrays, got {type(entry).__name__}")  # noqa: TRY004 (one error type for every bad value)
        schema = _schema(type(self).transform)
        state_dtype = next(g for g in self.param_groups if any(q is p for q in g["params"])).get(
            "state_dtype")
        template = {
            name: (p.shape if field.kind == "buffer" else (), field.dtype_for(p.dtype, state_dtype))
            for name, field in schema.items()
        }
        unknown = set(entry) - set(template)
        if unknown:
            raise ValueError(f"{where} has unknown key(s) {sorted(unknown)}; known: {sorted(template)}")
        missing = {name for name, field in schema.items() if not field.optional} - set(entry)
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

    def _pack_state_from_entries(
        self, pack: ParamPack, entries: Mapping[Parameter, dict[str, np.ndarray]],
        tx: GradientTransformation,
    ) -> tuple[PackState | None, np.ndarray]:
        """One pack's state assembled from per-parameter entries (``tx.init``'s where absent)."""
        initialized = np.array([p in entries for p in pack.params])
        if not initialized.any():
            return None, initialized
        fresh = _fields(tx.init(pack.buffer))
        fields: dict[str, Any] = {}
        for name, field in _schema(type(self).transform).items():
            present = [(slot, entries[p][name]) for slot, p in enumerate(pack.params)
                       if p in entries and name in entries[p]]
            if not present:
                fields[name] = None
            elif field.kind == "per_parameter":
                # Parameters without saved state start at the transform's initial value.
                values = np.full(len(pack.params), to_host(fresh[name]) if name in fresh else 0,
                                 present[0][1].dtype)
                for slot, value in present:
                    values[slot] = value
                fields[name] = jax.device_put(values)
            elif field.kind == "counter":  # one per pack: the largest saved count
                fields[name] = jax.device_put(max((v for _, v in present), key=int))
            else:
                dtype = present[0][1].dtype
                buffer = (np.array(to_host(fresh[name]), dtype) if name in fresh
                          else np.zeros(pack.layout.buffer_shape, dtype))
                flat = buffer.reshape(-1)
                for slot, value in present:
                    start = pack.layout.offsets[slot]
                    flat[start:start + value.size] = value.reshape(-1)
                fields[name] = jax.device_put(buffer, pack.buffer.sharding)
        return _state_type(type(self).transform)(**fields), initialized

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


def _hyperparameters(
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


def _split_names(entries: list[Any]) -> tuple[list[Any], list[str] | None]:
    """``[(name, p), ...]`` -> ``([p, ...], [name, ...])``; plain Parameters -> ``(entries, None)``."""
    named = [_is_named_pair(e) for e in entries]
    if not any(named):
        return entries, None
    if not all(named):
        i = named.index(False)
        raise TypeError(
            f"params mixes (name, Parameter) pairs and plain entries (params[{i}] is a "
            f"{type(entries[i]).__name__}): pass fx.named_parameters(model) or fx.parameters(model)"
        )
    return [p for _, p in entries], [name for name, _ in entries]


def _check_naming(groups: list[ParamGroup]) -> None:
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


def _bind(cls: type, signature: inspect.Signature, args: Any, kwargs: Any) -> inspect.BoundArguments:
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


def _fields(state: PackState) -> dict[str, Any]:
    return {k: v for k, v in state._asdict().items() if v is not None}


def _slot_entry(
    fields: dict[str, np.ndarray], layout: PackLayout, slot: int, schema: Mapping[str, Field]
) -> dict[str, np.ndarray]:
    """One parameter's state dict cut from a pack's host arrays."""
    entry = {}
    for name, value in fields.items():
        kind = schema[name].kind
        if kind == "per_parameter":
            entry[name] = value[slot]
        elif kind == "counter":
            entry[name] = value
        else:
            start, size = layout.offsets[slot], layout.sizes[slot]
            entry[name] = value.reshape(-1)[start:start + size].reshape(layout.shapes[slot]).copy()
    return entry


@cache
def _state_type(factory: Callable[..., GradientTransformation]) -> type:
    return type(jax.eval_shape(lambda: factory().init(jnp.zeros(()))))


@cache
def _schema(factory: Callable[..., GradientTransformation]) -> Mapping[str, Field]:
    """The declared schema of the factory's state (lucid_fx.state_schema)."""
    return state_schema.fields_of(_state_type(factory))


@cache
def _structural_zeros(factory: Callable[..., GradientTransformation]) -> dict[str, str]:
    """Hyper-parameter -> the state field that its value 0 removes (momentum's buffer)."""
    return {field.absent_when_zero: name for name, field in _schema(factory).items()
            if field.absent_when_zero is not None}


def _shapes(arrays: Mapping[str, Any]) -> tuple[tuple[str, int | None], ...]:
    """The traced hyper-parameters' names and, for pairs (betas), lengths: a cache key."""
    return tuple(sorted((name, len(value) if isinstance(value, tuple) else None)
                        for name, value in arrays.items()))


@cache
def _pack_template(
    factory: Callable[..., GradientTransformation],
    static: tuple[tuple[str, Any], ...],
    array_shapes: tuple[tuple[str, int | None], ...],
    layout: PackLayout,
) -> dict[str, jax.ShapeDtypeStruct | None]:
    """Field -> shape/dtype (or None when unused) of a pack's state in this configuration."""
    scalar = PreciseScalar.spec()
    hyper = {name: scalar if n is None else (scalar,) * n for name, n in array_shapes}
    buffer = jax.ShapeDtypeStruct(layout.buffer_shape, layout.dtype)
    state = jax.eval_shape(lambda h, b: factory(**dict(static), **h).init(b), hyper, buffer)
    schema = _schema(factory)
    return {  # one per-parameter scalar per parameter of the pack
        name: jax.ShapeDtypeStruct((len(layout),), t.dtype)
        if t is not None and schema[name].kind == "per_parameter" else t
        for name, t in state._asdict().items()
    }


def _masked(mask: jax.Array | None, layout: PackLayout, kind: str, new: Any, old: Any) -> Any:
    """``new`` where the slot stepped, ``old`` elsewhere."""
    if mask is None or old is None or new is None or kind == "counter":
        return new
    if kind == "per_parameter":
        return jnp.where(mask, new, old)
    return jnp.where(slot_mask(mask, layout).reshape(new.shape), new, old)


@jax.jit(static_argnums=(0, 1, 2), donate_argnums=(4, 6))
def _compiled_step(
    factory: Callable[..., GradientTransformation],
    keys: tuple[tuple[tuple[tuple[str, Any], ...], tuple[tuple[PackLayout, bool], ...]], ...],
    skip_flag: str | None,
    hypers: list[dict[str, Any]],
    buffers: list[list[jax.Array]],
    grads: list[list[jax.Array]],
    states: list[list[PackState | None]],
    masks: list[list[jax.Array | None]],
) -> tuple[list[list[jax.Array]], list[list[PackState]]]:
    """One step for every group and pack, traced once per structure.

    Each pack is one buffer for the transform, its ``step`` a vector with one
    count per parameter (torch's per-parameter state). A pack where only some
    parameters have gradients is stepped whole and the others are masked back.
    Every state arrives complete (new buffers are zeros made before the call);
    a buffer that the configuration does not use (``grad_avg`` after
    ``centered`` is turned off) is carried through unchanged.
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
    schema = _schema(factory)
    new_buffers, new_states = [], []
    for (static, pack_keys), hyper, bufs, grs, sts, mks in zip(
        keys, hypers, buffers, grads, states, masks
    ):
        tx = factory(**dict(static), **hyper)
        group_buffers, group_states = [], []
        for (layout, _), value, g, old, mask in zip(pack_keys, bufs, grs, sts, mks):
            # `old` is complete for this configuration (Optimizer._complete_state);
            # the transform sees only the fields it uses.
            template = _pack_template(factory, static, _shapes(hyper), layout)
            used = old._replace(**{name: None for name, t in template.items() if t is None})
            # Per-parameter scalars reach the math per element (Adam's bias correction
            # differs between the parameters of one buffer) and come back per parameter.
            scalars = [name for name, field in schema.items() if field.kind == "per_parameter"
                       and getattr(used, name) is not None]
            used = used._replace(**{name: per_element(getattr(used, name), layout)
                                    for name in scalars})
            update, new = tx.update(g, used, value)
            new = new._replace(**{name: per_array(getattr(new, name), layout) for name in scalars})
            new_value = _masked(mask, layout, "buffer", apply_updates(value, update), value)
            new = type(new)(*(
                # re-attach unchanged the buffers this configuration leaves alone
                o if n is None else _masked(mask, layout, schema[name].kind, n, o)
                for name, n, o in zip(new._fields, new, old)
            ))
            group_buffers.append(new_value)
            group_states.append(new)
        new_buffers.append(group_buffers)
        new_states.append(group_states)
    return new_buffers, new_states
