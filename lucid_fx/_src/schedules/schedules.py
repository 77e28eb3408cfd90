r"""Learning-rate schedules as pure functions: the functional twins of :mod:`lucid_fx._src.schedules.lr_scheduler`.

The public face is :mod:`lucid_fx.schedules`, which documents it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lucid_fx._src.core.base import Schedule

__all__ = [
    "constant_lr",
    "cosine_annealing_lr",
    "cosine_annealing_warm_restarts",
    "cyclic_lr",
    "exponential_lr",
    "lambda_lr",
    "linear_lr",
    "multi_step_lr",
    "noam_scheduler",
    "one_cycle_lr",
    "polynomial_lr",
    "sequential_lr",
    "step_lr",
    "swalr",
]

CYCLIC_MODES = ("triangular", "triangular2", "exp_range")
SCALE_MODES = ("cycle", "iterations")
ANNEAL_STRATEGIES = ("cos", "linear")


# ------------------------------------------------------------------ argument checks (both faces)


def check_int(name: str, value: Any, low: int) -> None:
    """Raises ``ValueError`` naming ``name`` unless ``value`` is an integer >= ``low``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"Invalid {name} value: {value!r} (expected an integer >= {low})")


def check_real(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raises ``ValueError`` naming ``name`` unless ``value`` is a finite real in the range.

    ``low``/``high`` of ``None`` leave that side open to infinity;
    ``low_open``/``high_open`` exclude the bound itself.

    Example:
      >>> check_real("gamma", 0.0, low=0.0, low_open=True)
      Traceback (most recent call last):
      ...
      ValueError: Invalid gamma value: 0.0 (expected a finite number > 0.0)
    """
    ok = (isinstance(value, (int, float, np.integer, np.floating))
          and not isinstance(value, (bool, np.bool_)) and math.isfinite(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        parts = []
        if low is not None:
            parts.append(f"{'>' if low_open else '>='} {low}")
        if high is not None:
            parts.append(f"{'<' if high_open else '<='} {high}")
        expected = " and ".join(parts)
        raise ValueError(
            f"Invalid {name} value: {value!r} (expected a finite number{' ' + expected if parts else ''})"
        )


def check_callable(name: str, value: Any) -> None:
    if not callable(value):
        message = f"Invalid {name} value: {value!r} (expected a function of the epoch)"
        raise ValueError(message)  # noqa: TRY004 (one error type for every bad value)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"Invalid {name} value: {value!r} (expected one of {list(choices)})")


def checked_milestones(milestones: Iterable[int]) -> list[int]:
    """The milestones as a list; ``ValueError`` unless strictly increasing integers >= 0."""
    if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Iterable):
        message = f"Invalid milestones value: {milestones!r} (expected a list of integers)"
        raise ValueError(message)  # noqa: TRY004 (one error type for every bad value)
    listed = list(milestones)
    integers = all(isinstance(m, (int, np.integer)) and not isinstance(m, (bool, np.bool_))
                   for m in listed)
    if not integers or any(m < 0 for m in listed) or any(
            b <= a for a, b in itertools.pairwise(listed)):
        raise ValueError(
            f"Invalid milestones value: {listed!r} (expected strictly increasing integers >= 0)"
        )
    return [int(m) for m in listed]


def check_lr(name: str, value: Any) -> None:
    check_real(name, value, low=0.0)


def check_step_lr(step_size: Any, gamma: Any) -> None:
    check_int("step_size", step_size, 1)
    check_real("gamma", gamma, low=0.0, low_open=True)


def check_constant_lr(factor: Any, total_iters: Any) -> None:
    check_real("factor", factor, low=0.0, high=1.0, low_open=True)
    check_int("total_iters", total_iters, 1)


def check_linear_lr(start_factor: Any, end_factor: Any, total_iters: Any) -> None:
    check_real("start_factor", start_factor, low=0.0, high=1.0, low_open=True)
    check_real("end_factor", end_factor, low=0.0, high=1.0)
    check_int("total_iters", total_iters, 1)


def check_polynomial_lr(total_iters: Any, power: Any) -> None:
    check_int("total_iters", total_iters, 1)
    check_real("power", power, low=0.0)


def check_cosine_annealing_lr(T_max: Any, eta_min: Any) -> None:
    check_real("T_max", T_max, low=0.0, low_open=True)
    check_real("eta_min", eta_min, low=0.0)


def check_warm_restarts(T_0: Any, T_mult: Any, eta_min: Any) -> None:
    check_int("T_0", T_0, 1)
    check_int("T_mult", T_mult, 1)
    check_real("eta_min", eta_min, low=0.0)


def check_cyclic_lr(
    step_size_up: Any, step_size_down: Any, mode: Any, gamma: Any,
    scale_fn: Any, scale_mode: Any,
) -> None:
    check_real("step_size_up", step_size_up, low=0.0, low_open=True)
    if step_size_down is not None:
        check_real("step_size_down", step_size_down, low=0.0, low_open=True)
    if scale_fn is None:
        check_choice("mode", mode, CYCLIC_MODES)
    else:
        check_callable("scale_fn", scale_fn)
        check_choice("scale_mode", scale_mode, SCALE_MODES)
    check_real("gamma", gamma, low=0.0, low_open=True)


def one_cycle_phases(
    total_steps: int, pct_start: float, three_phase: bool
) -> list[tuple[float, str, str, str, str]]:
    """torch's phases: (end step, start lr key, end lr key, start momentum key, end momentum key)."""
    up = float(pct_start * total_steps) - 1
    if three_phase:
        return [
            (up, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
            (float(2 * pct_start * total_steps) - 2, "max_lr", "initial_lr",
             "base_momentum", "max_momentum"),
            (total_steps - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum"),
        ]
    return [
        (up, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
        (total_steps - 1, "max_lr", "min_lr", "base_momentum", "max_momentum"),
    ]


def checked_total_steps(
    total_steps: Any, epochs: Any, steps_per_epoch: Any, pct_start: Any,
    anneal_strategy: Any, div_factor: Any, final_div_factor: Any, three_phase: Any,
) -> int:
    """OneCycleLR's checks; returns the total number of steps."""
    if total_steps is not None:
        check_int("total_steps", total_steps, 1)
        total = int(total_steps)
    elif epochs is not None and steps_per_epoch is not None:
        check_int("epochs", epochs, 1)
        check_int("steps_per_epoch", steps_per_epoch, 1)
        total = int(epochs) * int(steps_per_epoch)
    else:
        raise ValueError("OneCycleLR needs total_steps, or epochs and steps_per_epoch: got none")
    check_real("pct_start", pct_start, low=0.0, high=1.0)
    check_choice("anneal_strategy", anneal_strategy, ANNEAL_STRATEGIES)
    check_real("div_factor", div_factor, low=0.0, low_open=True)
    check_real("final_div_factor", final_div_factor, low=0.0, low_open=True)
    if not isinstance(three_phase, (bool, np.bool_)):
        message = f"Invalid three_phase value: {three_phase!r} (expected True or False)"
        raise ValueError(message)  # noqa: TRY004 (one error type for every bad value)
    # Every phase must have a positive length: a phase of length 0 divides by zero
    # in torch, a negative one runs backwards.
    start = 0.0
    for end, *_ in one_cycle_phases(total, pct_start, bool(three_phase)):
        if not end > start:
            name, value = (("total_steps", total_steps) if total_steps is not None
                           else ("steps_per_epoch", steps_per_epoch))
            raise ValueError(
                f"Invalid {name} value: {value!r} (too small or pct_start={pct_start!r} out "
                f"of range for {total} total steps: each phase must last more than 0 steps, "
                f"which needs pct_start * total_steps > 1 and a last phase after the others)"
            )
        start = end
    return total


def check_noam(d_model: Any, warmup_steps: Any) -> None:
    check_real("d_model", d_model, low=0.0, low_open=True)
    check_real("warmup_steps", warmup_steps, low=0.0, low_open=True)


# ------------------------------------------------------------------ the schedules


def _float_dtype() -> Any:
    return jnp.result_type(float)  # float64 under jax_enable_x64, else float32


def _count(count: Any) -> jax.Array:
    """The count as an integer array (int32, or int64 with x64)."""
    t = jnp.asarray(count)
    if not jnp.issubdtype(t.dtype, jnp.integer):
        t = jnp.floor(t).astype(jnp.result_type(int))
    return t


def lambda_lr(base_lr: float, lr_lambda: Callable[[jax.Array], Any]) -> Schedule:
    r"""Twin of :class:`~lucid_fx._src.schedules.lr_scheduler.LambdaLR`: ``lr_t = base_lr · λ(t)``.

    ``lr_lambda`` receives the int32 count and must be written with ``jnp`` to
    run under jit (the scheduler calls it with a Python int). Same as
    ``optax`` with ``lambda t: base_lr * lr_lambda(t)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.schedules.schedules import lambda_lr
      >>> schedule = lambda_lr(0.5, lambda t: 1.0 / (1.0 + t))
      >>> float(schedule(jnp.int32(3)))
      0.125
    """
    check_lr("base_lr", base_lr)
    check_callable("lr_lambda", lr_lambda)

    def schedule(count: Any) -> jax.Array:
        return jnp.asarray(base_lr * lr_lambda(_count(count)), _float_dtype())

    return schedule


def step_lr(base_lr: float, step_size: int, gamma: float = 0.1) -> Schedule:
    r"""Twin of :class:`~lucid_fx._src.schedules.lr_scheduler.StepLR`: ``lr_t = base_lr · γ^⌊t / step_size⌋``.

    Equals ``optax.exponential_decay(base_lr, transition_steps=step_size,
    decay_rate=gamma, staircase=True)``.

    Example:
      >>> from lucid_fx._src.schedules.schedules import step_lr
      >>> schedule = step_lr(1.0, step_size=2, gamma=0.5)
      >>> [float(schedule(t)) for t in range(5)]
      [1.0, 1.0, 0.5, 0.5, 0.25]
    """
    check_lr("base_lr", base_lr)
    check_step_lr(step_size, gamma)

    def schedule(count: Any) -> jax.Array:
        k = (_count(count) // step_size).astype(_float_dtype())
        return base_lr * jnp.power(jnp.asarray(gamma, _float_dtype()), k)

    return schedule


def multi_step_lr(base_lr: float, milestones: Iterable[int], gamma: float = 0.1) -> Schedule:
    r"""Twin of :class:`~lucid_fx._src.schedules.lr_scheduler.MultiStepLR`: ``lr_t = base_lr · γ^#{m ≤ t}``.

    ``milestones`` must increase strictly. Equals
    ``optax.piecewise_constant_schedule(base_lr, {m: gamma for m in milestones})``.

    Example:
      >>> from lucid_fx._src.schedules.schedules import multi_step_lr
      >>> schedule = multi_step_lr(1.0, milestones=[1, 3], gamma=0.5)
      >>> [float(schedule(t)) for t in range(5)]
      [1.0, 0.5, 0.5, 0.25, 0.25]
    """
    check_lr("base_lr", base_lr)
    points = checked_milestones(milestones)
    check_real("gamma", gamma, low=0.0, low_open=True)

    def schedule(count: Any) -> jax.Array:
        t = _count(count)
        passed = sum((t >= m).astype(_float_dtype()) for m in points) if points else 0.0
        return base_lr * jnp.power(jnp.asarray(gamma, _float_dtype()), passed)

    return schedule


def constant_lr(base_lr: float, factor: float = 1.0 / 3, total_iters: int = 5) -> Schedule:
    r"""Twin of :class:`~lucid_fx._src.schedules.lr_scheduler.ConstantLR`: ``base_lr · factor`` for t < total_iters, then ``base_lr``.

    Same as ``optax.piecewise_constant_schedule(base_lr * factor, {total_iters: 1 / factor})``
    up to the rounding of ``1 / factor``.

    Example:
      >>> from lucid_fx._src.schedules.schedules import constant_lr
      >>> schedule = constant_lr(1.0, factor=0.5, total_iters=2)
      >>> [float(schedule(t)) for t in range(4)]
      [0.5, 0.5, 1.0, 1.0]
    """
    check_lr("base_lr", base_lr)
    check_constant_lr(factor, total_iters)

    def schedule(count: Any) -> jax.Array:
        done = (_count(count) >= total_iters).astype(_float_dtype())
        return base_lr * (factor + done * (1 - factor))

    return schedule


def linear_lr(
    base_lr: float, start_factor: float = 1.0 / 3, end_factor: float = 1.0, total_iters: int = 5
) -> Schedule:
    r"""Twin of :class:`~lucid_fx._src.schedules.lr_scheduler.LinearLR`.

    ``lr_t = base_lr · (s + (e - s) · min(t, T) / T)`` with s = start_factor,
    e = end_factor, T = total_iters. Equals ``optax.linear_schedule(base_lr * s,
    base_lr * e, transition_steps=T)``.

    Example:
      >>> from lucid_fx._src.schedules.schedules import linear_lr
      >>> schedule = linear_lr(1.0, start_factor=0.25, end_factor=1.0, total_iters=3)
      >>> [float(schedule(t)) for t in range(5)]
      [0.25, 0.5, 0.75, 1.0, 1.0]
    """
    check_lr("base_lr", base_lr)
    check_linear_lr(start_factor, end_factor, total_iters)

    def schedule(count: Any) -> jax.Array:
        t = jnp.minimum(_count(count), total_iters).astype(_float_dtype())
        return base_lr * (start_factor + (end_factor - start_factor) * t / total_iters)

    return schedule


def exponential_lr(base_lr: float, gamma: float) -> Schedule:
    r"""Twin of :class:`~lucid_fx._src.schedules.lr_scheduler.ExponentialLR`: ``lr_t = base_lr · γ^t``.

    Equals ``optax.exponential_decay(base_lr, transition_steps=1, decay_rate=gamma)``.

    Example:
      >>> from lucid_fx._src.schedules.schedules import exponential_lr
      >>> schedule = exponential_lr(1.0, gamma=0.5)
      >>> [float(schedule(t)) for t in range(4)]
      [1.0, 0.5, 0.25, 0.125]
    """
    check_lr("base_lr", base_lr)
    check_real("gamma", gamma, low=0.0, low_open=True)

    def schedule(count: Any) -> jax.Array:
        t = _count(count).astype(_float_dtype())
        return base_lr * jnp.power(jnp.asarray(gamma, _float_dtype()), t)

    return schedule


def polynomial_lr(base_lr: float, total_iters: int = 5, power: float = 1.0) -> Schedule:
    r"""Twin of :class:`~lucid_fx._src.schedules.lr_scheduler.PolynomialLR`: ``lr_t = base_lr · (1 - min(t, T)/T)^p``.

    Equals ``optax.polynomial_schedule(base_lr, 0.0, power, transition_steps=total_iters)``.

    Example:
      >>> from lucid_fx._src.schedules.schedules import polynomial_lr
      >>> schedule = polynomial_lr(1.0, total_iters=4, power=2.0)
      >>> [float(schedule(t)) for t in range(6)]
      [1.0, 0.5625, 0.25, 0.0625, 0.0, 0.0]
    """
    check_lr("base_lr", base_lr)
    check_polynomial_lr(total_iters, power)

    def schedule(count: Any) -> jax.Array:
        t = jnp.minimum(_count(count), total_iters).astype(_float_dtype())
        return base_lr * jnp.power(1.0 - t / total_iters, power)

    return schedule


def cosine_annealing_lr(base_lr: float, T_max: float, eta_min: float = 0.0) -> Schedule:
    r"""Twin of :class:`~lucid_fx._src.schedules.lr_scheduler.CosineAnnealingLR`.

    ``lr_t = η_min + (base_lr - η_min) · (1 + cos(π t / T_max)) / 2``, for every
    t: past ``T_max`` the lr rises again, as torch's does. For t ≤ T_max it
    equals ``optax.cosine_decay_schedule(base_lr, decay_steps=T_max,
    alpha=eta_min / base_lr)``, which then stays at η_min.

    Example:
      >>> from lucid_fx._src.schedules.schedules import cosine_annealing_lr
      >>> schedule = cosine_annealing_lr(1.0, T_max=2)
      >>> [round(float(schedule(t)), 6) for t in range(5)]
      [1.0, 0.5, 0.0, 0.5, 1.0]
    """
    check_lr("base_lr", base_lr)
    check_cosine_annealing_lr(T_max, eta_min)

    def schedule(count: Any) -> jax.Array:
        t = _count(count).astype(_float_dtype())
        return eta_min + (base_lr - eta_min) * (1 + jnp.cos(jnp.pi * t / T_max)) / 2

    return schedule


def cosine_annealing_warm_restarts(
    base_lr: float, T_0: int, T_mult: int = 1, eta_min: float = 0.0
) -> Schedule:
    r"""Twin of :class:`~lucid_fx._src.schedules.lr_scheduler.CosineAnnealingWarmRestarts` (SGDR).

    Cycle i lasts T_i = T_0 · T_mult^i steps; with T_cur the steps since the
    last restart, ``lr_t = η_min + (base_lr - η_min) · (1 + cos(π T_cur / T_i)) / 2``.
    The cycle is found with integer arithmetic, so restarts fall on the exact step.

    Example:
      >>> from lucid_fx._src.schedules.schedules import cosine_annealing_warm_restarts
      >>> schedule = cosine_annealing_warm_restarts(1.0, T_0=2, T_mult=2)
      >>> [round(float(schedule(t)), 4) for t in range(7)]
      [1.0, 0.5, 1.0, 0.8536, 0.5, 0.1464, 1.0]
    """
    check_lr("base_lr", base_lr)
    check_warm_restarts(T_0, T_mult, eta_min)

    def schedule(count: Any) -> jax.Array:
        t = _count(count)
        if T_mult == 1:
            t_cur, t_i = t % T_0, jnp.asarray(T_0, t.dtype)
        else:
            limit = int(jnp.iinfo(t.dtype).max)
            starts, lengths = [0], [T_0]
            while starts[-1] + lengths[-1] <= limit:
                starts.append(starts[-1] + lengths[-1])
                lengths.append(lengths[-1] * T_mult)
            cycle = jnp.searchsorted(jnp.asarray(starts, t.dtype), t, side="right") - 1
            t_cur = t - jnp.asarray(starts, t.dtype)[cycle]
            t_i = jnp.asarray(lengths, jnp.result_type(float))[cycle]
        dtype = _float_dtype()
        ratio = t_cur.astype(dtype) / t_i.astype(dtype)
        return eta_min + (base_lr - eta_min) * (1 + jnp.cos(jnp.pi * ratio)) / 2

    return schedule


def cyclic_lr(
    base_lr: float,
    max_lr: float,
    step_size_up: float = 2000,
    step_size_down: float | None = None,
    mode: str = "triangular",
    gamma: float = 1.0,
    scale_fn: Callable[[jax.Array], Any] | None = None,
    scale_mode: str = "cycle",
) -> Schedule:
    r"""Twin of :class:`~lucid_fx._src.schedules.lr_scheduler.CyclicLR` (its lr; the momentum cycle is the class's).

    With L = step_size_up + step_size_down, r = step_size_up / L,
    c = ⌊1 + t/L⌋ and x = 1 + t/L - c::

        s = x / r  if x ≤ r  else  (x - 1) / (r - 1)
        lr_t = base_lr + (max_lr - base_lr) · s · scale

    where scale is 1 (``triangular``), 1/2^(c-1) (``triangular2``), γ^t
    (``exp_range``), or ``scale_fn(c)`` / ``scale_fn(t)`` per ``scale_mode``
    (a jnp function, to run under jit). The class's ``base_lr`` is this
    function's first argument.

    Example:
      >>> from lucid_fx._src.schedules.schedules import cyclic_lr
      >>> schedule = cyclic_lr(0.0, 1.0, step_size_up=2)
      >>> [float(schedule(t)) for t in range(6)]
      [0.0, 0.5, 1.0, 0.5, 0.0, 0.5]
    """
    check_lr("base_lr", base_lr)
    check_lr("max_lr", max_lr)
    check_cyclic_lr(step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode)
    up = float(step_size_up)
    down = float(step_size_down) if step_size_down is not None else up
    total, ratio = up + down, up / (up + down)
    if scale_fn is None:
        scale_mode = "iterations" if mode == "exp_range" else "cycle"

    def scale(x: jax.Array) -> Any:
        if scale_fn is not None:
            return scale_fn(x)
        if mode == "triangular":
            return 1.0
        if mode == "triangular2":
            return 1 / (2.0 ** (x - 1))
        return gamma**x

    def schedule(count: Any) -> jax.Array:
        t = _count(count).astype(_float_dtype())
        cycle = jnp.floor(1 + t / total)
        x = 1.0 + t / total - cycle
        factor = jnp.where(x <= ratio, x / ratio, (x - 1) / (ratio - 1))
        height = (max_lr - base_lr) * factor
        return base_lr + height * scale(cycle if scale_mode == "cycle" else t)

    return schedule


def one_cycle_lr(
    base_lr: float | None,
    max_lr: float,
    total_steps: int | None = None,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    three_phase: bool = False,
) -> Schedule:
    r"""Twin of :class:`~lucid_fx._src.schedules.lr_scheduler.OneCycleLR` (its lr; the momentum cycle is the class's).

    Like the class, it ignores ``base_lr`` (pass the optimizer's lr or ``None``):
    the cycle starts at η_0 = max_lr / div_factor, rises to max_lr at step
    pct_start·T - 1 and anneals to η_0 / final_div_factor at step T - 1
    (T = total_steps, or epochs · steps_per_epoch); ``three_phase`` returns to
    η_0 at step 2·pct_start·T - 2 first. In each phase, from a to b with
    progress p::

        cos:    lr = b + (a - b) / 2 · (cos(π p) + 1)
        linear: lr = (b - a) · p + a

    Where the class raises (stepping past T), the schedule holds its value at T.
    ``optax.cosine_onecycle_schedule`` is similar, not equal: its phases end at
    pct_start·T and T.

    Example:
      >>> from lucid_fx._src.schedules.schedules import one_cycle_lr
      >>> schedule = one_cycle_lr(None, max_lr=1.0, total_steps=10, pct_start=0.5,
      ...                         anneal_strategy="linear", div_factor=10.0)
      >>> [round(float(schedule(t)), 3) for t in (0, 4, 9)]
      [0.1, 1.0, 0.0]
    """
    if base_lr is not None:
        check_lr("base_lr", base_lr)
    check_lr("max_lr", max_lr)
    total = checked_total_steps(total_steps, epochs, steps_per_epoch, pct_start,
                                anneal_strategy, div_factor, final_div_factor, three_phase)
    initial = max_lr / div_factor
    values = {"initial_lr": initial, "max_lr": max_lr, "min_lr": initial / final_div_factor}
    phases = one_cycle_phases(total, pct_start, bool(three_phase))

    def anneal(start: float, end: float, pct: jax.Array) -> jax.Array:
        if anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (jnp.cos(jnp.pi * pct) + 1)
        return (end - start) * pct + start

    begins = [0.0] + [end for end, *_ in phases[:-1]]
    spans = [(begin, end, values[a], values[b])
             for begin, (end, a, b, _, _) in zip(begins, phases)]

    def schedule(count: Any) -> jax.Array:
        t = jnp.minimum(_count(count), total).astype(_float_dtype())
        # From the last phase back to the first: the first phase with t <= its end wins.
        begin, end, a, b = spans[-1]
        lr = anneal(a, b, (t - begin) / (end - begin))
        for begin, end, a, b in reversed(spans[:-1]):
            lr = jnp.where(t <= end, anneal(a, b, (t - begin) / (end - begin)), lr)
        return lr

    return schedule


def noam_scheduler(base_lr: float | None, d_model: float, warmup_steps: float) -> Schedule:
    r"""Twin of :class:`~lucid_fx._src.schedules.lr_scheduler.NoamScheduler` (Lucid's), "Attention is all you need".

    ``lr_t = d_model^-0.5 · min(s^-0.5, s · warmup_steps^-1.5)`` with s = max(t, 1).
    Like Lucid's class it ignores ``base_lr`` (pass the optimizer's lr or ``None``):
    the value is absolute.

    Example:
      >>> from lucid_fx._src.schedules.schedules import noam_scheduler
      >>> schedule = noam_scheduler(None, d_model=16, warmup_steps=4)
      >>> [float(schedule(t)) for t in (0, 1, 4, 16)]
      [0.03125, 0.03125, 0.125, 0.0625]
    """
    if base_lr is not None:
        check_lr("base_lr", base_lr)
    check_noam(d_model, warmup_steps)
    scale, warmup = d_model**-0.5, warmup_steps**-1.5

    def schedule(count: Any) -> jax.Array:
        s = jnp.maximum(_count(count), 1).astype(_float_dtype())
        return scale * jnp.minimum(s**-0.5, s * warmup)

    return schedule


def sequential_lr(
    base_lr: float,
    schedulers: Sequence[Callable[[float], Schedule]],
    milestones: Sequence[int],
) -> Schedule:
    r"""Twin of :class:`~lucid_fx._src.schedules.lr_scheduler.SequentialLR`: schedule i from milestone i-1 on.

    ``schedulers`` are factories ``base_lr -> schedule`` (as the class's
    schedulers all wrap one optimizer), such as
    ``functools.partial(fx.schedules.linear_lr, total_iters=5)``. With m_0 = 0,
    ``lr_t = schedule_i(t - m_i)`` for m_i ≤ t < m_{i+1}: each schedule starts
    from its own beginning at its milestone, as torch's does. Equals
    ``optax.join_schedules(schedules, milestones)``.

    Example:
      >>> from functools import partial
      >>> from lucid_fx import schedules
      >>> schedule = schedules.sequential_lr(
      ...     1.0, [partial(schedules.linear_lr, start_factor=0.5, total_iters=2),
      ...           partial(schedules.exponential_lr, gamma=0.5)], milestones=[2])
      >>> [float(schedule(t)) for t in range(5)]
      [0.5, 0.75, 1.0, 0.5, 0.25]
    """
    check_lr("base_lr", base_lr)
    if not isinstance(schedulers, Sequence) or not schedulers:
        raise ValueError(f"Invalid schedulers value: {schedulers!r} (expected a non-empty list)")
    for i, factory in enumerate(schedulers):
        check_callable(f"schedulers[{i}]", factory)
    points = checked_milestones(milestones)
    if len(points) != len(schedulers) - 1:
        raise ValueError(
            f"Invalid milestones value: {points!r} (expected {len(schedulers) - 1} milestone(s), "
            f"one fewer than the {len(schedulers)} schedulers)"
        )
    parts = [factory(base_lr) for factory in schedulers]

    def schedule(count: Any) -> jax.Array:
        t = _count(count)
        lr = jnp.asarray(parts[0](t), _float_dtype())
        for milestone, part in zip(points, parts[1:]):
            lr = jnp.where(t >= milestone, jnp.asarray(part(t - milestone), _float_dtype()), lr)
        return lr

    return schedule


def swalr(base_lr: float, swa_lr: float, anneal_epochs: int = 10,
          anneal_strategy: str = "cos") -> Schedule:
    r"""Twin of ``lucid_fx.swa_utils.SWALR``, counted from the step SWALR starts at.

    ``lr_t = swa_lr·α_t + base_lr·(1 - α_t)``, with ``α_t = (1 - cos(π·τ))/2`` (``"cos"``)
    or ``τ`` (``"linear"``) at ``τ = min(1, t / anneal_epochs)``; ``anneal_epochs=0``
    is ``swa_lr`` from the start. ``base_lr`` is the lr the groups have when SWALR is
    made: in torch's recipe (another scheduler until ``swa_start``, then SWALR), the
    first schedule's value at ``swa_start``, for example
    ``sequential_lr(base_lr, [cosine, lambda lr: swalr(lr_at_start, ...)], [swa_start])``.

    Example:
      >>> from lucid_fx._src.schedules.schedules import swalr
      >>> schedule = swalr(1.0, swa_lr=0.5, anneal_epochs=2, anneal_strategy="linear")
      >>> [round(float(schedule(t)), 6) for t in range(4)]
      [1.0, 0.75, 0.5, 0.5]
    """
    check_lr("base_lr", base_lr)
    check_lr("swa_lr", swa_lr)
    check_int("anneal_epochs", anneal_epochs, 0)
    check_choice("anneal_strategy", anneal_strategy, ANNEAL_STRATEGIES)

    def schedule(count: Any) -> jax.Array:
        t = _count(count).astype(_float_dtype())
        tau = jnp.minimum(1, t / anneal_epochs) if anneal_epochs else jnp.ones_like(t)
        alpha = (1 - jnp.cos(jnp.pi * tau)) / 2 if anneal_strategy == "cos" else tau
        return swa_lr * alpha + base_lr * (1 - alpha)

    return schedule
