"""``fx.schedules``: each twin gives its scheduler's lr sequence, under jit, and optax's where equal.

``schedule(t)`` must be the lr that the scheduler (stepped after each optimizer
step) sets for the (t+1)-th update. The scheduler updates recursively in Python
floats, the twin evaluates the closed form with jnp: they agree to rounding, in
float64 (``jax.enable_x64``) and in float32. Where optax ships the same schedule,
the two agree to rounding too. Used as ``lr`` of a functional optimizer (ours or
optax's), a twin trains exactly as the stateful optimizer with its scheduler.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given

import lucid_fx as fx
from lucid_fx import lr_scheduler as F
from lucid_fx import schedules as S
from lucid_fx import swa_utils

BASE_LR = 0.1
# float64 twin vs the scheduler's recursion (Python floats): the rounding of both, which
# grows with the recursive steps (the cosine and cyclic forms most): measured ≤ 7e-15
# relative, ≤ 5e-15·BASE_LR absolute.
RTOL_TWIN_F64 = 1e-13
ATOL_TWIN_F64 = 1e-14 * BASE_LR
# float32 twin vs the float64 sequence: float32 rounds the inputs (t / T, the cosine's
# argument π·t/T) as well as the result, so the error is a few ulps of the schedule's
# amplitude: measured ≤ 2.6e-6 relative where lr > 1e-3·BASE_LR, ≤ 1.3e-6·BASE_LR absolute.
RTOL_TWIN_F32 = 5e-6
ATOL_TWIN_F32 = 2e-6 * BASE_LR
# twin vs optax's schedule: the same formula in other operations, in float32 (measured
# ≤ 1.6e-7) and float64 (measured ≤ 2e-16, with int64 counts).
RTOL_OPTAX_F32 = 1e-6
RTOL_OPTAX_F64 = 1e-14


class Twin(NamedTuple):
    schedule: Callable[[float], Any]  # base_lr -> count -> lr
    scheduler: Callable[[fx.Optimizer], Any]
    steps: int


def _cyclic_scale(x: Any) -> Any:
    return 0.9**x


TWINS: dict[str, Twin] = {
    "lambda_lr": Twin(lambda b: S.lambda_lr(b, lambda t: 0.9**t),
                      lambda o: F.LambdaLR(o, lambda e: 0.9**e), 20),
    "step_lr": Twin(lambda b: S.step_lr(b, 3, gamma=0.5), lambda o: F.StepLR(o, 3, gamma=0.5), 20),
    "multi_step_lr": Twin(lambda b: S.multi_step_lr(b, [2, 5, 9], gamma=0.3),
                          lambda o: F.MultiStepLR(o, [2, 5, 9], gamma=0.3), 15),
    "constant_lr": Twin(lambda b: S.constant_lr(b, factor=0.3, total_iters=4),
                        lambda o: F.ConstantLR(o, factor=0.3, total_iters=4), 10),
    "linear_lr": Twin(lambda b: S.linear_lr(b, 0.2, 0.9, total_iters=7),
                      lambda o: F.LinearLR(o, 0.2, 0.9, total_iters=7), 12),
    "exponential_lr": Twin(lambda b: S.exponential_lr(b, 0.9), lambda o: F.ExponentialLR(o, 0.9),
                           40),
    "polynomial_lr": Twin(lambda b: S.polynomial_lr(b, total_iters=8, power=2.0),
                          lambda o: F.PolynomialLR(o, total_iters=8, power=2.0), 12),
    "cosine_annealing_lr": Twin(lambda b: S.cosine_annealing_lr(b, T_max=6, eta_min=0.001),
                                lambda o: F.CosineAnnealingLR(o, T_max=6, eta_min=0.001), 30),
    "cosine_annealing_lr-to-zero": Twin(lambda b: S.cosine_annealing_lr(b, T_max=10),
                                        lambda o: F.CosineAnnealingLR(o, T_max=10), 40),
    "cosine_annealing_warm_restarts": Twin(
        lambda b: S.cosine_annealing_warm_restarts(b, T_0=3, T_mult=2, eta_min=1e-3),
        lambda o: F.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2, eta_min=1e-3), 40),
    "cosine_annealing_warm_restarts-1": Twin(
        lambda b: S.cosine_annealing_warm_restarts(b, T_0=4),
        lambda o: F.CosineAnnealingWarmRestarts(o, T_0=4), 14),
    "cyclic_lr": Twin(lambda b: S.cyclic_lr(0.01, 0.2, step_size_up=4, step_size_down=3),
                      lambda o: F.CyclicLR(o, 0.01, 0.2, step_size_up=4, step_size_down=3), 30),
    "cyclic_lr-triangular2": Twin(lambda b: S.cyclic_lr(0.01, 0.1, 3, mode="triangular2"),
                                  lambda o: F.CyclicLR(o, 0.01, 0.1, 3, mode="triangular2"), 30),
    "cyclic_lr-exp-range": Twin(lambda b: S.cyclic_lr(0.01, 0.1, 3, mode="exp_range", gamma=0.97),
                                lambda o: F.CyclicLR(o, 0.01, 0.1, 3, mode="exp_range",
                                                     gamma=0.97), 30),
    "cyclic_lr-scale-fn": Twin(lambda b: S.cyclic_lr(0.01, 0.1, 3, scale_fn=_cyclic_scale,
                                                     scale_mode="iterations"),
                               lambda o: F.CyclicLR(o, 0.01, 0.1, 3, scale_fn=_cyclic_scale,
                                                    scale_mode="iterations"), 30),
    "one_cycle_lr": Twin(lambda b: S.one_cycle_lr(b, 0.5, total_steps=20),
                         lambda o: F.OneCycleLR(o, 0.5, total_steps=20), 20),
    "one_cycle_lr-linear-3-phase": Twin(
        lambda b: S.one_cycle_lr(b, 0.5, epochs=4, steps_per_epoch=5, anneal_strategy="linear",
                                 three_phase=True),
        lambda o: F.OneCycleLR(o, 0.5, epochs=4, steps_per_epoch=5, anneal_strategy="linear",
                               three_phase=True), 20),
    "swalr": Twin(lambda b: S.swalr(b, swa_lr=0.02, anneal_epochs=5),
                  lambda o: swa_utils.SWALR(o, swa_lr=0.02, anneal_epochs=5), 12),
    "swalr-linear-0": Twin(lambda b: S.swalr(b, swa_lr=0.03, anneal_epochs=0,
                                             anneal_strategy="linear"),
                           lambda o: swa_utils.SWALR(o, swa_lr=0.03, anneal_epochs=0,
                                                     anneal_strategy="linear"), 5),
    "swalr-linear": Twin(lambda b: S.swalr(b, swa_lr=0.5, anneal_epochs=3,
                                           anneal_strategy="linear"),
                         lambda o: swa_utils.SWALR(o, swa_lr=0.5, anneal_epochs=3,
                                                   anneal_strategy="linear"), 8),
    "noam_scheduler": Twin(lambda b: S.noam_scheduler(b, d_model=64, warmup_steps=5),
                           lambda o: F.NoamScheduler(o, d_model=64, warmup_steps=5), 20),
    "sequential_lr": Twin(
        lambda b: S.sequential_lr(b, [functools.partial(S.linear_lr, start_factor=0.1,
                                                        total_iters=3),
                                      functools.partial(S.cosine_annealing_lr, T_max=10)],
                                  milestones=[3]),
        lambda o: F.SequentialLR(o, [F.LinearLR(o, 0.1, total_iters=3),
                                     F.CosineAnnealingLR(o, T_max=10)], milestones=[3]), 20),
    "sequential_lr-3": Twin(
        lambda b: S.sequential_lr(b, [functools.partial(S.constant_lr, factor=0.5, total_iters=2),
                                      functools.partial(S.exponential_lr, gamma=0.8),
                                      functools.partial(S.step_lr, step_size=2, gamma=0.5)],
                                  milestones=[2, 6]),
        lambda o: F.SequentialLR(o, [F.ConstantLR(o, 0.5, total_iters=2), F.ExponentialLR(o, 0.8),
                                     F.StepLR(o, 2, 0.5)], milestones=[2, 6]), 20),
}


def _scheduler_lrs(build: Callable[[fx.Optimizer], Any], steps: int) -> np.ndarray:
    """The lr of updates 1..steps+1 (after 0..steps scheduler steps), as float64."""
    optimizer = fx.SGD([fx.Parameter(jnp.zeros(1))], lr=BASE_LR)
    scheduler = build(optimizer)
    optimizer.step()  # no gradients: keeps the order warning quiet
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(steps):
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return np.asarray(lrs, np.float64)


COUNTS = 41  # every run evaluates counts 0..40 (one shape: eager ops compile once)


def _twin_lrs(schedule: Callable[[Any], Any], steps: int) -> np.ndarray:
    """The schedule at counts 0..steps, eagerly over an int32 vector of counts."""
    values = schedule(jnp.arange(COUNTS, dtype=jnp.int32))
    return np.asarray(values, np.float64)[: steps + 1]


@functools.cache
def _all_values(x64: bool) -> tuple[dict[str, np.ndarray], dict[str, tuple[np.ndarray, ...]]]:
    """Every twin, and every (twin, optax) pair of OPTAX, at counts 0..COUNTS-1, in one
    compiled call (float64 with ``x64``).

    ``vmap`` hands each twin a traced int32 scalar count, as an optimizer's update does,
    so this also checks that every twin is jit-friendly. The optax pairs get a vector of
    default-int counts (int64 with x64: optax's float64 needs it).
    """
    with jax.enable_x64(x64):
        schedules = {name: twin.schedule(BASE_LR) for name, twin in TWINS.items()}

        def evaluate(t32: jax.Array, t: jax.Array) -> tuple[Any, Any]:
            twins = jax.vmap(lambda c: {name: s(c) for name, s in schedules.items()})(t32)
            return twins, {k: (a(t), b(t)) for k, (a, b, _) in OPTAX.items()}

        twins, pairs = jax.jit(evaluate)(jnp.arange(COUNTS, dtype=jnp.int32),
                                         jnp.arange(COUNTS))
        assert {str(v.dtype) for v in twins.values()} == {"float64" if x64 else "float32"}
        return ({name: np.asarray(v, np.float64) for name, v in twins.items()},
                {k: (np.asarray(a), np.asarray(b)) for k, (a, b) in pairs.items()})


def _all_twin_lrs(x64: bool) -> dict[str, np.ndarray]:
    return _all_values(x64)[0]


def test_every_closed_form_scheduler_has_a_snake_cased_twin() -> None:
    snake = {name.split("-")[0] for name in TWINS}
    assert snake == set(S.__all__)
    # What has no twin is recursive or metric-driven (documented in the module).
    without = {"LRScheduler", "MultiplicativeLR", "ChainedScheduler", "ReduceLROnPlateau"}
    for name in set(F.__all__) - without:
        twin = "".join(f"_{c.lower()}" if c.isupper() else c for c in name)
        assert twin.lstrip("_").replace("l_r", "lr") in S.__all__, name


@pytest.mark.parametrize("name", TWINS)
def test_twin_equals_the_scheduler_sequence_in_float64_and_float32(name: str) -> None:
    twin = TWINS[name]
    expected = _scheduler_lrs(twin.scheduler, twin.steps)
    got64 = _all_twin_lrs(x64=True)[name][: twin.steps + 1]
    np.testing.assert_allclose(got64, expected, rtol=RTOL_TWIN_F64, atol=ATOL_TWIN_F64)
    got32 = _all_twin_lrs(x64=False)[name][: twin.steps + 1]
    np.testing.assert_allclose(got32, expected, rtol=RTOL_TWIN_F32, atol=ATOL_TWIN_F32)


def test_far_counts_one_cycle_holds_its_last_value_and_restarts_fall_on_the_exact_step() -> None:
    one_cycle = S.one_cycle_lr(None, 0.5, total_steps=10)
    restarts = S.cosine_annealing_warm_restarts(1.0, T_0=3, T_mult=2)
    # Cycles start at 0, 3, 9, 21, ...: 3·(2^n - 1); each start is a restart to base_lr.
    starts = jnp.asarray([3 * (2**n - 1) for n in range(1, 29)], jnp.int32)
    far = jnp.asarray([10, 10_000, 2**31 - 1], jnp.int32)
    held, at_start, before_start = jax.jit(
        lambda: (one_cycle(far), restarts(starts), restarts(starts - 1)))()
    assert len(set(np.asarray(held).tolist())) == 1
    np.testing.assert_array_equal(np.asarray(at_start), 1.0)
    assert np.all(np.asarray(before_start) < 1.0)


# ------------------------------------------------------------------ optax, where it agrees


OPTAX: dict[str, tuple[Any, Any, int]] = {
    "step_lr": (S.step_lr(BASE_LR, 3, gamma=0.5),
                optax.exponential_decay(BASE_LR, 3, 0.5, staircase=True), 20),
    "exponential_lr": (S.exponential_lr(BASE_LR, 0.9), optax.exponential_decay(BASE_LR, 1, 0.9),
                       40),
    "multi_step_lr": (S.multi_step_lr(BASE_LR, [2, 5, 9], gamma=0.3),
                      optax.piecewise_constant_schedule(BASE_LR, {2: 0.3, 5: 0.3, 9: 0.3}), 15),
    "linear_lr": (S.linear_lr(BASE_LR, 0.2, 0.9, total_iters=7),
                  optax.linear_schedule(BASE_LR * 0.2, BASE_LR * 0.9, 7), 12),
    "polynomial_lr": (S.polynomial_lr(BASE_LR, total_iters=8, power=2.0),
                      optax.polynomial_schedule(BASE_LR, 0.0, 2.0, 8), 12),
    "cosine_annealing_lr": (S.cosine_annealing_lr(BASE_LR, T_max=10, eta_min=0.001),
                            optax.cosine_decay_schedule(BASE_LR, 10, alpha=0.001 / BASE_LR), 10),
    "constant_lr": (S.constant_lr(BASE_LR, factor=0.25, total_iters=4),
                    optax.piecewise_constant_schedule(BASE_LR * 0.25, {4: 4.0}), 10),
    "sequential_lr": (
        S.sequential_lr(BASE_LR, [functools.partial(S.linear_lr, start_factor=0.1, total_iters=3),
                                  functools.partial(S.exponential_lr, gamma=0.9)], [3]),
        optax.join_schedules([S.linear_lr(BASE_LR, 0.1, total_iters=3),
                              S.exponential_lr(BASE_LR, 0.9)], [3]), 20),
}


@pytest.mark.parametrize("name", OPTAX)
def test_twin_equals_optax_where_optax_has_the_schedule(name: str) -> None:
    steps = OPTAX[name][2]
    for x64, rtol in ((False, RTOL_OPTAX_F32), (True, RTOL_OPTAX_F64)):
        ours, theirs = _all_values(x64)[1][name]
        np.testing.assert_allclose(ours[: steps + 1], theirs[: steps + 1], rtol=rtol, atol=0.0,
                                   err_msg=f"x64={x64}")


# ------------------------------------------------------------------ as an optimizer's lr


def _stateful_run(make: Callable[[list[fx.Parameter]], fx.Optimizer],
                  build: Callable[[fx.Optimizer], Any], grads: np.ndarray) -> np.ndarray:
    p = fx.Parameter(jnp.zeros(grads.shape[1:]))
    optimizer = make([p])
    scheduler = build(optimizer)
    for g in grads:
        p.grad = jnp.asarray(g)
        optimizer.step()
        scheduler.step()
    return np.asarray(p.value)


def _functional_run(tx: Any, grads: np.ndarray) -> np.ndarray:
    def body(carry: Any, g: jax.Array) -> tuple[Any, None]:
        params, state = carry
        updates, state = tx.update(g, state, params)
        return (optax.apply_updates(params, updates), state), None

    params = jnp.zeros(grads.shape[1:])
    (params, _), _ = jax.jit(lambda ps, gs: jax.lax.scan(body, (ps, tx.init(ps)), gs))(
        params, jnp.asarray(grads))
    return np.asarray(params)


@pytest.mark.parametrize("face", ["fx.rmsprop", "optax.sgd"])
def test_a_twin_trains_as_the_stateful_optimizer_with_its_scheduler(face: str) -> None:
    grads = np.random.default_rng(0).standard_normal((24, 5)).astype(np.float32)
    if face == "fx.rmsprop":
        schedule = S.one_cycle_lr(None, 0.05, total_steps=24)
        stateful = _stateful_run(lambda ps: fx.RMSprop(ps, lr=0.01, momentum=0.9),
                                 lambda o: F.OneCycleLR(o, 0.05, total_steps=24,
                                                        cycle_momentum=False), grads)
        functional = _functional_run(fx.rmsprop(lr=schedule, momentum=0.9), grads)
    else:
        schedule = S.cosine_annealing_lr(0.1, T_max=24)
        stateful = _stateful_run(lambda ps: fx.SGD(ps, lr=0.1, momentum=0.9),
                                 lambda o: F.CosineAnnealingLR(o, T_max=24), grads)
        functional = _functional_run(optax.sgd(learning_rate=schedule, momentum=0.9), grads)
    # float32 on both sides; the lrs differ by the twin's float32 rounding, which the
    # 24 steps carry into θ: measured ≤ 4e-7 relative.
    np.testing.assert_allclose(functional, stateful, rtol=2e-6, atol=0)


# ------------------------------------------------------------------ properties and bad input


@given(T_max=st.integers(1, 12),
       eta_min=st.floats(0.0, 0.05), total=st.integers(10, 40), pct=st.floats(0.12, 0.45),
       up=st.integers(1, 6), down=st.integers(1, 6))
def test_random_hyperparameters_twins_follow_the_schedulers(
    T_max: int, eta_min: float, total: int, pct: float, up: int, down: int,
) -> None:
    pairs = [
        (S.cosine_annealing_lr(BASE_LR, T_max, eta_min),
         lambda o: F.CosineAnnealingLR(o, T_max, eta_min), 30),
        (S.one_cycle_lr(None, 0.3, total_steps=total, pct_start=pct),
         lambda o: F.OneCycleLR(o, 0.3, total_steps=total, pct_start=pct), total),
        (S.cyclic_lr(0.01, 0.1, up, down), lambda o: F.CyclicLR(o, 0.01, 0.1, up, down), 25),
    ]
    with jax.enable_x64(True):
        for schedule, build, steps in pairs:
            np.testing.assert_allclose(_twin_lrs(schedule, steps), _scheduler_lrs(build, steps),
                                       rtol=RTOL_TWIN_F64, atol=ATOL_TWIN_F64)


BAD: dict[str, tuple[Callable[[], Any], str]] = {
    "base-lr": (lambda: S.step_lr(-0.1, 2), r"Invalid base_lr value: -0.1"),
    "step-size": (lambda: S.step_lr(0.1, 0), r"Invalid step_size value: 0 \(expected an integer"),
    "gamma": (lambda: S.exponential_lr(0.1, 0.0), r"Invalid gamma value: 0.0"),
    "milestones": (lambda: S.multi_step_lr(0.1, [4, 2]), r"Invalid milestones value: \[4, 2\]"),
    "factor": (lambda: S.constant_lr(0.1, factor=2.0), r"Invalid factor value: 2.0"),
    "total-iters": (lambda: S.linear_lr(0.1, total_iters=0), r"Invalid total_iters value: 0"),
    "power": (lambda: S.polynomial_lr(0.1, power=-2.0), r"Invalid power value: -2.0"),
    "t-max": (lambda: S.cosine_annealing_lr(0.1, T_max=0), r"Invalid T_max value: 0"),
    "swa-lr": (lambda: S.swalr(0.1, swa_lr=-1.0), r"Invalid swa_lr value: -1.0"),
    "anneal-epochs": (lambda: S.swalr(0.1, 0.01, anneal_epochs=-1),
                      r"Invalid anneal_epochs value: -1"),
    "anneal-strategy": (lambda: S.swalr(0.1, 0.01, anneal_strategy="cosine"),
                        r"Invalid anneal_strategy value: 'cosine'"),
    "t-0": (lambda: S.cosine_annealing_warm_restarts(0.1, T_0=-1), r"Invalid T_0 value: -1"),
    "mode": (lambda: S.cyclic_lr(0.1, 1.0, mode="saw"), r"Invalid mode value: 'saw'"),
    "total-steps": (lambda: S.one_cycle_lr(None, 0.5, total_steps=2),
                    r"Invalid total_steps value: 2 \(too small"),
    "d-model": (lambda: S.noam_scheduler(None, d_model=-4, warmup_steps=3),
                r"Invalid d_model value: -4"),
    "lambda": (lambda: S.lambda_lr(0.1, 3.0), r"Invalid lr_lambda value: 3.0"),
    "sequential-milestones": (lambda: S.sequential_lr(0.1, [S.step_lr], [2]),
                              r"Invalid milestones value: \[2\] \(expected 0 milestone"),
    "sequential-empty": (lambda: S.sequential_lr(0.1, [], []), r"Invalid schedulers value: \[\]"),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_arguments_raise_naming_the_argument(name: str) -> None:
    build, match = BAD[name]
    with pytest.raises(ValueError, match=match):
        build()


def test_docs_list_every_scheduler_with_its_twin() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "schedulers.md").read_text()
    for name in F.__all__:
        assert f"`{name}`" in text, name
    for name in S.__all__:
        assert f"`{name}`" in text, name
