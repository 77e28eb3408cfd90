"""``fx.lr_scheduler``: the same lr (and momentum) sequence as ``torch.optim.lr_scheduler``.

Every scheduler runs side by side on a torch optimizer and on an fx optimizer, each
with two param groups of different lrs, and every step must give the same lrs,
``get_last_lr()``, momentum or betas, float for float (Python floats in float64:
both sides evaluate the same formulas in the same order). State dicts round-trip,
torch's resume recipe continues the run exactly, torch's own scheduler state dicts
load, every bad argument is a ``ValueError`` that changes nothing, and a scheduled
run compiles its step once. NoamScheduler (Lucid's, not torch's) is checked
against its formula.
"""

from __future__ import annotations

import copy
import itertools
import math
import pickle
from collections.abc import Callable
from typing import Any, NamedTuple

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given

import lucid_fx as fx
from lucid_fx import lr_scheduler as F
from lucid_fx._src.stateful import steps as packed_step

torch = pytest.importorskip("torch", reason="parity is checked against real torch "
                                            "(pip install 'lucid_fx[test]')")
T = torch.optim.lr_scheduler
pytestmark = pytest.mark.filterwarnings(
    r"ignore:Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`\. In PyTorch")

LRS = (0.1, 0.03)  # the two groups' lrs


def _torch_optimizer(kind: str) -> Any:
    params = [torch.zeros(1, requires_grad=True) for _ in LRS]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, LRS)]
    if kind == "adam":
        return torch.optim.Adam(groups, lr=LRS[0])
    return torch.optim.SGD(groups, lr=LRS[0], momentum=0.9)


def _fx_optimizer(kind: str) -> fx.Optimizer:
    params = [fx.Parameter(jnp.zeros(1)) for _ in LRS]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, LRS)]
    if kind == "adam":
        return fx.Adam(groups, lr=LRS[0])
    return fx.SGD(groups, lr=LRS[0], momentum=0.9)


def _halving(epoch: int) -> float:
    return 0.5 ** (epoch // 4)


class Case(NamedTuple):
    """A scheduler built the same way from either module (``m``) over an optimizer."""

    build: Callable[[Any, Any], Any]
    steps: int
    optimizer: str = "sgd"
    metrics: tuple[float, ...] | None = None  # ReduceLROnPlateau's step arguments


PLATEAU_METRICS = (1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.8, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85,
                   0.7, 0.7, 0.7, 0.7, 0.7)
CASES: dict[str, Case] = {
    "lambda": Case(lambda m, o: m.LambdaLR(o, [lambda e: 0.9**e, lambda e: 1 / (1 + e)]), 20),
    "lambda-one": Case(lambda m, o: m.LambdaLR(o, _halving), 12),
    "multiplicative": Case(lambda m, o: m.MultiplicativeLR(o, lambda e: 0.95), 20),
    "step": Case(lambda m, o: m.StepLR(o, 3, gamma=0.5), 20),
    "multistep": Case(lambda m, o: m.MultiStepLR(o, [2, 5, 9], gamma=0.3), 20),
    "constant": Case(lambda m, o: m.ConstantLR(o, factor=0.3, total_iters=4), 10),
    "linear": Case(lambda m, o: m.LinearLR(o, start_factor=0.2, end_factor=0.9, total_iters=7),
                   12),
    "linear-down": Case(lambda m, o: m.LinearLR(o, start_factor=1.0, end_factor=0.0,
                                                total_iters=5), 8),
    "exponential": Case(lambda m, o: m.ExponentialLR(o, 0.9), 30),
    "polynomial": Case(lambda m, o: m.PolynomialLR(o, total_iters=8, power=2.0), 12),
    "cosine": Case(lambda m, o: m.CosineAnnealingLR(o, T_max=6, eta_min=0.001), 30),
    "cosine-to-zero": Case(lambda m, o: m.CosineAnnealingLR(o, T_max=7), 30),
    "warm-restarts": Case(lambda m, o: m.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2,
                                                                      eta_min=1e-3), 30),
    "warm-restarts-1": Case(lambda m, o: m.CosineAnnealingWarmRestarts(o, T_0=4), 14),
    "cyclic": Case(lambda m, o: m.CyclicLR(o, 0.01, [0.1, 0.2], step_size_up=4,
                                           step_size_down=3), 30),
    "cyclic-triangular2": Case(lambda m, o: m.CyclicLR(o, 0.01, 0.1, step_size_up=3,
                                                       mode="triangular2"), 30),
    "cyclic-exp-range-adam": Case(lambda m, o: m.CyclicLR(o, 0.01, 0.1, step_size_up=3,
                                                          mode="exp_range", gamma=0.97), 30,
                                  "adam"),
    "cyclic-scale-fn": Case(lambda m, o: m.CyclicLR(o, 0.01, 0.1, step_size_up=3,
                                                    scale_fn=lambda x: 0.9**x,
                                                    scale_mode="iterations",
                                                    base_momentum=[0.8, 0.7]), 30),
    "cyclic-no-momentum": Case(lambda m, o: m.CyclicLR(o, 0.01, 0.1, step_size_up=2,
                                                       cycle_momentum=False), 10),
    "onecycle": Case(lambda m, o: m.OneCycleLR(o, [0.5, 0.2], total_steps=20), 20),
    "onecycle-linear-3-phase-adam": Case(
        lambda m, o: m.OneCycleLR(o, 0.5, epochs=4, steps_per_epoch=5, anneal_strategy="linear",
                                  three_phase=True), 20, "adam"),
    "onecycle-no-momentum": Case(lambda m, o: m.OneCycleLR(o, 0.5, total_steps=12, pct_start=0.25,
                                                           cycle_momentum=False), 12),
    "sequential": Case(lambda m, o: m.SequentialLR(
        o, [m.LinearLR(o, 0.1, total_iters=3), m.CosineAnnealingLR(o, T_max=10)],
        milestones=[3]), 20),
    "sequential-3": Case(lambda m, o: m.SequentialLR(
        o, [m.ConstantLR(o, 0.5, total_iters=2), m.ExponentialLR(o, 0.8), m.StepLR(o, 2, 0.5)],
        milestones=[2, 6]), 20),
    "chained": Case(lambda m, o: m.ChainedScheduler(
        [m.ConstantLR(o, 0.5, total_iters=3), m.ExponentialLR(o, 0.9)]), 20),
    "plateau": Case(lambda m, o: m.ReduceLROnPlateau(o, patience=2, factor=0.5, cooldown=1,
                                                     threshold=0.01), 0, metrics=PLATEAU_METRICS),
    "plateau-max-abs": Case(lambda m, o: m.ReduceLROnPlateau(
        o, mode="max", threshold_mode="abs", patience=1, min_lr=[0.05, 0.001]), 0,
        metrics=tuple(-x for x in PLATEAU_METRICS)),
}


def _optimizer_step(optimizer: Any) -> None:
    """An fx step without gradients (nothing moves), so the scheduler has seen one.

    The lr sequence does not depend on optimizer steps, so runs take one, to keep
    the order warning quiet. torch's optimizer is not stepped (its first step
    costs seconds here, a lazy import): its order warning is filtered for this
    module (``pytestmark``); ours is tested.
    """
    if isinstance(optimizer, fx.Optimizer):
        optimizer.step()


def _step(scheduler: Any, case: Case, t: int) -> None:
    if case.metrics is not None:
        scheduler.step(case.metrics[t])
    else:
        scheduler.step()


def _steps(case: Case) -> int:
    return len(case.metrics) if case.metrics is not None else case.steps


def _observed(optimizer: Any, scheduler: Any) -> tuple[Any, ...]:
    """What the run shows at one moment: the groups' lrs and momenta, and get_last_lr()."""
    groups = [(g["lr"], g.get("momentum"), g.get("betas"), g.get("initial_lr"))
              for g in optimizer.param_groups]
    return tuple(groups), tuple(scheduler.get_last_lr())


def _run(module: Any, case: Case, steps: int | None = None) -> list[tuple[Any, ...]]:
    make = _torch_optimizer if module is T else _fx_optimizer
    optimizer = make(case.optimizer)
    scheduler = case.build(module, optimizer)
    _optimizer_step(optimizer)
    seen = [_observed(optimizer, scheduler)]
    for t in range(_steps(case) if steps is None else steps):
        _step(scheduler, case, t)
        seen.append(_observed(optimizer, scheduler))
    return seen


def _as_floats(seen: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """torch's betas come back as tuples, ours too; everything compared is a Python number."""
    return [(tuple((lr, m, None if b is None else tuple(b), i) for lr, m, b, i in groups), last)
            for groups, last in seen]


# ------------------------------------------------------------------ parity with torch


@pytest.mark.parametrize("name", CASES)
def test_sequence_equals_torch_float_for_float_and_resumes_exactly(name: str) -> None:
    """Per step: lrs, momenta and get_last_lr() equal torch's; state dicts hold torch's keys;
    torch's resume recipe (rebuild both, load both state dicts) continues the run exactly."""
    case = CASES[name]
    ours, theirs = _as_floats(_run(F, case)), _as_floats(_run(T, case))
    for t, (mine, torch_seen) in enumerate(zip(ours, theirs)):
        assert mine == torch_seen, f"{name}: step {t} differs: {mine} vs torch {torch_seen}"
    assert len(ours) == len(theirs) == _steps(case) + 1
    # The run did schedule something: the lr of group 0 is not constant.
    assert len({groups[0][0] for groups, _ in ours}) > 1
    torch_scheduler = case.build(T, _torch_optimizer(case.optimizer))
    assert set(case.build(F, _fx_optimizer(case.optimizer)).state_dict()) == set(
        torch_scheduler.state_dict())
    first = _steps(case) // 2
    assert _resume(case, first) == ours[first:]


def _noam(d_model: float, warmup: float, t: int) -> float:
    s = max(t, 1)
    return d_model**-0.5 * min(s**-0.5, s * warmup**-1.5)


def test_noam_scheduler_follows_lucids_formula_for_every_group() -> None:
    optimizer = _fx_optimizer("adam")
    scheduler = F.NoamScheduler(optimizer, d_model=64, warmup_steps=5)
    for t in range(1, 15):
        _optimizer_step(optimizer)
        scheduler.step()
        expected = _noam(64, 5, t)
        assert [g["lr"] for g in optimizer.param_groups] == [expected, expected]
        assert scheduler.get_last_lr() == [expected, expected]
    # It peaks at warmup_steps.
    lrs = [_noam(64, 5, t) for t in range(1, 15)]
    assert max(lrs) == _noam(64, 5, 5)


@pytest.mark.parametrize(("name", "epochs"), [
    ("step", [3, 7, 2]), ("multistep", [6, 1]), ("exponential", [4]), ("cosine", [9, 2]),
    ("constant", [5, 1]), ("linear", [3, 9]), ("polynomial", [5, 20]),
])
def test_step_with_epoch_uses_torchs_closed_form_and_warns(name: str, epochs: list[int]) -> None:
    case = CASES[name]
    runs = []
    for module, make in ((F, _fx_optimizer), (T, _torch_optimizer)):
        optimizer = make(case.optimizer)
        scheduler = case.build(module, optimizer)
        seen = []
        for epoch in epochs:
            _optimizer_step(optimizer)
            with pytest.warns(UserWarning, match="epoch parameter"):
                scheduler.step(epoch)
            seen.append((scheduler.last_epoch, [g["lr"] for g in optimizer.param_groups]))
        runs.append(seen)
    assert runs[0] == runs[1]


def test_warm_restarts_takes_fractional_epochs_as_torch() -> None:
    runs = []
    for module, make in ((F, _fx_optimizer), (T, _torch_optimizer)):
        optimizer = make("sgd")
        scheduler = module.CosineAnnealingWarmRestarts(optimizer, T_0=2, T_mult=3)
        seen = []
        for epoch in (0.5, 1.25, 2.0, 3.75, 9.5, 20.0):
            _optimizer_step(optimizer)
            scheduler.step(epoch)
            seen.append((scheduler.last_epoch, scheduler.T_cur, scheduler.T_i,
                         scheduler.get_last_lr()))
        runs.append(seen)
    assert runs[0] == runs[1]


@given(gamma=st.floats(0.05, 1.5), step_size=st.integers(1, 6), T_max=st.integers(1, 9),
       eta_min=st.floats(0.0, 0.01), pct=st.floats(0.1, 0.45), total=st.integers(12, 30),
       factor=st.floats(0.05, 1.0))
def test_random_hyperparameters_keep_exact_torch_parity(
    gamma: float, step_size: int, T_max: int, eta_min: float,
    pct: float, total: int, factor: float,
) -> None:
    cases = [
        Case(lambda m, o: m.StepLR(o, step_size, gamma=gamma), 15),
        Case(lambda m, o: m.ExponentialLR(o, gamma), 15),
        Case(lambda m, o: m.CosineAnnealingLR(o, T_max=T_max, eta_min=eta_min), 25),
        Case(lambda m, o: m.OneCycleLR(o, 0.4, total_steps=total, pct_start=pct), total),
        Case(lambda m, o: m.ConstantLR(o, factor=factor, total_iters=step_size), 10),
        Case(lambda m, o: m.CyclicLR(o, 0.01, 0.1, step_size_up=step_size,
                                     step_size_down=T_max), 25),
    ]
    for case in cases:
        assert _as_floats(_run(F, case)) == _as_floats(_run(T, case))


# ------------------------------------------------------------------ state dicts and resuming


def _resume(case: Case, first: int) -> list[tuple[Any, ...]]:
    """Runs ``first`` steps, saves both state dicts (pickled), rebuilds the optimizer and
    the scheduler, loads both (torch's recipe) and runs the rest."""
    optimizer = _fx_optimizer(case.optimizer)
    scheduler = case.build(F, optimizer)
    _optimizer_step(optimizer)
    for t in range(first):
        _step(scheduler, case, t)
    saved = pickle.dumps((optimizer.state_dict(), scheduler.state_dict()))
    optimizer = _fx_optimizer(case.optimizer)
    scheduler = case.build(F, optimizer)
    optimizer_sd, scheduler_sd = pickle.loads(saved)
    optimizer.load_state_dict(optimizer_sd)
    scheduler.load_state_dict(scheduler_sd)
    seen = [_observed(optimizer, scheduler)]
    for t in range(first, _steps(case)):
        _step(scheduler, case, t)
        seen.append(_observed(optimizer, scheduler))
    return _as_floats(seen)


@pytest.mark.parametrize("name", ["step", "cosine", "cyclic", "onecycle", "sequential",
                                  "warm-restarts", "lambda", "plateau"])
def test_a_torch_scheduler_state_dict_loads_and_continues_as_torch(name: str) -> None:
    case = CASES[name]
    first = _steps(case) // 2
    torch_optimizer = _torch_optimizer(case.optimizer)
    torch_scheduler = case.build(T, torch_optimizer)
    fx_optimizer = _fx_optimizer(case.optimizer)
    for t in range(first):
        _step(torch_scheduler, case, t)
    # The fx optimizer takes the torch groups' values (as a torch state dict would give).
    for mine, theirs in zip(fx_optimizer.param_groups, torch_optimizer.param_groups):
        mine.update({k: v for k, v in theirs.items() if k != "params"})
    scheduler = case.build(F, fx_optimizer)
    for mine, theirs in zip(fx_optimizer.param_groups, torch_optimizer.param_groups):
        mine.update({k: v for k, v in theirs.items() if k != "params"})
    scheduler.load_state_dict(copy.deepcopy(torch_scheduler.state_dict()))
    for t in range(first, _steps(case)):
        _step(torch_scheduler, case, t)
        _step(scheduler, case, t)
        assert _as_floats([_observed(fx_optimizer, scheduler)]) == _as_floats(
            [_observed(torch_optimizer, torch_scheduler)])


def test_scheduler_keys_survive_optimizer_steps_and_state_dicts() -> None:
    optimizer = _fx_optimizer("sgd")
    p = optimizer.param_groups[0]["params"][0]
    scheduler = F.OneCycleLR(optimizer, 0.5, total_steps=10)
    for _ in range(3):
        p.grad = jnp.ones(1)
        optimizer.step()
        scheduler.step()
    keys = {"initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum"}
    assert all(keys <= set(g) for g in optimizer.param_groups)
    sd = optimizer.state_dict()
    assert all(keys <= set(g) for g in sd["param_groups"])
    fresh = _fx_optimizer("sgd")  # no scheduler: the keys come from the state dict alone
    fresh.load_state_dict(sd)
    for mine, saved in zip(fresh.param_groups, sd["param_groups"]):
        assert {k: mine[k] for k in keys} == {k: saved[k] for k in keys}
    fresh.param_groups[0]["params"][0].grad = jnp.ones(1)
    fresh.step()  # extra keys are carried, not passed to the transform
    assert "initial_lr" in fresh.param_groups[0]


def test_a_group_may_start_with_initial_lr_but_not_a_misspelt_key() -> None:
    p = fx.Parameter(jnp.zeros(1))
    optimizer = fx.SGD([{"params": [p], "lr": 0.2, "initial_lr": 0.4}], lr=0.1)
    scheduler = F.StepLR(optimizer, 2, last_epoch=5)  # resuming needs initial_lr
    assert scheduler.base_lrs == [0.4]
    with pytest.raises(ValueError, match=r"unknown hyper-parameter\(s\) \['lr_max'\]"):
        fx.SGD([{"params": [fx.Parameter(jnp.zeros(1))], "lr_max": 0.4}], lr=0.1)


# ------------------------------------------------------------------ no recompiles


@pytest.mark.parametrize("kind", ["sgd", "rmsprop", "adam"])
def test_a_scheduled_run_compiles_its_step_once(kind: str) -> None:
    """100 scheduled steps, the lr (and momentum or betas) new at each: one compilation."""
    shape = {"sgd": (7, 3), "rmsprop": (5, 11), "adam": (3, 13)}[kind]  # no other test's
    p = fx.Parameter(jnp.zeros(shape))
    if kind == "sgd":
        optimizer: fx.Optimizer = fx.SGD([p], lr=0.1)
        scheduler: Any = F.OneCycleLR(optimizer, 0.5, total_steps=100, cycle_momentum=False)
    elif kind == "rmsprop":
        optimizer = fx.RMSprop([p], lr=0.01)
        scheduler = F.CyclicLR(optimizer, 0.001, 0.01, step_size_up=10)  # cycles momentum
    else:
        optimizer = fx.Adam([p], lr=0.01)
        scheduler = F.OneCycleLR(optimizer, 0.01, total_steps=100)  # cycles betas[0]
    before = packed_step.compiled_step("cpu")._cache_size()
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        p.grad = jnp.ones(shape)
        optimizer.step()
        scheduler.step()
    assert packed_step.compiled_step("cpu")._cache_size() - before == 1
    assert sum(a != b for a, b in itertools.pairwise(lrs)) == 99  # a new lr at every step
    if kind == "sgd":
        # Each step used its scheduled lr: plain SGD on g = 1 moves θ by -Σ lr_t (float32
        # sums in two orders: measured 8e-8 apart; a run one lr behind is off by 8e-4).
        expected = -np.sum(np.asarray(lrs, np.float32))
        np.testing.assert_allclose(np.asarray(p.value), np.full(shape, expected), rtol=1e-6)


# ------------------------------------------------------------------ warnings and misuse


def test_stepping_the_scheduler_before_the_optimizer_warns() -> None:
    optimizer = _fx_optimizer("sgd")
    scheduler = F.StepLR(optimizer, 2)
    with pytest.warns(UserWarning, match=r"before `optimizer.step\(\)`"):
        scheduler.step()


def test_get_lr_outside_step_warns_and_changes_nothing() -> None:
    optimizer = _fx_optimizer("sgd")
    scheduler = F.CyclicLR(optimizer, 0.01, 0.1, step_size_up=2)
    before = copy.deepcopy(_groups(optimizer))
    with pytest.warns(UserWarning, match="get_last_lr"):
        scheduler.get_lr()
    assert _groups(optimizer) == before


def test_under_jit_the_scheduler_raises_and_nothing_changes() -> None:
    optimizer = _fx_optimizer("sgd")
    scheduler = F.StepLR(optimizer, 1, gamma=0.5)
    optimizer.step()

    @jax.jit
    def bad(x: jax.Array) -> jax.Array:
        scheduler.step()
        return x

    with pytest.raises(RuntimeError, match=r"StepLR.step\(\) was called under a JAX"):
        bad(jnp.ones(()))
    assert scheduler.last_epoch == 0 and _lrs(optimizer) == list(LRS)

    @jax.jit
    def build(x: jax.Array) -> jax.Array:
        F.ExponentialLR(optimizer, 0.5)
        return x

    with pytest.raises(RuntimeError, match=r"ExponentialLR\(...\) was called under a JAX"):
        build(jnp.ones(()))
    plateau = F.ReduceLROnPlateau(optimizer)
    with pytest.raises(RuntimeError, match="ReduceLROnPlateau.step"):
        jax.jit(lambda loss: plateau.step(loss))(jnp.ones(()))
    assert plateau.last_epoch == 0


def _groups(optimizer: Any) -> list[dict[str, Any]]:
    return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]


def _lrs(optimizer: Any) -> list[Any]:
    return [g["lr"] for g in optimizer.param_groups]


def test_stepping_onecycle_past_total_steps_raises_torchs_error_and_changes_nothing() -> None:
    for module, make in ((F, _fx_optimizer), (T, _torch_optimizer)):
        optimizer = make("sgd")
        scheduler = module.OneCycleLR(optimizer, 0.5, total_steps=10)
        for _ in range(10):
            _optimizer_step(optimizer)
            scheduler.step()
        before, epoch = copy.deepcopy(_groups(optimizer)), scheduler.last_epoch
        with pytest.raises(ValueError, match=r"^Tried to step 11 times\. The specified number "
                                             r"of total steps is 10$"):
            scheduler.step()
        if module is F:  # torch has advanced last_epoch by then; we change nothing
            assert (_groups(optimizer), scheduler.last_epoch) == (before, epoch)
            assert scheduler._step_count == 11


def test_a_failing_lambda_changes_nothing() -> None:
    optimizer = _fx_optimizer("sgd")
    before = copy.deepcopy(_groups(optimizer))

    def fails_late(epoch: int) -> float:
        if epoch >= 2:
            raise ZeroDivisionError("boom")
        return 1.0

    with pytest.raises(ZeroDivisionError):
        F.LambdaLR(optimizer, lambda epoch: 1 / 0)
    assert _groups(optimizer) == before  # not even initial_lr was left behind
    scheduler = F.LambdaLR(optimizer, fails_late)
    optimizer.step()
    scheduler.step()
    state = scheduler.state_dict(), copy.deepcopy(_groups(optimizer))
    with pytest.raises(ZeroDivisionError):
        scheduler.step()
    assert (scheduler.state_dict(), _groups(optimizer)) == state


# ------------------------------------------------------------------ bad input


class Bad(NamedTuple):
    build: Callable[[fx.Optimizer], Any]
    error: type[Exception]
    match: str
    optimizer: str = "sgd"
    # The child schedulers of a SequentialLR write initial_lr, legitimately: preset it.
    preset_initial_lr: bool = False


def _other_optimizer_scheduler(o: fx.Optimizer) -> Any:
    return F.SequentialLR(o, [F.StepLR(o, 2), F.StepLR(_fx_optimizer("sgd"), 2)], [3])


def _adagrad(o: fx.Optimizer) -> fx.Optimizer:
    return fx.Adagrad(o.param_groups[0]["params"])


BAD: dict[str, Bad] = {
    "step-size-negative": Bad(lambda o: F.StepLR(o, -1), ValueError,
                              r"Invalid step_size value: -1 \(expected an integer >= 1\)"),
    "step-size-zero": Bad(lambda o: F.StepLR(o, 0), ValueError, r"Invalid step_size value: 0"),
    "step-size-float": Bad(lambda o: F.StepLR(o, 2.5), ValueError, r"Invalid step_size value: 2.5"),
    "step-gamma-zero": Bad(lambda o: F.StepLR(o, 2, gamma=0.0), ValueError,
                           r"Invalid gamma value: 0.0 \(expected a finite number > 0.0\)"),
    "exponential-gamma-negative": Bad(lambda o: F.ExponentialLR(o, -0.5), ValueError,
                                      r"Invalid gamma value: -0.5"),
    "exponential-gamma-nan": Bad(lambda o: F.ExponentialLR(o, math.nan), ValueError,
                                 r"Invalid gamma value: nan"),
    "multistep-decreasing": Bad(lambda o: F.MultiStepLR(o, [5, 3]), ValueError,
                                r"Invalid milestones value: \[5, 3\] \(expected strictly "
                                r"increasing integers >= 0\)"),
    "multistep-repeated": Bad(lambda o: F.MultiStepLR(o, [2, 2]), ValueError,
                              r"Invalid milestones value: \[2, 2\]"),
    "multistep-negative": Bad(lambda o: F.MultiStepLR(o, [-1, 4]), ValueError,
                              r"Invalid milestones value: \[-1, 4\]"),
    "multistep-not-a-list": Bad(lambda o: F.MultiStepLR(o, 3), ValueError,
                                r"Invalid milestones value: 3 \(expected a list of integers\)"),
    "multistep-gamma": Bad(lambda o: F.MultiStepLR(o, [3], gamma=0), ValueError,
                           r"Invalid gamma value: 0"),
    "constant-factor-zero": Bad(lambda o: F.ConstantLR(o, factor=0.0), ValueError,
                                r"Invalid factor value: 0.0 \(expected a finite number > 0.0 "
                                r"and <= 1.0\)"),
    "constant-factor-big": Bad(lambda o: F.ConstantLR(o, factor=1.5), ValueError,
                               r"Invalid factor value: 1.5"),
    "constant-total-iters": Bad(lambda o: F.ConstantLR(o, total_iters=0), ValueError,
                                r"Invalid total_iters value: 0"),
    "linear-start": Bad(lambda o: F.LinearLR(o, start_factor=0), ValueError,
                        r"Invalid start_factor value: 0"),
    "linear-end": Bad(lambda o: F.LinearLR(o, end_factor=1.5), ValueError,
                      r"Invalid end_factor value: 1.5"),
    "linear-total-iters": Bad(lambda o: F.LinearLR(o, total_iters=-2), ValueError,
                              r"Invalid total_iters value: -2"),
    "polynomial-total-iters": Bad(lambda o: F.PolynomialLR(o, total_iters=0), ValueError,
                                  r"Invalid total_iters value: 0"),
    "polynomial-power": Bad(lambda o: F.PolynomialLR(o, power=-1.0), ValueError,
                            r"Invalid power value: -1.0"),
    "cosine-t-max-zero": Bad(lambda o: F.CosineAnnealingLR(o, T_max=0), ValueError,
                             r"Invalid T_max value: 0 \(expected a finite number > 0.0\)"),
    "cosine-t-max-negative": Bad(lambda o: F.CosineAnnealingLR(o, T_max=-3), ValueError,
                                 r"Invalid T_max value: -3"),
    "cosine-eta-min": Bad(lambda o: F.CosineAnnealingLR(o, T_max=3, eta_min=-0.1), ValueError,
                          r"Invalid eta_min value: -0.1"),
    "restarts-t0": Bad(lambda o: F.CosineAnnealingWarmRestarts(o, T_0=0), ValueError,
                       r"Invalid T_0 value: 0"),
    "restarts-t0-float": Bad(lambda o: F.CosineAnnealingWarmRestarts(o, T_0=2.5), ValueError,
                             r"Invalid T_0 value: 2.5"),
    "restarts-t-mult": Bad(lambda o: F.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=0),
                           ValueError, r"Invalid T_mult value: 0"),
    "cyclic-lengths": Bad(lambda o: F.CyclicLR(o, [0.1, 0.2, 0.3], 1.0), ValueError,
                          r"Invalid base_lr value: \[0.1, 0.2, 0.3\] \(3 values; the optimizer "
                          r"has 2 param groups"),
    "cyclic-max-lr": Bad(lambda o: F.CyclicLR(o, 0.1, -1.0), ValueError,
                         r"Invalid max_lr value: -1.0"),
    "cyclic-step-size-up": Bad(lambda o: F.CyclicLR(o, 0.1, 1.0, step_size_up=0), ValueError,
                               r"Invalid step_size_up value: 0"),
    "cyclic-mode": Bad(lambda o: F.CyclicLR(o, 0.1, 1.0, mode="sawtooth"), ValueError,
                       r"Invalid mode value: 'sawtooth' \(expected one of \['triangular', "
                       r"'triangular2', 'exp_range'\]\)"),
    "cyclic-scale-mode": Bad(lambda o: F.CyclicLR(o, 0.1, 1.0, scale_fn=abs, scale_mode="epoch"),
                             ValueError, r"Invalid scale_mode value: 'epoch'"),
    "cyclic-no-momentum-to-cycle": Bad(lambda o: F.CyclicLR(_adagrad(o), 0.1, 1.0), ValueError,
                                       r"Invalid cycle_momentum value: True \(Adagrad has "
                                       r"neither momentum nor betas"),
    "cyclic-beta1-one": Bad(lambda o: F.CyclicLR(o, 0.1, 1.0, max_momentum=1.0), ValueError,
                            r"Invalid max_momentum value: 1.0 \(expected a finite number >= 0.0 "
                            r"and < 1.0\)", "adam"),
    "onecycle-total-zero": Bad(lambda o: F.OneCycleLR(o, 0.5, total_steps=0), ValueError,
                               r"Invalid total_steps value: 0 \(expected an integer >= 1\)"),
    "onecycle-total-too-small": Bad(lambda o: F.OneCycleLR(o, 0.5, total_steps=3), ValueError,
                                    r"Invalid total_steps value: 3 \(too small or pct_start=0.3 "
                                    r"out of range for 3 total steps"),
    "onecycle-steps-per-epoch-too-small": Bad(
        lambda o: F.OneCycleLR(o, 0.5, epochs=1, steps_per_epoch=2), ValueError,
        r"Invalid steps_per_epoch value: 2 \(too small"),
    "onecycle-pct-one": Bad(lambda o: F.OneCycleLR(o, 0.5, total_steps=50, pct_start=1.0),
                            ValueError, r"Invalid total_steps value: 50 \(too small or "
                                        r"pct_start=1.0 out of range"),
    "onecycle-no-length": Bad(lambda o: F.OneCycleLR(o, 0.5), ValueError,
                              r"OneCycleLR needs total_steps, or epochs and steps_per_epoch"),
    "onecycle-epochs": Bad(lambda o: F.OneCycleLR(o, 0.5, epochs=0, steps_per_epoch=10),
                           ValueError, r"Invalid epochs value: 0"),
    "onecycle-pct-start": Bad(lambda o: F.OneCycleLR(o, 0.5, total_steps=10, pct_start=1.5),
                              ValueError, r"Invalid pct_start value: 1.5"),
    "onecycle-anneal": Bad(lambda o: F.OneCycleLR(o, 0.5, total_steps=10, anneal_strategy="exp"),
                           ValueError, r"Invalid anneal_strategy value: 'exp'"),
    "onecycle-div-factor": Bad(lambda o: F.OneCycleLR(o, 0.5, total_steps=10, div_factor=0),
                               ValueError, r"Invalid div_factor value: 0"),
    "onecycle-three-phase": Bad(lambda o: F.OneCycleLR(o, 0.5, total_steps=10, three_phase="no"),
                                ValueError, r"Invalid three_phase value: 'no'"),
    "onecycle-max-lr": Bad(lambda o: F.OneCycleLR(o, [0.5, -0.1], total_steps=10), ValueError,
                           r"Invalid max_lr value: -0.1"),
    "lambda-not-callable": Bad(lambda o: F.LambdaLR(o, 0.5), ValueError,
                               r"Invalid lr_lambda value: 0.5 \(expected a function"),
    "lambda-count": Bad(lambda o: F.MultiplicativeLR(o, [abs]), ValueError,
                        r"Invalid lr_lambda value: 1 functions for 2 param groups"),
    "last-epoch": Bad(lambda o: F.StepLR(o, 2, last_epoch=-2), ValueError,
                      r"Invalid last_epoch value: -2 \(expected an integer >= -1\)"),
    "resume-without-initial-lr": Bad(lambda o: F.StepLR(o, 2, last_epoch=3), KeyError,
                                     r"param 'initial_lr' is not specified in param_groups\[0\]"),
    "torch-optimizer": Bad(lambda o: F.StepLR(_torch_optimizer("sgd"), 2), TypeError,
                           r"StepLR needs a stateful lucid_fx optimizer \(an fx.Optimizer such as "
                           r"fx.SGD.*got SGD\. For the functional face .* "
                           r"fx.schedules.step_lr\(base_lr, ...\)"),
    "not-an-optimizer": Bad(lambda o: F.ReduceLROnPlateau([1, 2]), TypeError,
                            r"ReduceLROnPlateau needs a stateful lucid_fx optimizer .*got list"),
    "sequential-milestones": Bad(lambda o: F.SequentialLR(o, [F.StepLR(o, 2)], [3]), ValueError,
                                 r"Invalid milestones value: \[3\] \(expected 0 milestone\(s\)",
                                 preset_initial_lr=True),
    "sequential-other-optimizer": Bad(_other_optimizer_scheduler, ValueError,
                                      r"schedulers\[1\] \(StepLR\) has another",
                                      preset_initial_lr=True),
    "sequential-plateau": Bad(lambda o: F.SequentialLR(o, [F.ReduceLROnPlateau(o)], []),
                              ValueError, r"does not support ReduceLROnPlateau"),
    "sequential-not-a-scheduler": Bad(lambda o: F.SequentialLR(o, [F.StepLR(o, 2), "x"], [2]),
                                      TypeError, r"schedulers\[1\] is a str",
                                      preset_initial_lr=True),
    "chained-empty": Bad(lambda o: F.ChainedScheduler([]), ValueError,
                         r"Invalid schedulers value: \[\] \(expected a non-empty list"),
    "plateau-mode": Bad(lambda o: F.ReduceLROnPlateau(o, mode="avg"), ValueError,
                        r"Invalid mode value: 'avg'"),
    "plateau-factor": Bad(lambda o: F.ReduceLROnPlateau(o, factor=1.0), ValueError,
                          r"Invalid factor value: 1.0 \(expected a finite number >= 0.0 and "
                          r"< 1.0\)"),
    "plateau-patience": Bad(lambda o: F.ReduceLROnPlateau(o, patience=-1), ValueError,
                            r"Invalid patience value: -1"),
    "plateau-threshold-mode": Bad(lambda o: F.ReduceLROnPlateau(o, threshold_mode="pct"),
                                  ValueError, r"Invalid threshold_mode value: 'pct'"),
    "plateau-min-lr": Bad(lambda o: F.ReduceLROnPlateau(o, min_lr=[0.1]), ValueError,
                          r"Invalid min_lr value: \[0.1\] \(1 values"),
    "plateau-cooldown": Bad(lambda o: F.ReduceLROnPlateau(o, cooldown=-1), ValueError,
                            r"Invalid cooldown value: -1"),
    "noam-d-model": Bad(lambda o: F.NoamScheduler(o, d_model=0, warmup_steps=10), ValueError,
                        r"Invalid d_model value: 0"),
    "noam-warmup": Bad(lambda o: F.NoamScheduler(o, d_model=8, warmup_steps=-1), ValueError,
                       r"Invalid warmup_steps value: -1"),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_input_raises_naming_the_argument_and_changes_nothing(name: str) -> None:
    bad = BAD[name]
    optimizer = _fx_optimizer(bad.optimizer)
    if bad.preset_initial_lr:
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
    before = copy.deepcopy(_groups(optimizer))
    with pytest.raises(bad.error, match=bad.match):
        bad.build(optimizer)
    assert _groups(optimizer) == before


def test_a_state_dict_of_another_scheduler_is_refused_and_changes_nothing() -> None:
    optimizer = _fx_optimizer("sgd")
    scheduler = F.StepLR(optimizer, 2)
    before = scheduler.state_dict()
    other = F.CosineAnnealingLR(_fx_optimizer("sgd"), T_max=3).state_dict()
    with pytest.raises(ValueError, match=r"state dict does not fit StepLR: unknown key\(s\) "
                                         r"\['T_max', 'eta_min'\], missing key\(s\) "
                                         r"\['gamma', 'step_size'\]"):
        scheduler.load_state_dict(other)
    with pytest.raises(ValueError, match="must be a dict"):
        scheduler.load_state_dict([1])
    assert scheduler.state_dict() == before


def test_warm_restarts_rejects_a_negative_epoch_and_changes_nothing() -> None:
    optimizer = _fx_optimizer("sgd")
    scheduler = F.CosineAnnealingWarmRestarts(optimizer, T_0=3)
    before = scheduler.state_dict()
    with pytest.raises(ValueError, match=r"Invalid epoch value: -1"):
        scheduler.step(-1)
    assert scheduler.state_dict() == before


def test_every_scheduler_has_a_documented_example_and_a_repr() -> None:
    for name in F.__all__:
        cls = getattr(F, name)
        assert ">>>" in (cls.__doc__ or ""), name
    optimizer = _fx_optimizer("sgd")
    assert repr(F.StepLR(optimizer, 2)) == "StepLR(last_epoch=0, last_lr=[0.1, 0.03])"
