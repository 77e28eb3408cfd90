r"""torch's learning-rate schedulers for the stateful optimizers, and Lucid's NoamScheduler.

The public face is :mod:`lucid_fx.lr_scheduler`, which documents it.
"""

from __future__ import annotations

import copy
import math
import types
import warnings
import weakref
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, SupportsFloat

from lucid_fx._src.schedules import schedules as checks
from lucid_fx._src.stateful.optimizer import Optimizer
from lucid_fx._src.stateful.tracing import check_eager

__all__ = [
    "SWALR",
    "ChainedScheduler",
    "ConstantLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "ExponentialLR",
    "LRScheduler",
    "LambdaLR",
    "LinearLR",
    "MultiStepLR",
    "MultiplicativeLR",
    "NoamScheduler",
    "OneCycleLR",
    "PolynomialLR",
    "ReduceLROnPlateau",
    "SequentialLR",
    "StepLR",
]

EPOCH_DEPRECATION_WARNING = (
    "The epoch parameter in `scheduler.step()` was not necessary and is being deprecated "
    "where possible (as in torch). Please use `scheduler.step()` to step the scheduler. "
    "If epoch is not None, the closed form is used instead of the chainable form, where "
    "available."
)
# Set by torch's schedulers while they work; in their state dicts, ignored when loading.
_TRANSIENT_FLAGS = ("_get_lr_called_within_step", "_is_initial")

# Optimizers stepped since a scheduler first watched them (torch patches
# optimizer.step for the same purpose: to warn when the scheduler steps first).
_watched: weakref.WeakSet[Optimizer] = weakref.WeakSet()
_stepped: weakref.WeakSet[Optimizer] = weakref.WeakSet()


def _mark_stepped(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
    _stepped.add(optimizer)


def _watch(optimizer: Optimizer) -> None:
    if optimizer not in _watched:
        _watched.add(optimizer)
        optimizer.register_step_post_hook(_mark_stepped)


def _twin(name: str) -> str:
    """The fx.schedules function named after scheduler class ``name``, if there is one."""
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
    snake = snake.replace("l_r", "lr")
    return f"fx.schedules.{snake}(base_lr, ...)" if snake in checks.__all__ else "fx.schedules"


def _check_optimizer(who: str, optimizer: Any) -> None:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"{who} needs a stateful lucid_fx optimizer (an fx.Optimizer such as fx.SGD, "
            f"fx.RMSprop or fx.Adam), got {type(optimizer).__name__}. For the functional "
            f"face (fx.rmsprop, fx.sgd, optax) pass a schedule as lr instead, from "
            f"{_twin(who)}"
        )


def _check_last_epoch(optimizer: Optimizer, last_epoch: Any) -> None:
    checks.check_int("last_epoch", last_epoch, -1)
    if last_epoch >= 0:
        for i, group in enumerate(optimizer.param_groups):
            if "initial_lr" not in group:
                raise KeyError(
                    f"param 'initial_lr' is not specified in param_groups[{i}] when resuming "
                    f"a scheduler with last_epoch={last_epoch} >= 0: load the optimizer's "
                    f"state dict first, or start with last_epoch=-1"
                )


def _per_group(name: str, optimizer: Optimizer, value: Any) -> list[Any]:
    """``value`` once per param group: a list of that length, or one value for all."""
    if isinstance(value, (list, tuple)):
        if len(value) != len(optimizer.param_groups):
            raise ValueError(
                f"Invalid {name} value: {list(value)!r} ({len(value)} values; the optimizer "
                f"has {len(optimizer.param_groups)} param groups: give one per group, or one "
                f"number for all)"
            )
        return list(value)
    return [value] * len(optimizer.param_groups)


def _lrs(optimizer: Optimizer) -> list[Any]:
    return [group["lr"] for group in optimizer.param_groups]


@contextmanager
def _groups_restored_on_error(optimizer: Optimizer) -> Iterator[None]:
    """On an exception, puts every param group's entries back as they were."""
    saved = [dict(group) for group in optimizer.param_groups]
    try:
        yield
    except BaseException:
        for group, old in zip(optimizer.param_groups, saved):
            group.clear()
            group.update(old)
        raise


def _checked_momenta(
    optimizer: Optimizer, base_momentum: Any, max_momentum: Any
) -> tuple[bool, list[Any], list[Any]]:
    """(use_beta1, base momenta, max momenta) for cycle_momentum, checked."""
    if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
        raise ValueError(
            f"Invalid cycle_momentum value: True ({type(optimizer).__name__} has neither "
            f"momentum nor betas to cycle: pass cycle_momentum=False)"
        )
    use_beta1 = "betas" in optimizer.defaults
    bases = _per_group("base_momentum", optimizer, base_momentum)
    maxes = _per_group("max_momentum", optimizer, max_momentum)
    for name, values in (("base_momentum", bases), ("max_momentum", maxes)):
        for value in values:
            checks.check_real(name, value, low=0.0, high=1.0 if use_beta1 else None,
                              high_open=True)
    return use_beta1, bases, maxes


def _write_momenta(optimizer: Optimizer, use_beta1: bool, momenta: Sequence[Any]) -> None:
    for group, momentum in zip(optimizer.param_groups, momenta, strict=True):
        if use_beta1:
            group["betas"] = (momentum, *group["betas"][1:])
        else:
            group["momentum"] = momentum


def _check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        message = f"Invalid {name} value: {value!r} (expected True or False)"
        raise ValueError(message)  # noqa: TRY004 (one error type for every bad value)


class LRScheduler:
    r"""Base class: holds the optimizer, ``base_lrs`` and ``last_epoch``; torch's ``LRScheduler``.

    Subclasses define ``get_lr()``: the lrs of ``last_epoch`` from the current
    ones (torch's chainable form), and may define ``_get_closed_form_lr()``.
    The constructor sets ``initial_lr`` in each group that lacks it (with
    ``last_epoch=-1``; resuming with ``last_epoch >= 0`` requires it, as in
    torch: ``KeyError``), takes ``base_lrs`` from them, and steps once to
    ``last_epoch = 0``.

    Attributes:
      optimizer: the wrapped stateful optimizer.
      base_lrs: each group's ``initial_lr``.
      last_epoch: the number of ``step()`` calls since construction (0 after it).

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> class Halving(fx.lr_scheduler.LRScheduler):
      ...     def get_lr(self):
      ...         return [base / 2**self.last_epoch for base in self.base_lrs]
      >>> optimizer = fx.SGD([fx.Parameter(jnp.zeros(1))], lr=1.0)
      >>> scheduler = Halving(optimizer)
      >>> optimizer.step(); scheduler.step(); scheduler.get_last_lr()
      [0.5]
    """

    _get_lr_called_within_step: bool = False
    _is_initial: bool = False

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        self._check_base(optimizer, last_epoch)
        self.optimizer = optimizer
        with _groups_restored_on_error(optimizer):
            if last_epoch == -1:
                for group in optimizer.param_groups:
                    group.setdefault("initial_lr", group["lr"])
            self.base_lrs: list[Any] = [group["initial_lr"] for group in optimizer.param_groups]
            self.last_epoch = last_epoch
            _watch(optimizer)
            self._initial_step()

    def _check_base(self, optimizer: Any, last_epoch: Any) -> None:
        check_eager(f"{type(self).__name__}(...)")
        _check_optimizer(type(self).__name__, optimizer)
        _check_last_epoch(optimizer, last_epoch)

    def _initial_step(self) -> None:
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def get_lr(self) -> list[Any]:
        """The lrs of ``last_epoch`` (chainable form); called by ``step()``."""
        raise NotImplementedError

    def get_last_lr(self) -> list[Any]:
        """The lrs that the last ``step()`` (or the construction) set, one per group."""
        return self._last_lr

    def _warn_if_outside_step(self) -> None:
        if not self._get_lr_called_within_step:
            warnings.warn("To get the last learning rate computed by the scheduler, "
                          "please use `get_last_lr()`.", UserWarning, stacklevel=3)

    def _momenta(self) -> list[Any] | None:
        """The momenta of ``last_epoch`` to write, or ``None`` (CyclicLR, OneCycleLR)."""
        return None

    def step(self, epoch: int | None = None) -> None:
        """Advances ``last_epoch`` by one and sets the groups' lrs; call after ``optimizer.step()``.

        ``epoch`` (deprecated, as in torch) jumps to that epoch with the closed form.
        On an error (OneCycleLR past total_steps) nothing changes.
        """
        check_eager(f"{type(self).__name__}.step()")
        if self._step_count == 1 and self.optimizer not in _stepped:
            warnings.warn(
                "Detected call of `lr_scheduler.step()` before `optimizer.step()`: call "
                "`optimizer.step()` first, as in PyTorch >= 1.1.0, or the first value of the "
                "learning rate schedule is skipped.", UserWarning, stacklevel=2,
            )
        if epoch is not None:
            warnings.warn(EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
        self._step_count += 1
        try:
            self._update_lr(epoch)
        except BaseException:
            self._step_count -= 1
            raise

    def _update_lr(self, epoch: int | None = None) -> None:
        previous = self.last_epoch
        self._get_lr_called_within_step = True
        try:
            if epoch is None:
                self.last_epoch += 1
                values = self.get_lr()
            else:
                self.last_epoch = epoch
                closed_form = getattr(self, "_get_closed_form_lr", None)
                values = closed_form() if closed_form is not None else self.get_lr()
            values = list(values)
            if len(values) != len(self.optimizer.param_groups):
                raise ValueError(
                    f"{type(self).__name__}.get_lr() returned {len(values)} lr(s) for "
                    f"{len(self.optimizer.param_groups)} param groups"
                )
            momenta = self._momenta()
        except BaseException:
            self.last_epoch = previous
            raise
        finally:
            self._get_lr_called_within_step = False
        for group, lr in zip(self.optimizer.param_groups, values):
            group["lr"] = lr
        if momenta is not None:
            _write_momenta(self.optimizer, self.use_beta1, momenta)
        self._last_lr: list[Any] = _lrs(self.optimizer)

    use_beta1: bool = False

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's attributes but the optimizer (torch's layout), as copies."""
        return {k: copy.deepcopy(v) for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores ``state_dict()`` (this library's or torch's); checks the keys first.

        Raises ``ValueError`` naming unknown or missing keys (a state dict of
        another scheduler type), and then nothing has changed.
        """
        check_eager(f"{type(self).__name__}.load_state_dict()")
        self.__dict__.update(self._checked_state(state_dict))

    def _checked_state(self, state_dict: Any) -> dict[str, Any]:
        if not isinstance(state_dict, Mapping):
            raise ValueError(  # noqa: TRY004 (one error type for every bad state dict)
                f"a {type(self).__name__} state dict must be a dict, got {type(state_dict).__name__}"
            )
        mine = set(self.state_dict()) - set(_TRANSIENT_FLAGS)
        given = set(state_dict) - set(_TRANSIENT_FLAGS)
        unknown, missing = sorted(given - mine), sorted(mine - given)
        if unknown or missing:
            raise ValueError(
                f"state dict does not fit {type(self).__name__}: unknown key(s) {unknown}, "
                f"missing key(s) {missing} (is it another scheduler's?)"
            )
        return {k: copy.deepcopy(v) for k, v in state_dict.items() if k not in _TRANSIENT_FLAGS}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(last_epoch={self.last_epoch}, last_lr={self._last_lr})"


class _LambdaState(LRScheduler):
    """LambdaLR and MultiplicativeLR: their functions are not saved (torch's rule)."""

    lr_lambdas: list[Callable[[int], float]]

    def _set_lambdas(self, optimizer: Optimizer, lr_lambda: Any) -> None:
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != len(optimizer.param_groups):
                raise ValueError(
                    f"Invalid lr_lambda value: {len(lr_lambda)} functions for "
                    f"{len(optimizer.param_groups)} param groups (give one per group, or one)"
                )
            lambdas = list(lr_lambda)
        else:
            lambdas = [lr_lambda] * len(optimizer.param_groups)
        for fn in lambdas:
            checks.check_callable("lr_lambda", fn)
        self.lr_lambdas = lambdas

    def state_dict(self) -> dict[str, Any]:
        """As the base's; a plain function is saved as ``None``, a callable object as its ``__dict__``."""
        state = {k: copy.deepcopy(v) for k, v in self.__dict__.items()
                 if k not in ("optimizer", "lr_lambdas")}
        state["lr_lambdas"] = [None if isinstance(fn, types.FunctionType) else fn.__dict__.copy()
                               for fn in self.lr_lambdas]
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        check_eager(f"{type(self).__name__}.load_state_dict()")
        state = self._checked_state(state_dict)
        saved = state.pop("lr_lambdas")
        if not isinstance(saved, list) or len(saved) != len(self.lr_lambdas):
            raise ValueError(
                f"state dict's lr_lambdas must list {len(self.lr_lambdas)} entries, got {saved!r:.80}"
            )
        self.__dict__.update(state)
        for fn, attributes in zip(self.lr_lambdas, saved):
            if attributes is not None:
                fn.__dict__.update(attributes)


class LambdaLR(_LambdaState):
    r"""``lr = initial_lr · λ(epoch)``, λ one function for all groups or one per group.

    ``LambdaLR(optimizer, lr_lambda, last_epoch=-1)``. Twin:
    :func:`lucid_fx._src.schedules.schedules.lambda_lr` (with a jnp-traceable λ).

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> optimizer = fx.SGD([fx.Parameter(jnp.zeros(1))], lr=1.0)
      >>> scheduler = fx.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.9**epoch)
      >>> optimizer.step(); scheduler.step(); scheduler.get_last_lr()
      [0.9]
    """

    def __init__(
        self,
        optimizer: Optimizer,
        lr_lambda: Callable[[int], float] | list[Callable[[int], float]],
        last_epoch: int = -1,
    ) -> None:
        self._check_base(optimizer, last_epoch)
        self._set_lambdas(optimizer, lr_lambda)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Any]:
        self._warn_if_outside_step()
        return [base_lr * fn(self.last_epoch) for fn, base_lr in zip(self.lr_lambdas, self.base_lrs)]


class MultiplicativeLR(_LambdaState):
    r"""``lr_t = lr_{t-1} · λ(t)`` for t ≥ 1 (recursive: no closed form, no twin).

    ``MultiplicativeLR(optimizer, lr_lambda, last_epoch=-1)``.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> optimizer = fx.SGD([fx.Parameter(jnp.zeros(1))], lr=1.0)
      >>> scheduler = fx.lr_scheduler.MultiplicativeLR(optimizer, lambda epoch: 0.5)
      >>> for _ in range(2):
      ...     optimizer.step(); scheduler.step()
      >>> scheduler.get_last_lr()
      [0.25]
    """

    def __init__(
        self,
        optimizer: Optimizer,
        lr_lambda: Callable[[int], float] | list[Callable[[int], float]],
        last_epoch: int = -1,
    ) -> None:
        self._check_base(optimizer, last_epoch)
        self._set_lambdas(optimizer, lr_lambda)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Any]:
        self._warn_if_outside_step()
        if self._is_initial:
            return _lrs(self.optimizer)
        return [group["lr"] * fn(self.last_epoch)
                for fn, group in zip(self.lr_lambdas, self.optimizer.param_groups)]


class StepLR(LRScheduler):
    r"""``lr_t = initial_lr · γ^⌊t / step_size⌋``: decays by γ every ``step_size`` epochs.

    ``StepLR(optimizer, step_size, gamma=0.1, last_epoch=-1)``; step_size ≥ 1,
    γ > 0. Twin: :func:`lucid_fx._src.schedules.schedules.step_lr`; optax:
    ``exponential_decay(lr, step_size, gamma, staircase=True)``.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> optimizer = fx.SGD([fx.Parameter(jnp.zeros(1))], lr=1.0)
      >>> scheduler = fx.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
      >>> optimizer.step(); scheduler.step(); scheduler.get_last_lr()
      [0.5]
    """

    def __init__(
        self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        self._check_base(optimizer, last_epoch)
        checks.check_step_lr(step_size, gamma)
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Any]:
        self._warn_if_outside_step()
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return _lrs(self.optimizer)
        return [group["lr"] * self.gamma for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list[Any]:
        return [base_lr * self.gamma ** (self.last_epoch // self.step_size)
                for base_lr in self.base_lrs]


class MultiStepLR(LRScheduler):
    r"""``lr_t = initial_lr · γ^#{milestones ≤ t}``: decays by γ at each milestone.

    ``MultiStepLR(optimizer, milestones, gamma=0.1, last_epoch=-1)``; milestones
    strictly increasing integers ≥ 0, γ > 0. Twin:
    :func:`lucid_fx._src.schedules.schedules.multi_step_lr`; optax:
    ``piecewise_constant_schedule(lr, {m: gamma for m in milestones})``.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> optimizer = fx.SGD([fx.Parameter(jnp.zeros(1))], lr=1.0)
      >>> scheduler = fx.lr_scheduler.MultiStepLR(optimizer, milestones=[2], gamma=0.5)
      >>> for _ in range(2):
      ...     optimizer.step(); scheduler.step()
      >>> scheduler.get_last_lr()
      [0.5]
    """

    def __init__(
        self,
        optimizer: Optimizer,
        milestones: Iterable[int],
        gamma: float = 0.1,
        last_epoch: int = -1,
    ) -> None:
        self._check_base(optimizer, last_epoch)
        points = checks.checked_milestones(milestones)
        checks.check_real("gamma", gamma, low=0.0, low_open=True)
        self.milestones = Counter(points)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Any]:
        self._warn_if_outside_step()
        if self.last_epoch not in self.milestones:
            return _lrs(self.optimizer)
        return [group["lr"] * self.gamma ** self.milestones[self.last_epoch]
                for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list[Any]:
        points = sorted(self.milestones.elements())
        return [base_lr * self.gamma ** bisect_right(points, self.last_epoch)
                for base_lr in self.base_lrs]


class ConstantLR(LRScheduler):
    r"""``lr_t = initial_lr · factor`` for t < total_iters, then ``initial_lr``.

    ``ConstantLR(optimizer, factor=1/3, total_iters=5, last_epoch=-1)``;
    0 < factor ≤ 1, total_iters ≥ 1. Twin: :func:`lucid_fx._src.schedules.schedules.constant_lr`.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> optimizer = fx.SGD([fx.Parameter(jnp.zeros(1))], lr=1.0)
      >>> scheduler = fx.lr_scheduler.ConstantLR(optimizer, factor=0.5, total_iters=1)
      >>> first = scheduler.get_last_lr()
      >>> optimizer.step(); scheduler.step(); first, scheduler.get_last_lr()
      ([0.5], [1.0])
    """

    def __init__(
        self,
        optimizer: Optimizer,
        factor: float = 1.0 / 3,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        self._check_base(optimizer, last_epoch)
        checks.check_constant_lr(factor, total_iters)
        self.factor = factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Any]:
        self._warn_if_outside_step()
        if self.last_epoch == 0:
            return [group["lr"] * self.factor for group in self.optimizer.param_groups]
        if self.last_epoch != self.total_iters:
            return _lrs(self.optimizer)
        return [group["lr"] * (1.0 / self.factor) for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list[Any]:
        return [base_lr * (self.factor + (self.last_epoch >= self.total_iters) * (1 - self.factor))
                for base_lr in self.base_lrs]


class LinearLR(LRScheduler):
    r"""``lr_t = initial_lr · (s + (e - s) · min(t, T) / T)``: a linear ramp of the factor.

    ``LinearLR(optimizer, start_factor=1/3, end_factor=1.0, total_iters=5,
    last_epoch=-1)``; 0 < s ≤ 1, 0 ≤ e ≤ 1, T ≥ 1. Twin:
    :func:`lucid_fx._src.schedules.schedules.linear_lr`; optax: ``linear_schedule(lr·s, lr·e, T)``.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> optimizer = fx.SGD([fx.Parameter(jnp.zeros(1))], lr=1.0)
      >>> scheduler = fx.lr_scheduler.LinearLR(optimizer, start_factor=0.5, total_iters=2)
      >>> optimizer.step(); scheduler.step(); scheduler.get_last_lr()
      [0.75]
    """

    def __init__(
        self,
        optimizer: Optimizer,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        self._check_base(optimizer, last_epoch)
        checks.check_linear_lr(start_factor, end_factor, total_iters)
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Any]:
        self._warn_if_outside_step()
        if self.last_epoch == 0:
            return [group["lr"] * self.start_factor for group in self.optimizer.param_groups]
        if self._is_initial or self.last_epoch > self.total_iters:
            return _lrs(self.optimizer)
        s, e, t = self.start_factor, self.end_factor, self.last_epoch
        ratio = 1.0 + (e - s) / (self.total_iters * s + (t - 1) * (e - s))
        return [group["lr"] * ratio for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list[Any]:
        s, e = self.start_factor, self.end_factor
        return [base_lr * (s + (e - s) * min(self.total_iters, self.last_epoch) / self.total_iters)
                for base_lr in self.base_lrs]


class ExponentialLR(LRScheduler):
    r"""``lr_t = initial_lr · γ^t``.

    ``ExponentialLR(optimizer, gamma, last_epoch=-1)``; γ > 0. Twin:
    :func:`lucid_fx._src.schedules.schedules.exponential_lr`; optax: ``exponential_decay(lr, 1, gamma)``.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> optimizer = fx.SGD([fx.Parameter(jnp.zeros(1))], lr=1.0)
      >>> scheduler = fx.lr_scheduler.ExponentialLR(optimizer, gamma=0.5)
      >>> optimizer.step(); scheduler.step(); scheduler.get_last_lr()
      [0.5]
    """

    def __init__(self, optimizer: Optimizer, gamma: float, last_epoch: int = -1) -> None:
        self._check_base(optimizer, last_epoch)
        checks.check_real("gamma", gamma, low=0.0, low_open=True)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Any]:
        self._warn_if_outside_step()
        if self._is_initial:
            return _lrs(self.optimizer)
        return [group["lr"] * self.gamma for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list[Any]:
        return [base_lr * self.gamma**self.last_epoch for base_lr in self.base_lrs]


class PolynomialLR(LRScheduler):
    r"""``lr_t = initial_lr · (1 - min(t, T) / T)^power``: reaches 0 at T = total_iters.

    ``PolynomialLR(optimizer, total_iters=5, power=1.0, last_epoch=-1)``;
    T ≥ 1, power ≥ 0. Twin: :func:`lucid_fx._src.schedules.schedules.polynomial_lr`; optax:
    ``polynomial_schedule(lr, 0.0, power, T)``.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> optimizer = fx.SGD([fx.Parameter(jnp.zeros(1))], lr=1.0)
      >>> scheduler = fx.lr_scheduler.PolynomialLR(optimizer, total_iters=2, power=2.0)
      >>> optimizer.step(); scheduler.step(); scheduler.get_last_lr()
      [0.25]
    """

    def __init__(
        self, optimizer: Optimizer, total_iters: int = 5, power: float = 1.0, last_epoch: int = -1
    ) -> None:
        self._check_base(optimizer, last_epoch)
        checks.check_polynomial_lr(total_iters, power)
        self.total_iters = total_iters
        self.power = power
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Any]:
        self._warn_if_outside_step()
        if self._is_initial or self.last_epoch > self.total_iters:
            return _lrs(self.optimizer)
        t, total = self.last_epoch, self.total_iters
        decay = ((1.0 - t / total) / (1.0 - (t - 1) / total)) ** self.power
        return [group["lr"] * decay for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list[Any]:
        t = min(self.total_iters, self.last_epoch)
        return [base_lr * (1.0 - t / self.total_iters) ** self.power for base_lr in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    r"""``lr_t = η_min + (initial_lr - η_min) · (1 + cos(π t / T_max)) / 2``.

    ``CosineAnnealingLR(optimizer, T_max, eta_min=0.0, last_epoch=-1)``;
    T_max > 0, η_min ≥ 0. Stepped by ``step()`` the lr follows torch's recursion
    (which agrees with the formula, and past T_max rises again as it does).
    Twin: :func:`lucid_fx._src.schedules.schedules.cosine_annealing_lr`; optax (t ≤ T_max):
    ``cosine_decay_schedule(lr, T_max, alpha=eta_min / lr)``.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> optimizer = fx.SGD([fx.Parameter(jnp.zeros(1))], lr=1.0)
      >>> scheduler = fx.lr_scheduler.CosineAnnealingLR(optimizer, T_max=2)
      >>> optimizer.step(); scheduler.step(); [round(lr, 12) for lr in scheduler.get_last_lr()]
      [0.5]
    """

    def __init__(
        self, optimizer: Optimizer, T_max: float, eta_min: float = 0.0, last_epoch: int = -1
    ) -> None:
        self._check_base(optimizer, last_epoch)
        checks.check_cosine_annealing_lr(T_max, eta_min)
        self.T_max = T_max
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Any]:
        self._warn_if_outside_step()
        t, period, low = self.last_epoch, self.T_max, self.eta_min
        if self._is_initial:
            return _lrs(self.optimizer)
        if self._step_count == 1 and t > 0:
            return [low + (base_lr - low) * (1 + math.cos(t * math.pi / period)) / 2
                    for base_lr in self.base_lrs]
        if (t - 1 - period) % (2 * period) == 0:
            # The lr is at η_min, where the ratio below would be 0/0: step by the difference.
            return [group["lr"] + (base_lr - low) * (1 - math.cos(math.pi / period)) / 2
                    for base_lr, group in zip(self.base_lrs, self.optimizer.param_groups)]
        ratio_num = 1 + math.cos(math.pi * t / period)
        ratio_den = 1 + math.cos(math.pi * (t - 1) / period)
        return [ratio_num / ratio_den * (group["lr"] - low) + low
                for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list[Any]:
        low = self.eta_min
        return [low + (base_lr - low) * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
                for base_lr in self.base_lrs]


class CosineAnnealingWarmRestarts(LRScheduler):
    r"""SGDR: cosine annealing restarted after T_0, T_0·T_mult, T_0·T_mult², ... epochs.

    ``CosineAnnealingWarmRestarts(optimizer, T_0, T_mult=1, eta_min=0.0,
    last_epoch=-1)``; T_0 ≥ 1 and T_mult ≥ 1 integers, η_min ≥ 0. With T_cur
    the epochs since the last restart and T_i the current cycle's length::

        lr = η_min + (initial_lr - η_min) · (1 + cos(π T_cur / T_i)) / 2

    ``step(epoch)`` takes a fractional epoch (``epoch + i / iters``), as in torch.
    Twin: :func:`lucid_fx._src.schedules.schedules.cosine_annealing_warm_restarts`.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> optimizer = fx.SGD([fx.Parameter(jnp.zeros(1))], lr=1.0)
      >>> scheduler = fx.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=2)
      >>> lrs = []
      >>> for _ in range(3):
      ...     optimizer.step(); scheduler.step(); lrs.append(round(scheduler.get_last_lr()[0], 12))
      >>> lrs
      [0.5, 1.0, 0.5]
    """

    def __init__(
        self,
        optimizer: Optimizer,
        T_0: int,
        T_mult: int = 1,
        eta_min: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        self._check_base(optimizer, last_epoch)
        checks.check_warm_restarts(T_0, T_mult, eta_min)
        self.T_0 = T_0
        self.T_i = T_0
        self.T_mult = T_mult
        self.eta_min = eta_min
        self.T_cur: float = last_epoch
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Any]:
        self._warn_if_outside_step()
        low = self.eta_min
        return [low + (base_lr - low) * (1 + math.cos(math.pi * self.T_cur / self.T_i)) / 2
                for base_lr in self.base_lrs]

    def step(self, epoch: float | None = None) -> None:  # type: ignore[override]
        """One epoch on, or to ``epoch`` (may be fractional); as torch's, without its warnings."""
        check_eager(f"{type(self).__name__}.step()")
        if epoch is None and self.last_epoch < 0:
            epoch = 0
        if epoch is None:
            epoch = self.last_epoch + 1
            self.T_cur = self.T_cur + 1
            if self.T_cur >= self.T_i:
                self.T_cur = self.T_cur % self.T_i
                self.T_i = self.T_i * self.T_mult
        else:
            checks.check_real("epoch", epoch, low=0.0)
            if epoch >= self.T_0:
                if self.T_mult == 1:
                    self.T_cur = epoch % self.T_0
                else:
                    n = int(math.log((epoch / self.T_0 * (self.T_mult - 1) + 1), self.T_mult))
                    self.T_cur = epoch - self.T_0 * (self.T_mult**n - 1) / (self.T_mult - 1)
                    self.T_i = self.T_0 * self.T_mult**n
            else:
                self.T_i = self.T_0
                self.T_cur = epoch
        self.last_epoch = math.floor(epoch)
        self._get_lr_called_within_step = True
        try:
            values = self.get_lr()
        finally:
            self._get_lr_called_within_step = False
        for group, lr in zip(self.optimizer.param_groups, values):
            group["lr"] = lr
        self._last_lr = _lrs(self.optimizer)


class CyclicLR(LRScheduler):
    r"""Cyclical learning rates (Smith 2017): the lr runs between base_lr and max_lr.

    ``CyclicLR(optimizer, base_lr, max_lr, step_size_up=2000, step_size_down=None,
    mode="triangular", gamma=1.0, scale_fn=None, scale_mode="cycle",
    cycle_momentum=True, base_momentum=0.8, max_momentum=0.9, last_epoch=-1)``.
    With L = up + down, r = up / L, c = ⌊1 + t/L⌋, x = 1 + t/L - c::

        s = x / r  if x ≤ r  else (x - 1) / (r - 1)
        lr_t       = base_lr + (max_lr - base_lr) · s · scale
        momentum_t = max_momentum - (max_momentum - base_momentum) · s · scale

    scale: 1 (triangular), 1/2^(c-1) (triangular2), γ^t (exp_range), or
    ``scale_fn`` of c or t (``scale_mode``). With ``cycle_momentum`` the
    groups' ``momentum`` (or ``betas[0]`` for the Adam family) cycles
    inversely. base_lr, max_lr and the momenta take one value per group or one
    for all. Twin (lr only): :func:`lucid_fx._src.schedules.schedules.cyclic_lr`.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> optimizer = fx.SGD([fx.Parameter(jnp.zeros(1))], lr=1.0, momentum=0.9)
      >>> scheduler = fx.lr_scheduler.CyclicLR(optimizer, base_lr=0.1, max_lr=1.0, step_size_up=2)
      >>> optimizer.step(); scheduler.step()
      >>> scheduler.get_last_lr(), round(optimizer.param_groups[0]["momentum"], 12)
      ([0.55], 0.85)
    """

    def __init__(
        self,
        optimizer: Optimizer,
        base_lr: float | list[float],
        max_lr: float | list[float],
        step_size_up: float = 2000,
        step_size_down: float | None = None,
        mode: str = "triangular",
        gamma: float = 1.0,
        scale_fn: Callable[[float], float] | None = None,
        scale_mode: str = "cycle",
        cycle_momentum: bool = True,
        base_momentum: float | list[float] = 0.8,
        max_momentum: float | list[float] = 0.9,
        last_epoch: int = -1,
    ) -> None:
        self._check_base(optimizer, last_epoch)
        base_lrs = _per_group("base_lr", optimizer, base_lr)
        max_lrs = _per_group("max_lr", optimizer, max_lr)
        for name, values in (("base_lr", base_lrs), ("max_lr", max_lrs)):
            for value in values:
                checks.check_lr(name, value)
        checks.check_cyclic_lr(step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode)
        _check_flag("cycle_momentum", cycle_momentum)
        if cycle_momentum:
            use_beta1, base_momenta, max_momenta = _checked_momenta(
                optimizer, base_momentum, max_momentum)
        self.optimizer = optimizer
        with _groups_restored_on_error(optimizer):
            if last_epoch == -1:
                for lr, group in zip(base_lrs, optimizer.param_groups):
                    group["lr"] = lr
            self.max_lrs = max_lrs
            up = float(step_size_up)
            down = float(step_size_down) if step_size_down is not None else up
            self.total_size = up + down
            self.step_ratio = up / self.total_size
            self.mode = mode
            self.gamma = gamma
            self._scale_fn_custom = scale_fn
            self.scale_mode = scale_mode
            if scale_fn is None:
                self.scale_mode = "iterations" if mode == "exp_range" else "cycle"
            self.cycle_momentum = cycle_momentum
            if cycle_momentum:
                self.use_beta1 = use_beta1
                self.base_momentums = base_momenta
                self.max_momentums = max_momenta
                if last_epoch == -1:
                    _write_momenta(optimizer, use_beta1, max_momenta)
                    for high, low, group in zip(max_momenta, base_momenta, optimizer.param_groups):
                        group["max_momentum"] = high
                        group["base_momentum"] = low
            super().__init__(optimizer, last_epoch)
        self.base_lrs = base_lrs

    def scale_fn(self, x: float) -> float:
        """The amplitude's scale at cycle or iteration ``x`` (``scale_fn``, or the mode's)."""
        if self._scale_fn_custom is not None:
            return self._scale_fn_custom(x)
        if self.mode == "triangular":
            return 1.0
        if self.mode == "triangular2":
            return 1 / (2.0 ** (x - 1))
        return self.gamma**x

    def _position(self) -> tuple[float, float]:
        """(s, scale) of ``last_epoch``: the fraction of the amplitude and its scale."""
        cycle = math.floor(1 + self.last_epoch / self.total_size)
        x = 1.0 + self.last_epoch / self.total_size - cycle
        if x <= self.step_ratio:
            factor = x / self.step_ratio
        else:
            factor = (x - 1) / (self.step_ratio - 1)
        at = cycle if self.scale_mode == "cycle" else self.last_epoch
        return factor, self.scale_fn(at)

    def get_lr(self) -> list[Any]:
        self._warn_if_outside_step()
        factor, scale = self._position()
        return [base_lr + (max_lr - base_lr) * factor * scale
                for base_lr, max_lr in zip(self.base_lrs, self.max_lrs)]

    def _momenta(self) -> list[Any] | None:
        if not self.cycle_momentum:
            return None
        factor, scale = self._position()
        return [high - (high - low) * factor * scale
                for low, high in zip(self.base_momentums, self.max_momentums)]

    def state_dict(self) -> dict[str, Any]:
        """As the base's; a custom ``scale_fn`` is saved as ``None`` (a function) or its ``__dict__``."""
        state = {k: copy.deepcopy(v) for k, v in self.__dict__.items()
                 if k not in ("optimizer", "_scale_fn_custom")}
        fn = self._scale_fn_custom
        state["_scale_fn_custom"] = (None if fn is None or isinstance(fn, types.FunctionType)
                                     else fn.__dict__.copy())
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        check_eager(f"{type(self).__name__}.load_state_dict()")
        state = self._checked_state(state_dict)
        saved_fn = state.pop("_scale_fn_custom")
        self.__dict__.update(state)
        if saved_fn is not None and self._scale_fn_custom is not None:
            self._scale_fn_custom.__dict__.update(saved_fn)


class OneCycleLR(LRScheduler):
    r"""The 1cycle policy (Smith & Topin 2018): warm up to max_lr, then anneal far below.

    ``OneCycleLR(optimizer, max_lr, total_steps=None, epochs=None,
    steps_per_epoch=None, pct_start=0.3, anneal_strategy="cos",
    cycle_momentum=True, base_momentum=0.85, max_momentum=0.95, div_factor=25.0,
    final_div_factor=1e4, three_phase=False, last_epoch=-1)``. Step once per
    batch. With T = total_steps (or epochs · steps_per_epoch), each group's
    ``initial_lr = max_lr / div_factor`` and ``min_lr = initial_lr / final_div_factor``::

        phase 1: steps 0 .. pct_start·T - 1     initial_lr -> max_lr   (momentum max -> base)
        phase 2: .. T - 1                       max_lr -> min_lr       (momentum base -> max)
        (three_phase: max_lr -> initial_lr until 2·pct_start·T - 2, then -> min_lr)
        from a to b, with p the progress through the phase:
        cos:    b + (a - b) / 2 · (cos(π p) + 1)
        linear: (b - a) · p + a

    Its lr ignores the optimizer's. ``momentum`` (or ``betas[0]``) cycles
    inversely. Every phase must last more than 0 steps (``ValueError`` for a
    too-small total_steps); stepping past total_steps raises torch's
    ``ValueError`` and changes nothing. Twin (lr only):
    :func:`lucid_fx._src.schedules.schedules.one_cycle_lr`.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> optimizer = fx.SGD([fx.Parameter(jnp.zeros(1))], lr=1.0, momentum=0.9)
      >>> scheduler = fx.lr_scheduler.OneCycleLR(optimizer, max_lr=1.0, total_steps=10)
      >>> round(scheduler.get_last_lr()[0], 12), optimizer.param_groups[0]["momentum"]
      (0.04, 0.95)
    """

    def __init__(
        self,
        optimizer: Optimizer,
        max_lr: float | list[float],
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: float | list[float] = 0.85,
        max_momentum: float | list[float] = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        last_epoch: int = -1,
    ) -> None:
        self._check_base(optimizer, last_epoch)
        total = checks.checked_total_steps(total_steps, epochs, steps_per_epoch, pct_start,
                                           anneal_strategy, div_factor, final_div_factor,
                                           three_phase)
        max_lrs = _per_group("max_lr", optimizer, max_lr)
        for value in max_lrs:
            checks.check_lr("max_lr", value)
        _check_flag("cycle_momentum", cycle_momentum)
        if cycle_momentum:
            use_beta1, base_momenta, max_momenta = _checked_momenta(
                optimizer, base_momentum, max_momentum)
        if last_epoch >= 0:
            needed = ("max_lr", "min_lr") + (("max_momentum", "base_momentum")
                                             if cycle_momentum else ())
            for i, group in enumerate(optimizer.param_groups):
                missing = [key for key in needed if key not in group]
                if missing:
                    raise KeyError(
                        f"param_groups[{i}] lacks {missing} when resuming OneCycleLR with "
                        f"last_epoch={last_epoch}: load the optimizer's state dict first"
                    )
        self.optimizer = optimizer
        self.total_steps = total
        self._schedule_phases: list[dict[str, Any]] = [
            {"end_step": end, "start_lr": a, "end_lr": b, "start_momentum": c, "end_momentum": d}
            for end, a, b, c, d in checks.one_cycle_phases(total, pct_start, three_phase)
        ]
        self._anneal_func_type = anneal_strategy
        with _groups_restored_on_error(optimizer):
            if last_epoch == -1:
                for high, group in zip(max_lrs, optimizer.param_groups):
                    group["initial_lr"] = high / div_factor
                    group["max_lr"] = high
                    group["min_lr"] = group["initial_lr"] / final_div_factor
            self.cycle_momentum = cycle_momentum
            if cycle_momentum:
                self.use_beta1 = use_beta1
                if last_epoch == -1:
                    _write_momenta(optimizer, use_beta1, max_momenta)
                    for high, low, group in zip(max_momenta, base_momenta, optimizer.param_groups):
                        group["max_momentum"] = high
                        group["base_momentum"] = low
            super().__init__(optimizer, last_epoch)

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self._anneal_func_type == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _phase(self) -> tuple[dict[str, Any], float]:
        """The phase of ``last_epoch`` and the progress through it."""
        step, start = self.last_epoch, 0.0
        for i, phase in enumerate(self._schedule_phases):
            end = phase["end_step"]
            if step <= end or i == len(self._schedule_phases) - 1:
                return phase, (step - start) / (end - start)
            start = end
        raise AssertionError("unreachable: the last phase always matches")

    def get_lr(self) -> list[Any]:
        self._warn_if_outside_step()
        if self.last_epoch > self.total_steps:
            raise ValueError(
                f"Tried to step {self.last_epoch} times. The specified number of total steps "
                f"is {self.total_steps}"
            )
        phase, pct = self._phase()
        return [self._anneal(group[phase["start_lr"]], group[phase["end_lr"]], pct)
                for group in self.optimizer.param_groups]

    def _momenta(self) -> list[Any] | None:
        if not self.cycle_momentum:
            return None
        phase, pct = self._phase()
        return [self._anneal(group[phase["start_momentum"]], group[phase["end_momentum"]], pct)
                for group in self.optimizer.param_groups]


class NoamScheduler(LRScheduler):
    r"""Lucid's Noam schedule ("Attention is all you need"): warm-up, then 1/√step decay.

    ``NoamScheduler(optimizer, d_model, warmup_steps, last_epoch=-1)``, as
    ``lucid.optim.lr_scheduler.NoamScheduler``; d_model > 0, warmup_steps > 0::

        lr_t = d_model^-0.5 · min(s^-0.5, s · warmup_steps^-1.5),   s = max(t, 1)

    The value is absolute, the same for every group: like Lucid's, it ignores
    the optimizer's lr. It peaks at t = warmup_steps. Step it once per batch.
    Twin: :func:`lucid_fx._src.schedules.schedules.noam_scheduler`.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> optimizer = fx.SGD([fx.Parameter(jnp.zeros(1))], lr=1.0)
      >>> scheduler = fx.lr_scheduler.NoamScheduler(optimizer, d_model=16, warmup_steps=4)
      >>> for _ in range(4):
      ...     optimizer.step(); scheduler.step()
      >>> scheduler.get_last_lr()
      [0.125]
    """

    def __init__(
        self, optimizer: Optimizer, d_model: float, warmup_steps: float, last_epoch: int = -1
    ) -> None:
        self._check_base(optimizer, last_epoch)
        checks.check_noam(d_model, warmup_steps)
        self.d_model = d_model
        self.warmup_steps = warmup_steps
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Any]:
        self._warn_if_outside_step()
        return self._get_closed_form_lr()

    def _get_closed_form_lr(self) -> list[Any]:
        step = max(1, self.last_epoch)
        scale = self.d_model ** (-0.5) * min(step ** (-0.5), step * self.warmup_steps ** (-1.5))
        return [scale] * len(self.optimizer.param_groups)


class SWALR(LRScheduler):
    r"""Anneals each group's lr to ``swa_lr`` over ``anneal_epochs`` steps, then holds it: torch's
    ``swa_utils.SWALR``, public in :mod:`lucid_fx.swa_utils`.

    ``SWALR(optimizer, swa_lr, anneal_epochs=10, anneal_strategy="cos",
    last_epoch=-1)``; ``swa_lr`` one number >= 0 for every group or one per
    group (kept in each group as ``"swa_lr"``), ``anneal_epochs`` an integer >= 0,
    ``anneal_strategy`` ``"cos"`` or ``"linear"``. From the lr L that the groups
    have when it starts, at its t-th step::

        α(τ) = (1 - cos(π·τ)) / 2   ("cos")   or   τ   ("linear")
        lr_t = swa_lr · α(min(1, t / anneal_epochs)) + L · (1 - α(min(1, t / anneal_epochs)))

    It works recursively, as torch's does (each step recovers L from the current
    lr), in the same floating-point operations, so the sequence is torch's
    float for float, also when another scheduler ran before it (torch's recipe:
    a schedule until ``swa_start``, then SWALR). ``anneal_epochs=0`` jumps to
    ``swa_lr`` at once. Its functional twin is :func:`lucid_fx.schedules.swalr`.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> from lucid_fx.swa_utils import SWALR
      >>> optimizer = fx.SGD([fx.Parameter(jnp.zeros(1))], lr=1.0)
      >>> scheduler = SWALR(optimizer, swa_lr=0.5, anneal_epochs=2, anneal_strategy="linear")
      >>> lrs = []
      >>> for _ in range(3):
      ...     optimizer.step(); scheduler.step(); lrs.append(scheduler.get_last_lr()[0])
      >>> lrs
      [0.75, 0.5, 0.5]
    """

    def __init__(
        self,
        optimizer: Optimizer,
        swa_lr: float | list[float],
        anneal_epochs: int = 10,
        anneal_strategy: str = "cos",
        last_epoch: int = -1,
    ) -> None:
        self._check_base(optimizer, last_epoch)
        swa_lrs = _per_group("swa_lr", optimizer, swa_lr)
        for value in swa_lrs:
            checks.check_lr("swa_lr", value)
        checks.check_choice("anneal_strategy", anneal_strategy, checks.ANNEAL_STRATEGIES)
        checks.check_int("anneal_epochs", anneal_epochs, 0)
        self._anneal_strategy = anneal_strategy
        self.anneal_epochs = anneal_epochs
        with _groups_restored_on_error(optimizer):
            for group, value in zip(optimizer.param_groups, swa_lrs):
                group["swa_lr"] = value
            super().__init__(optimizer, last_epoch)

    def _anneal(self, t: float) -> float:
        return (1 - math.cos(math.pi * t)) / 2 if self._anneal_strategy == "cos" else t

    def get_lr(self) -> list[Any]:
        self._warn_if_outside_step()
        step = self._step_count - 1
        if self.anneal_epochs == 0:
            step = max(1, step)
        span = max(1, self.anneal_epochs)
        before = self._anneal(max(0, min(1, (step - 1) / span)))
        now = self._anneal(max(0, min(1, step / span)))
        lrs = []
        for group in self.optimizer.param_groups:
            swa_lr = group["swa_lr"]
            # The lr the annealing started from, recovered from the current one.
            start = swa_lr if before == 1 else (group["lr"] - before * swa_lr) / (1 - before)
            lrs.append(swa_lr * now + start * (1 - now))
        return lrs


def _check_children(who: str, schedulers: Any, optimizer: Optimizer) -> list[LRScheduler]:
    if not isinstance(schedulers, Sequence) or not schedulers:
        raise ValueError(f"Invalid schedulers value: {schedulers!r} (expected a non-empty list "
                         f"of schedulers)")
    for i, scheduler in enumerate(schedulers):
        if not isinstance(scheduler, LRScheduler):
            raise TypeError(f"{who}: schedulers[{i}] is a {type(scheduler).__name__}, not a "
                            f"lucid_fx._src.schedules.lr_scheduler scheduler")
        if isinstance(scheduler, ReduceLROnPlateau):
            message = (f"{who} does not support ReduceLROnPlateau (schedulers[{i}]): it "
                       f"needs a metric at each step")
            raise ValueError(message)  # noqa: TRY004 (torch's type for this error)
        if scheduler.optimizer is not optimizer:
            raise ValueError(f"{who} expects all schedulers to belong to the same optimizer, "
                             f"but schedulers[{i}] ({type(scheduler).__name__}) has another")
    return list(schedulers)


class SequentialLR(LRScheduler):
    r"""Runs ``schedulers[i]`` from ``milestones[i-1]`` on, each from its own start.

    ``SequentialLR(optimizer, schedulers, milestones, last_epoch=-1)``; the
    schedulers wrap ``optimizer``; milestones strictly increasing, one fewer
    than the schedulers. At a milestone the next scheduler restarts at its
    epoch 0 (torch's semantics). Twin: :func:`lucid_fx._src.schedules.schedules.sequential_lr`;
    optax: ``join_schedules``.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> optimizer = fx.SGD([fx.Parameter(jnp.zeros(1))], lr=1.0)
      >>> warmup = fx.lr_scheduler.LinearLR(optimizer, start_factor=0.5, total_iters=2)
      >>> decay = fx.lr_scheduler.ExponentialLR(optimizer, gamma=0.5)
      >>> scheduler = fx.lr_scheduler.SequentialLR(optimizer, [warmup, decay], milestones=[2])
      >>> lrs = []
      >>> for _ in range(4):
      ...     lrs.append(optimizer.param_groups[0]["lr"]); optimizer.step(); scheduler.step()
      >>> lrs
      [0.5, 0.75, 1.0, 0.5]
    """

    def __init__(
        self,
        optimizer: Optimizer,
        schedulers: list[LRScheduler],
        milestones: list[int],
        last_epoch: int = -1,
    ) -> None:
        check_eager(f"{type(self).__name__}(...)")
        _check_optimizer(type(self).__name__, optimizer)
        checks.check_int("last_epoch", last_epoch, -1)
        children = _check_children(type(self).__name__, schedulers, optimizer)
        points = checks.checked_milestones(milestones)
        if len(points) != len(children) - 1:
            raise ValueError(
                f"Invalid milestones value: {points!r} (expected {len(children) - 1} "
                f"milestone(s), one fewer than the {len(children)} schedulers)"
            )
        self._schedulers = children
        self._milestones = points
        self.last_epoch = last_epoch + 1
        self.optimizer = optimizer
        with _groups_restored_on_error(optimizer):
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"]
            self.recursive_undo()
            index = bisect_right(self._milestones, 0)
            self._schedulers[index]._initial_step()
        self._last_lr = self._schedulers[index].get_last_lr()

    def recursive_undo(self, sched: Any = None) -> None:
        """Steps the schedulers (recursively) back by one: their constructors stepped once."""
        scheds = self if sched is None else sched
        if hasattr(scheds, "_schedulers"):
            for s in scheds._schedulers:
                self.recursive_undo(s)
        elif hasattr(scheds, "last_epoch"):
            scheds.last_epoch -= 1

    def step(self) -> None:  # type: ignore[override]
        """One epoch on, in the scheduler whose span holds it."""
        check_eager(f"{type(self).__name__}.step()")
        self.last_epoch += 1
        index = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[index]
        try:
            if index > 0 and self._milestones[index - 1] == self.last_epoch:
                scheduler._update_lr(0)
            else:
                scheduler.step()
        except BaseException:
            self.last_epoch -= 1
            raise
        self._last_lr = scheduler.get_last_lr()

    def state_dict(self) -> dict[str, Any]:
        """Its own attributes, and each scheduler's state dict under ``_schedulers``."""
        state = {k: copy.deepcopy(v) for k, v in self.__dict__.items()
                 if k not in ("optimizer", "_schedulers")}
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        check_eager(f"{type(self).__name__}.load_state_dict()")
        state = self._checked_state(state_dict)
        saved = state.pop("_schedulers")
        if not isinstance(saved, list) or len(saved) != len(self._schedulers):
            raise ValueError(f"state dict's _schedulers must list {len(self._schedulers)} "
                             f"state dicts, got {saved!r:.80}")
        for s, entry in zip(self._schedulers, saved):
            s._checked_state(entry)
        self.__dict__.update(state)
        for s, entry in zip(self._schedulers, saved):
            s.load_state_dict(entry)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({[type(s).__name__ for s in self._schedulers]}, "
                f"milestones={self._milestones}, last_epoch={self.last_epoch})")


class ChainedScheduler(LRScheduler):
    r"""Steps every scheduler at each step: their chainable factors multiply.

    ``ChainedScheduler(schedulers, optimizer=None)``; the schedulers wrap one
    optimizer. No closed form in general (no twin).

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> optimizer = fx.SGD([fx.Parameter(jnp.zeros(1))], lr=1.0)
      >>> scheduler = fx.lr_scheduler.ChainedScheduler([
      ...     fx.lr_scheduler.ConstantLR(optimizer, factor=0.5, total_iters=2),
      ...     fx.lr_scheduler.ExponentialLR(optimizer, gamma=0.5)])
      >>> optimizer.step(); scheduler.step(); scheduler.get_last_lr()
      [0.25]
    """

    def __init__(
        self, schedulers: Sequence[LRScheduler], optimizer: Optimizer | None = None
    ) -> None:
        check_eager(f"{type(self).__name__}(...)")
        if not isinstance(schedulers, Sequence) or not schedulers:
            raise ValueError(f"Invalid schedulers value: {schedulers!r} (expected a non-empty "
                             f"list of schedulers)")
        if optimizer is None:
            optimizer = getattr(schedulers[0], "optimizer", None)
        _check_optimizer(type(self).__name__, optimizer)
        assert optimizer is not None  # for the type checker: _check_optimizer raised otherwise
        self._schedulers = _check_children(type(self).__name__, schedulers, optimizer)
        self.optimizer = optimizer
        self._last_lr = _lrs(optimizer)

    def step(self) -> None:  # type: ignore[override]
        """Steps each scheduler in order."""
        check_eager(f"{type(self).__name__}.step()")
        for scheduler in self._schedulers:
            scheduler.step()
        self._last_lr = _lrs(self.optimizer)

    state_dict = SequentialLR.state_dict
    load_state_dict = SequentialLR.load_state_dict

    def __repr__(self) -> str:
        return f"{type(self).__name__}({[type(s).__name__ for s in self._schedulers]})"


class ReduceLROnPlateau(LRScheduler):
    r"""Multiplies the lr by ``factor`` when a metric has stopped improving for ``patience`` epochs.

    ``ReduceLROnPlateau(optimizer, mode="min", factor=0.1, patience=10,
    threshold=1e-4, threshold_mode="rel", cooldown=0, min_lr=0, eps=1e-8)``,
    stepped with the metric: ``scheduler.step(val_loss)``. A metric is better
    than the best so far when (mode, threshold_mode):

        min, rel: a < best · (1 - threshold)    min, abs: a < best - threshold
        max, rel: a > best · (1 + threshold)    max, abs: a > best + threshold

    After more than ``patience`` epochs without improvement each group's lr
    becomes ``max(lr · factor, min_lr)`` (unless that changes it by ≤ eps), and
    ``cooldown`` epochs follow in which bad epochs are not counted.
    0 ≤ factor < 1; patience, cooldown ≥ 0; threshold, min_lr, eps ≥ 0.
    Metric-driven: no twin (optax has ``contrib.reduce_on_plateau``).

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> optimizer = fx.SGD([fx.Parameter(jnp.zeros(1))], lr=1.0)
      >>> scheduler = fx.lr_scheduler.ReduceLROnPlateau(optimizer, patience=1, factor=0.5)
      >>> for loss in [1.0, 1.0, 1.0]:
      ...     optimizer.step(); scheduler.step(loss)
      >>> scheduler.get_last_lr()
      [0.5]
    """

    def __init__(
        self,
        optimizer: Optimizer,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: list[float] | float = 0,
        eps: float = 1e-8,
    ) -> None:
        check_eager(f"{type(self).__name__}(...)")
        _check_optimizer(type(self).__name__, optimizer)
        checks.check_choice("mode", mode, ("min", "max"))
        checks.check_real("factor", factor, low=0.0, high=1.0, high_open=True)
        checks.check_int("patience", patience, 0)
        checks.check_real("threshold", threshold, low=0.0)
        checks.check_choice("threshold_mode", threshold_mode, ("rel", "abs"))
        checks.check_int("cooldown", cooldown, 0)
        min_lrs = _per_group("min_lr", optimizer, min_lr)
        for value in min_lrs:
            checks.check_lr("min_lr", value)
        checks.check_real("eps", eps, low=0.0)
        self.factor = factor
        self.optimizer = optimizer
        if isinstance(min_lr, (list, tuple)):
            self.default_min_lr = None
            self.min_lrs = min_lrs
        else:
            self.default_min_lr = min_lr
            self.min_lrs = min_lrs
        self.patience = patience
        self.cooldown = cooldown
        self.eps = eps
        self.last_epoch = 0
        self._last_lr = _lrs(optimizer)
        self._init_is_better(mode, threshold, threshold_mode)
        self._reset()

    def _init_is_better(self, mode: str, threshold: float, threshold_mode: str) -> None:
        self.mode_worse = math.inf if mode == "min" else -math.inf
        self.mode = mode
        self.threshold = threshold
        self.threshold_mode = threshold_mode

    def _reset(self) -> None:
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def _is_better(self, a: float, best: float) -> bool:
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min":
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def step(self, metrics: SupportsFloat, epoch: int | None = None) -> None:  # type: ignore[override]
        """One epoch with its metric (a number, or a 0-d array: this reads it back to the host)."""
        check_eager(f"{type(self).__name__}.step()", metrics)
        current = float(metrics)
        if epoch is None:
            epoch = self.last_epoch + 1
        else:
            warnings.warn(EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
        self.last_epoch = epoch
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            self._reduce_lr()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = _lrs(self.optimizer)

    def _reduce_lr(self) -> None:
        if len(self.optimizer.param_groups) != len(self.min_lrs):
            if self.default_min_lr is None:
                raise RuntimeError(
                    f"the optimizer has {len(self.optimizer.param_groups)} param groups, "
                    f"ReduceLROnPlateau was given {len(self.min_lrs)} min_lrs: set "
                    f"scheduler.min_lrs to one per group"
                )
            self.min_lrs = [self.default_min_lr] * len(self.optimizer.param_groups)
        for group, low in zip(self.optimizer.param_groups, self.min_lrs):
            old = float(group["lr"])
            new = max(old * self.factor, low)
            if old - new > self.eps:
                group["lr"] = new

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        check_eager(f"{type(self).__name__}.load_state_dict()")
        self.__dict__.update(self._checked_state(state_dict))
        self._init_is_better(self.mode, self.threshold, self.threshold_mode)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(mode={self.mode!r}, best={self.best}, "
                f"num_bad_epochs={self.num_bad_epochs}, last_lr={self._last_lr})")
