"""The generic stateful optimizer: torch's ``Optimizer``, over a transform or a loop of its own.

``Optimizer`` owns everything that is not math: parameter groups, Parameter
storage, lazily created per-parameter state, ``zero_grad``, ``step(closure)``,
state dicts and hooks. The math comes from a transform factory (``fx.rmsprop``
for ``fx.RMSprop``): each step calls ``factory(**options).update`` inside one
compiled, donated function for all groups and parameters. An optimizer whose
step is no transform (LBFGS, a host loop of closure calls) names its
hyper-parameters instead and steps itself.

Two choices make that fast. Numeric hyper-parameters enter the compiled step as
arrays, so writing ``param_groups[i]["lr"] = ...`` takes effect at the next step
without recompiling. And the optimizer keeps the small same-dtype Parameters of
a group in one packed buffer (:mod:`lucid_fx._src.stateful.storage`), with their gradients
and state packed alike, so a step moves a few arrays across the jit boundary
instead of several per parameter; ``fx.backward`` differentiates the packed
buffer directly.

This class is the entry points; each concept has its own module:
:mod:`lucid_fx._src.stateful.param_groups` (the ``params`` argument and its groups),
:mod:`lucid_fx._src.stateful.storage` (which Parameters share a buffer, and the buffers),
:mod:`lucid_fx._src.stateful.steps` (the compiled step and the state it needs),
:mod:`lucid_fx._src.stateful.state_dict` (saving and loading) and
:mod:`lucid_fx._src.stateful.hooks`.
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np

from lucid_fx._src.core import schema
from lucid_fx._src.core.base import GradientTransformation
from lucid_fx._src.core.validation import check_real_leaves
from lucid_fx._src.interop import torch as torch_compat
from lucid_fx._src.scale.dispatch import wait_for
from lucid_fx._src.stateful import state_dict as saved
from lucid_fx._src.stateful.hooks import Hook, Hooks, RemovableHandle, register
from lucid_fx._src.stateful.param_groups import (
    IMPLEMENTATION_OPTIONS,
    ParamGroup,
    Params,
    as_groups,
    bind,
    check_hyperparameters,
    check_naming,
    checked_group,
    options_of,
)
from lucid_fx._src.stateful.parameter import Parameter
from lucid_fx._src.stateful.state_dict import StateDict
from lucid_fx._src.stateful.steps import (
    PackState,
    StaticKey,
    StepArgs,
    compiled_step,
    complete_state,
    skip_switch,
    split_hyperparameters,
)
from lucid_fx._src.stateful.storage import ParamPack, make_packs
from lucid_fx._src.stateful.tracing import check_eager

if TYPE_CHECKING:
    from typing import Self  # Python 3.11; annotations only, so 3.10 imports fine

Closure: TypeAlias = Callable[[], Any]


class Optimizer:
    """Base of the stateful optimizers: param groups, state, step, state dicts, hooks.

    A subclass declares its math one of two ways:

    - ``transform``: a transform factory whose keyword arguments (and their
      defaults) are the hyper-parameters, and whose state declares its schema
      (:mod:`lucid_fx._src.core.schema`): which fields are per-parameter arrays or
      numbers, their dtypes and torch keys, what switches them on, and whether
      the math is element-wise (then small Parameters share flat buffers; else
      same-shape ones share stacks). The base steps it: every group and
      Parameter in one compiled call. Every optimizer of torch's family is one.
    - ``hyperparameters``: a function whose signature lists the hyper-parameters
      and which checks them, for an optimizer that steps by itself (LBFGS): it
      overrides ``step`` and the state methods.

    A subclass's ``__init__`` is its torch class's signature: torch's
    implementation options (``foreach``, ``fused``, ``capturable``,
    ``differentiable``) are accepted where torch takes them and kept in
    ``defaults`` and every group as torch keeps them, but change nothing: the
    step is one fused XLA program (``differentiable=True`` is refused: see
    :func:`~lucid_fx._src.stateful.param_groups.check_implementation_options`). A
    transform's ``skip_nonfinite`` is decided step-wide: one bad gradient skips
    every parameter of those groups. A schedule for ``lr`` is not accepted here:
    a scheduler of :mod:`lucid_fx.lr_scheduler` writes ``param_groups``.
    """

    transform: ClassVar[Callable[..., GradientTransformation] | None] = None
    hyperparameters: ClassVar[Callable[..., Any] | None] = None
    # Hyper-parameters compiled out while they are 0, as the functional face does for
    # a Python 0: weight decay then reads no θ (one pass over memory fewer). Writing
    # a non-zero value compiles the step once more; going back to 0 reuses the first.
    compiled_out_at_zero: ClassVar[tuple[str, ...]] = ("weight_decay",)

    @classmethod
    def _declaration(cls) -> Callable[..., Any]:
        """The function whose signature lists the hyper-parameters, and which checks them."""
        declared = cls.transform if cls.transform is not None else cls.hyperparameters
        if declared is None:
            raise TypeError(f"{cls.__name__} must name its transform factory (transform = ...) "
                            f"or its hyper-parameters (hyperparameters = ...)")
        return declared

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        # A subclass's explicit __init__ (the signature IDEs and type checkers see)
        # makes Python reject an unknown keyword tersely; bind here first to say more.
        if args or kwargs:
            bind(cls, inspect.signature(cls.__init__), (None, *args), kwargs)
        return super().__new__(cls)

    def __init__(self, params: Params, **options: Any) -> None:
        """``options``: the transform's arguments, and the implementation options
        (``foreach``, ...) that the subclass's torch signature takes; every transform
        argument not given takes the factory's default."""
        check_eager(f"{type(self).__name__}(...)")
        declaration = type(self)._declaration()
        transform_options = {k: v for k, v in options.items() if k not in IMPLEMENTATION_OPTIONS}
        bound = bind(type(self), inspect.signature(declaration), (), transform_options)
        bound.apply_defaults()
        # The declaration's arguments, in its order: the ones a transform is called with.
        self._transform_keys: tuple[str, ...] = tuple(bound.arguments)
        self.defaults: dict[str, Any] = {  # in the class's (torch's) order
            **options, **{k: v for k, v in bound.arguments.items() if k not in options}}
        self._check_hyperparameters(self.defaults)
        self.param_groups: list[ParamGroup] = []
        self._packs: list[list[ParamPack]] = []  # per group
        self._pack_state: dict[ParamPack, PackState] = {}
        self._initialized: dict[ParamPack, np.ndarray] = {}  # slots that have state
        self._state_snapshot: Mapping[Parameter, dict[str, jax.Array]] | None = None
        self._hooks = Hooks()
        groups = as_groups(type(self).__name__, params)
        # Every group is checked before any Parameter moves into this optimizer's
        # storage, so a failed construction leaves the Parameters as they were.
        seen: set[int] = set()
        checked = [self._checked_group(group, seen) for group in groups]
        check_naming([*checked])
        for group in checked:
            self._add_checked_group(group)

    # ----- parameter groups ---------------------------------------------------------

    def _check_hyperparameters(self, hyper: Mapping[str, Any]) -> None:
        check_hyperparameters(type(self)._declaration(), hyper)

    def add_param_group(self, param_group: ParamGroup) -> None:
        """Adds a group: ``{"params": [...], **hyper-parameters}``; missing keys take defaults."""
        check_eager(f"{type(self).__name__}.add_param_group()")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        group = self._checked_group(param_group, seen)
        check_naming([*self.param_groups, group])
        self._add_checked_group(group)

    def _checked_group(self, param_group: Any, seen: set[int]) -> ParamGroup:
        group = checked_group(param_group, seen, self.defaults, self._check_hyperparameters)
        self._check_parameters(group["params"])
        return group

    def _check_parameters(self, params: list[Parameter]) -> None:
        """Refuses, before any moves in, Parameters this optimizer's math cannot take:
        complex ones where its schema is ``real_only``, and whatever a subclass adds
        (Muon's must be matrices)."""
        transform = type(self).transform
        if transform is not None and schema.of(transform).real_only:
            check_real_leaves(type(self).__name__, [_abstract(p) for p in params])

    def _add_checked_group(self, group: ParamGroup) -> None:
        self.param_groups.append(group)
        # Parameters held by an earlier optimizer (re-running `opt = RMSprop(...)`
        # is common) move here, and that optimizer's storage is retired.
        transform = type(self).transform
        packs = make_packs(group["params"], elementwise=transform is None
                           or schema.of(transform).elementwise)
        for pack in packs:
            self._initialized[pack] = np.zeros(len(pack.params), bool)
        self._packs.append(packs)

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
        return saved.param_states((pack for packs in self._packs for pack in packs),
                                  self._pack_state, self._initialized, self._transform())

    def __repr__(self) -> str:
        """torch's form: per group, every entry but ``params``, sorted by key."""
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines.extend(f"    {k}: {group[k]}" for k in sorted(group) if k != "params")
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
        closure, args, kwargs = self._hooks.before_step(self, closure)
        loss = closure() if closure is not None else None
        self._apply_step()
        self._hooks.after_step(self, args, kwargs)
        return loss

    def _transform(self) -> Callable[..., GradientTransformation]:
        """The transform factory this optimizer steps (an optimizer that steps by itself
        overrides every method that asks for it)."""
        transform = type(self).transform
        if transform is None:
            raise TypeError(f"{type(self).__name__} has no transform to step")
        return transform

    def _group_call(
        self, group: ParamGroup, packs: list[ParamPack]
    ) -> tuple[StaticKey, dict[str, Any]]:
        """Splits a group's hyper-parameters into the compile key and the traced arrays."""
        self._check_hyperparameters(options_of(group, self.defaults))
        return split_hyperparameters(
            self._transform(), group, self._transform_keys, self.compiled_out_at_zero,
            [self._pack_state.get(pack) for pack in packs])

    def _check_not_retired(self) -> None:
        if any(pack.retired for packs in self._packs for pack in packs):
            raise RuntimeError(
                f"this {type(self).__name__}'s Parameters were taken over by an optimizer "
                f"created later over the same Parameters; step that one instead"
            )

    def _step_call(self) -> tuple[list[list[ParamPack]], str, StepArgs] | None:
        """What one step calls: the packs that step per group, their platform and the
        arguments of :func:`compiled_step`; ``None`` when no Parameter has a gradient.
        Checks everything first and changes nothing."""
        self._check_not_retired()
        for packs in self._packs:
            for pack in packs:
                pack.check_grads()
        factory = self._transform()
        keys, hypers, buffers, grads, states, masks, active = [], [], [], [], [], [], []
        for group, packs in zip(self.param_groups, self._packs):
            static, arrays = self._group_call(group, packs)
            stepping = [pack for pack in packs if pack.has_grad.any()]
            keys.append((static, tuple((pack.layout, not pack.has_grad.all()) for pack in stepping)))
            hypers.append(arrays)
            buffers.append([pack.buffer for pack in stepping])
            grads.append([pack.folded_grad() for pack in stepping])
            states.append([complete_state(factory, self._pack_state.get(pack),
                                          self._initialized[pack], pack, static, arrays)
                           for pack in stepping])
            masks.append([None if pack.has_grad.all() else pack.has_grad.copy() for pack in stepping])
            active.append(stepping)
        if not any(active):
            return None
        grads = _not_donated(grads, (buffers, states))
        first = next(b for bs in buffers for b in bs)
        device: jax.Device = next(iter(first.sharding.device_set))
        args = StepArgs(factory, tuple(keys), skip_switch(factory), hypers, buffers, grads,
                        states, masks)
        return active, device.platform, args

    def _apply_step(self) -> None:
        # Everything is checked before anything changes: a failed step leaves no trace.
        call = self._step_call()
        if call is None:
            return
        active, platform, args = call
        if any(len(b.sharding.device_set) > 1 for bufs in args.buffers for b in bufs):
            # Over a mesh, let at most this step and the one before it be queued:
            # an unbounded queue of steps holding collectives can deadlock
            # (lucid_fx._src.scale.dispatch). The previous step's outputs are these inputs.
            wait_for(args.buffers)
        new_buffers, new_states = compiled_step(platform)(*args)
        for stepping, group_buffers, group_states in zip(active, new_buffers, new_states):
            for pack, buffer, state in zip(stepping, group_buffers, group_states):
                pack.set_buffer(buffer)
                self._pack_state[pack] = state
                self._initialized[pack] |= pack.has_grad
        self._state_snapshot = None

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
        self._hooks.before_state_dict(self)
        result = saved.framed(self.param_groups, self._param_states())
        return self._hooks.after_state_dict(self, result)

    def load_state_dict(self, state_dict: StateDict) -> None:
        """Restores hyper-parameters and state; validates everything before changing anything.

        Raises ``ValueError`` naming the first offending entry (group count or
        size, unknown or missing keys, shapes, dtypes); the optimizer is then
        unchanged. Each buffer is placed with its Parameter's current sharding.
        """
        check_eager(f"{type(self).__name__}.load_state_dict()")
        state_dict = self._hooks.before_load(self, state_dict)
        factory = self._transform()
        declared = schema.of(factory)
        if torch_compat.is_torch_state_dict(state_dict):
            state_dict = torch_compat.state_dict_from_torch(state_dict, declared)
        else:  # lucid_fx's own; its arrays are tensors if it went through torch.load
            state_dict = torch_compat.with_numpy_values(state_dict)
        saved.check_state_values(state_dict, declared.never_negative)
        new_groups, entries = self._validated(state_dict)
        new_pack_state, new_initialized = {}, {}
        for group, hyper, packs in zip(self.param_groups, new_groups, self._packs):
            tx = factory(**options_of({**group, **hyper}, self._transform_keys))
            for pack in packs:
                state, initialized = saved.pack_state_from_entries(pack, entries, tx, factory)
                new_pack_state[pack], new_initialized[pack] = state, initialized
        for group, hyper in zip(self.param_groups, new_groups):
            group.update(hyper)
        self._pack_state = {k: v for k, v in new_pack_state.items() if v is not None}
        self._initialized = new_initialized
        self._state_snapshot = None
        self._hooks.after_load(self)

    def torch_state_dict(self, param_names: torch_compat.ParamNames | None = None) -> StateDict:
        """This optimizer's state in the form the matching ``torch.optim`` class loads.

        torch's ``load_state_dict`` pairs parameters by position: give
        ``param_names``, the torch side's names in its order
        (``[n for n, _ in torch_model.named_parameters()]``, or one list per
        group), and the state is written in that order; an unknown or missing
        name is a ``ValueError``. Without it the order is this optimizer's, which
        for a dict model (keys sorted) is rarely torch's registration order.

        Values are CPU torch tensors (torch must be installed), each of the shape
        torch's own state has; ``step`` is a float32 tensor, lucid_fx-only keys
        (``skipped``, ``skip_nonfinite``, ``state_dtype``) are dropped, and
        buffers the configuration uses but that do not exist yet are zeros. See
        :func:`lucid_fx._src.interop.torch.state_dict_to_torch`.
        """
        return torch_compat.state_dict_to_torch(
            self.state_dict(), schema.of(self._transform()), param_names=param_names)

    def _validated(self, sd: Any) -> tuple[list[dict[str, Any]], dict[Parameter, Any]]:
        return saved.validated(sd, self.param_groups, self.defaults,
                               self._check_hyperparameters, self._checked_entry)

    def _checked_entry(
        self, p: Parameter, entry: Any, *, where: str, group: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        """A saved per-parameter dict as host arrays, checked against the state's template."""
        return saved.checked_entry(p, entry, where=where, factory=self._transform(),
                                   group=group)

    # ----- hooks --------------------------------------------------------------------

    def register_step_pre_hook(self, hook: Hook) -> RemovableHandle:
        """``hook(optimizer, args, kwargs)`` before each step; may return new ``(args, kwargs)``."""
        return register(self._hooks.step_pre, hook)

    def register_step_post_hook(self, hook: Hook) -> RemovableHandle:
        """``hook(optimizer, args, kwargs)`` after each step."""
        return register(self._hooks.step_post, hook)

    def register_state_dict_pre_hook(self, hook: Hook) -> RemovableHandle:
        """``hook(optimizer)`` before ``state_dict()`` builds its result."""
        return register(self._hooks.state_dict_pre, hook)

    def register_state_dict_post_hook(self, hook: Hook) -> RemovableHandle:
        """``hook(optimizer, state_dict)`` after; may return a replacement dict."""
        return register(self._hooks.state_dict_post, hook)

    def register_load_state_dict_pre_hook(self, hook: Hook) -> RemovableHandle:
        """``hook(optimizer, state_dict)`` before loading; may return a replacement dict."""
        return register(self._hooks.load_pre, hook)

    def register_load_state_dict_post_hook(self, hook: Hook) -> RemovableHandle:
        """``hook(optimizer)`` after a successful load."""
        return register(self._hooks.load_post, hook)


def _not_donated(grads: list[list[Any]], donated: Any) -> list[list[Any]]:
    """``grads`` with a copy of each gradient that is itself an array the step donates:
    ``p.grad = p.value`` hands the step its own value buffer twice, once to overwrite."""
    ids = {id(x) for x in jax.tree_util.tree_leaves(donated)}
    return [[jnp.copy(g) if id(g) in ids else g for g in group] for group in grads]


def _abstract(p: Parameter) -> jax.ShapeDtypeStruct:
    """``p``'s shape and dtype, for checks that need no value."""
    return jax.ShapeDtypeStruct(p.shape, p.dtype)
