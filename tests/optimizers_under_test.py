"""The table of element-wise optimizers under test, and the runs that generic tests share.

One :class:`Row` per functional optimizer: its factory, the ``torch.optim`` class it
must equal, its grid of labelled hyper-parameter configurations (every flag
combination), its float64 NumPy reference (tests/reference.py) and the names of its
per-parameter state buffers (torch's state keys). A generic test iterates ``ROWS``;
the optimizer's own test file takes its rows by name.

:func:`run_many` trains labelled configurations on small pytrees with precomputed
gradients (no autodiff, so only the update rule is compared) with lucid_fx, torch and
the reference side by side, and returns the worst errors per quantity.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
from reference import adam_reference, max_rel_error, reference_run, sgd_reference
from reference import adadelta_reference, adagrad_reference, adamax_reference, rprop_reference
from reference import asgd_reference, nadam_reference, radam_reference

import lucid_fx as fx
from lucid_fx.adam import adam, adamw
from lucid_fx.sgd import sgd

# Tolerances, as max_rel_error (|a - b| / max(1, |b|)) over every step and every leaf.
# float32 against torch: both round each operation of the same formulas, in the same
# order; they differ where XLA fuses a multiply-add into one FMA that torch's CPU kernel
# rounds twice, and where torch's vectorized float32 sqrt is off by one ulp (it is not
# correctly rounded). That is ≤ 1 ulp (6e-8) per step and parameter; over STEPS = 20
TESTS_DIR = Path(__file__).resolve().parent
# steps it measured ≤ 6e-7 (Adam with decoupled weight decay, whose θ·(1-ηλ) + u XLA
# fuses), so 2e-6 leaves room for a different CPU without hiding a wrong formula (the
# smallest formula error, ε inside the sqrt, gives 1e-3).
RTOL_TORCH_F32 = 2e-6
RTOL_TORCH_F64 = 1e-12  # float64: rounding only (measured ≤ 1e-15)
# float32 against the exact (float64) reference: the float32 run's own rounding, the
# same ≤ 1 ulp per step as above, accumulated over STEPS steps (measured ≤ 1e-6).
RTOL_REF_F32 = 2e-6
RTOL_REF_F64 = 1e-12
STEPS = 20


@dataclasses.dataclass(frozen=True)
class Row:
    """One optimizer under test.

    Attributes:
      name: the functional factory's name (``fx.<name>`` once exported).
      factory: ``factory(**config) -> GradientTransformation``.
      torch_class: the name of the matching class in ``torch.optim``.
      grid: label -> keyword arguments; every valid flag combination. The same
        keywords go to ``factory``, to ``torch_class`` and to ``reference``.
      reference: ``reference(params, grads_seq, **config) -> (history, state)``
        with torch's state keys.
      buffers: the per-parameter state fields, named as torch's state keys.
      torch_scale: how our buffer relates to torch's: ours = torch's × this.
      torch_complex: whether torch treats complex parameters as we do.
      stateful: the ``fx`` class over ``factory`` (``fx.SGD`` for ``fx.sgd``), or
        ``None`` while it has none.
    """

    name: str
    factory: Callable[..., Any]
    torch_class: str
    grid: Mapping[str, Mapping[str, Any]]
    reference: Callable[..., tuple[list[list[np.ndarray]], dict[str, Any]]]
    buffers: tuple[str, ...]
    torch_scale: Callable[[str, Mapping[str, Any]], float] = lambda key, config: 1.0
    torch_complex: bool = True
    stateful: type | None = None


def _product_grid(
    axes: Mapping[str, tuple[Any, ...]],
    base: Mapping[str, Any],
    valid: Callable[[dict[str, Any]], bool] = lambda config: True,
) -> dict[str, dict[str, Any]]:
    """Every combination of ``axes`` (itertools.product), labelled by its non-default values."""
    grid = {}
    for values in itertools.product(*axes.values()):
        config = dict(zip(axes, values))
        if not valid(config):
            continue
        label = ",".join(f"{k}={v}" for k, v in config.items() if v != axes[k][0]) or "defaults"
        grid[label] = {**base, **config}
    return grid


def sgd_is_valid(config: Mapping[str, Any]) -> bool:
    """torch's rule: Nesterov needs momentum > 0 and zero dampening."""
    return not config.get("nesterov") or (
        config.get("momentum", 0) > 0 and config.get("dampening", 0) == 0)


SGD_AXES: dict[str, tuple[Any, ...]] = {
    "momentum": (0, 0.9), "dampening": (0, 0.1), "nesterov": (False, True),
    "weight_decay": (0, 0.1), "maximize": (False, True),
}
ADAM_AXES: dict[str, tuple[Any, ...]] = {
    "amsgrad": (False, True), "weight_decay": (0, 0.1), "maximize": (False, True),
    "decoupled_weight_decay": (False, True),
}
ADAMW_AXES: dict[str, tuple[Any, ...]] = {
    "amsgrad": (False, True), "weight_decay": (1e-2, 0.1), "maximize": (False, True),
}
RMSPROP_AXES: dict[str, tuple[Any, ...]] = {
    "momentum": (0, 0.9), "centered": (False, True), "weight_decay": (0, 0.1),
    "maximize": (False, True),
}

ROWS: dict[str, Row] = {
    "sgd": Row("sgd", sgd, "SGD", _product_grid(SGD_AXES, {"lr": 0.05}, sgd_is_valid),
               sgd_reference, ("momentum_buffer",), stateful=fx.SGD),
    "adam": Row("adam", adam, "Adam", _product_grid(ADAM_AXES, {"lr": 0.01}),
                adam_reference, ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"), stateful=fx.Adam),
    "adamw": Row("adamw", adamw, "AdamW", _product_grid(ADAMW_AXES, {"lr": 0.01}),
                 lambda *a, **k: adam_reference(*a, decoupled_weight_decay=True, **k),
                 ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"), stateful=fx.AdamW),
    # The page puts η inside RMSprop's momentum buffer, torch keeps it out: with a
    # constant η, ours is torch's × η. torch treats complex as real pairs, the design |g|².
    "rmsprop": Row("rmsprop", fx.rmsprop, "RMSprop",
                   _product_grid(RMSPROP_AXES, {"lr": 0.01}),
                   lambda params, grads, **k: reference_run(params, grads, **k),
                   ("square_avg", "grad_avg", "momentum_buffer"),
                   torch_scale=lambda key, c: c["lr"] if key == "momentum_buffer" else 1.0,
                   torch_complex=False, stateful=fx.RMSprop),
    # -- the rest of the family: Adagrad, Adadelta, Adamax, Rprop
    # lr_decay, weight_decay and initial_accumulator_value each change the traced code.
    "adagrad": Row("adagrad", fx.adagrad, "Adagrad", _product_grid(
        {"lr_decay": (0, 0.05), "weight_decay": (0, 0.1),
         "initial_accumulator_value": (0, 0.1), "maximize": (False, True)}, {"lr": 0.05}),
        adagrad_reference, ("sum",), stateful=fx.Adagrad),
    # lr ≠ 1 so that where η is applied (to Δx only, never inside u) is tested.
    "adadelta": Row("adadelta", fx.adadelta, "Adadelta", _product_grid(
        {"weight_decay": (0, 0.1), "maximize": (False, True)}, {"lr": 0.5}),
        adadelta_reference, ("square_avg", "acc_delta"), stateful=fx.Adadelta),
    "adamax": Row("adamax", fx.adamax, "Adamax", _product_grid(
        {"weight_decay": (0, 0.1), "maximize": (False, True)}, {"lr": 0.01}),
        adamax_reference, ("exp_avg", "exp_inf"), stateful=fx.Adamax),
    # The narrow step_sizes and wide etas make both clamps bind within 20 steps.
    "rprop": Row("rprop", fx.rprop, "Rprop", _product_grid(
        {"etas": ((0.5, 1.2), (0.25, 1.5)), "step_sizes": ((1e-6, 50), (1e-3, 0.02)),
         "maximize": (False, True)}, {"lr": 0.01}),
        rprop_reference, ("prev", "step_size"), stateful=fx.Rprop),
    # -- the rest of the family: NAdam, RAdam, ASGD
    # The per-parameter scalars (NAdam's mu_product, ASGD's eta and mu) are not in buffers:
    # they are real numbers, not parameter-shaped in the parameter's dtype, which the dtype
    # tests of test_family assume; tests/test_<name>.py compare them with torch's.
    # Over STEPS = 20, RAdam's ρ_t crosses 5 at t = 6 (β₂ = 0.999): both of its branches run.
    "nadam": Row("nadam", fx.nadam, "NAdam", _product_grid(
        {"weight_decay": (0, 0.1), "decoupled_weight_decay": (False, True),
         "maximize": (False, True)}, {"lr": 0.01}),
        nadam_reference, ("exp_avg", "exp_avg_sq"), stateful=fx.NAdam),
    "radam": Row("radam", fx.radam, "RAdam", _product_grid(
        {"weight_decay": (0, 0.1), "decoupled_weight_decay": (False, True),
         "maximize": (False, True)}, {"lr": 0.01}),
        radam_reference, ("exp_avg", "exp_avg_sq"), stateful=fx.RAdam),
    # t0 = 5 starts the averaging (μ < 1) at step 8 of 20; λ = 0.01 makes the decay visible.
    "asgd": Row("asgd", fx.asgd, "ASGD", _product_grid(
        {"t0": (1e6, 5.0), "weight_decay": (0, 0.1), "maximize": (False, True)},
        {"lr": 0.05, "lambd": 0.01}),
        asgd_reference, ("ax",), stateful=fx.ASGD),
}


# ------------------------------------------------------------------ problems and runs


def make_tree(rng: np.random.Generator, dtype: Any) -> dict[str, Any]:
    """A small pytree: nested dict, list and tuple, and a scalar."""

    def leaf(*shape: int) -> np.ndarray:
        x = rng.standard_normal(shape)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            x = x + 1j * rng.standard_normal(shape)
        return np.asarray(x).astype(dtype)

    # 17 elements: not a multiple of any SIMD width, so torch's scalar tail loop runs too.
    # (Each leaf costs compile time; zero-size leaves are in the property tests.)
    return {"dense": {"w": leaf(3, 4)}, "blocks": [leaf(17), (leaf(),)]}


def leaves64(tree: Any) -> list[np.ndarray]:
    """The leaves of ``tree`` as float64/complex128 NumPy arrays, in pytree order."""

    def widen(x: Any) -> np.ndarray:
        x = np.asarray(x)
        return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)

    return [widen(x) for x in jax.tree.leaves(tree)]


def tree_error(actual: Any, expected: list[np.ndarray] | None) -> float:
    """Largest max_rel_error over matching leaves; both ``None`` counts as 0."""
    if expected is None:
        assert actual is None, "a buffer exists that the reference does not have"
        return 0.0
    assert actual is not None, "a buffer the reference has is missing"
    actual_leaves = leaves64(actual)
    assert len(actual_leaves) == len(expected)
    return max([max_rel_error(a, e) for a, e in zip(actual_leaves, expected)], default=0.0)


@contextlib.contextmanager
def one_torch_thread(torch: Any) -> Iterator[None]:
    """A deterministic, light torch on a shared machine; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def problem(label: str, dtype: Any, steps: int = STEPS) -> tuple[Any, list[Any]]:
    """Initial parameters and ``steps`` gradient trees, seeded by ``label``."""
    rng = np.random.default_rng(zlib.crc32(label.encode()))
    return make_tree(rng, dtype), [make_tree(rng, dtype) for _ in range(steps)]


def run_many(
    row: Row,
    configs: Mapping[str, Mapping[str, Any]],
    dtype: Any,
    *,
    jit: bool = True,
    torch: Any = None,
    steps: int = STEPS,
    lr_per_step: list[float] | None = None,
) -> dict[str, dict[str, float]]:
    """Trains each labelled config with lucid_fx, the reference and (when given) torch.

    Returns, per label, the worst error of each quantity: the parameters (every
    step) and each buffer (at the end) against the reference (``ref:`` prefix)
    and torch (``torch:`` prefix), and the step count's difference (``step``).
    Each label seeds its own problem. With ``jit``, one jitted function runs the
    update of every config (one compilation for the whole grid: each compilation
    has a fixed cost of about 0.1 s on this CPU) and must compile once for all
    steps; the updates are applied outside it, as a training loop that jits only
    ``tx.update`` does. ``lr_per_step`` gives η step by step: ours as a schedule,
    torch's through ``param_groups[0]["lr"]``, the reference as a list. Also
    checks that the parameters keep ``dtype``.
    """
    labels = list(configs)
    problems = {label: problem(label, dtype, steps) for label in labels}
    txs = {}
    for label in labels:
        hyper = dict(configs[label])
        if lr_per_step is not None:
            table = jnp.asarray(lr_per_step, jnp.float32)
            hyper["lr"] = lambda count, table=table: table[count]
        txs[label] = row.factory(**hyper)

    def update_all(grads: dict[str, Any], states: dict[str, Any], params: dict[str, Any]) -> Any:
        return {label: txs[label].update(grads[label], states[label], params[label])
                for label in labels}

    update = jax.jit(update_all) if jit else update_all
    params = {label: jax.tree.map(jnp.asarray, problems[label][0]) for label in labels}
    states = {label: txs[label].init(params[label]) for label in labels}
    histories: dict[str, list[Any]] = {label: [] for label in labels}
    for t in range(steps):
        results = update({label: problems[label][1][t] for label in labels}, states, params)
        for label in labels:
            updates, states[label] = results[label]
            params[label] = fx.apply_updates(params[label], updates)
            histories[label].append(params[label])
    if jit:
        assert update._cache_size() == 1, "the update recompiled between steps"
    report = {}
    for label in labels:
        config, (params0, grads), state = configs[label], problems[label], states[label]
        assert {x.dtype for x in jax.tree.leaves(params[label])} == {jnp.dtype(dtype)}
        ref_config = dict(config)
        if lr_per_step is not None:
            # The schedule's float32 values, exactly: that is what both libraries use.
            ref_config["lr"] = [float(np.float32(x)) for x in lr_per_step]
        ref_history, ref_state = row.reference(
            leaves64(params0), [leaves64(g) for g in grads], **ref_config)
        errors = {
            "ref:params": max(tree_error(p, r) for p, r in zip(histories[label], ref_history)),
            "step": float(abs(int(state.step) - ref_state["step"])),
        }
        for key in row.buffers:
            errors[f"ref:{key}"] = tree_error(getattr(state, key), ref_state[key])
        if torch is not None:
            errors.update(_torch_errors(row, config, params0, grads, histories[label], state,
                                        torch, lr_per_step))
        report[label] = errors
    return report


def run(row: Row, config: Mapping[str, Any], dtype: Any, *, label: str = "",
        **kwargs: Any) -> dict[str, float]:
    """:func:`run_many` for one config; ``label`` seeds the problem."""
    label = label or repr(sorted(config.items()))
    return run_many(row, {label: config}, dtype, **kwargs)[label]


def _torch_errors(
    row: Row, config: Mapping[str, Any], params0: Any, grads: list[Any], history: list[Any],
    state: Any, torch: Any, lr_per_step: list[float] | None,
) -> dict[str, float]:
    errors = {"torch:params": 0.0}
    with one_torch_thread(torch):
        theirs = [torch.tensor(np.array(x), requires_grad=True) for x in jax.tree.leaves(params0)]
        optimizer = getattr(torch.optim, row.torch_class)(theirs, foreach=False, **config)
        for t, (g, ours) in enumerate(zip(grads, history)):
            if lr_per_step is not None:
                optimizer.param_groups[0]["lr"] = float(np.float32(lr_per_step[t]))
            for p, x in zip(theirs, jax.tree.leaves(g)):
                p.grad = torch.tensor(np.array(x))
            optimizer.step()
            errors["torch:params"] = max(errors["torch:params"], max(
                max_rel_error(a, p.detach().numpy())
                for a, p in zip(jax.tree.leaves(ours), theirs)))
        for key in row.buffers:
            ours_tree = getattr(state, key)
            present = [key in optimizer.state[p] for p in theirs]
            if ours_tree is None:
                assert not any(present), f"torch has {key}, we do not"
                continue
            assert all(present), f"we have {key}, torch does not"
            scale = row.torch_scale(key, config)
            errors[f"torch:{key}"] = max(
                max_rel_error(a, optimizer.state[p][key].numpy() * scale)
                for a, p in zip(jax.tree.leaves(ours_tree), theirs))
    return errors


def split(errors: Mapping[str, float]) -> tuple[float, float]:
    """(worst error against the reference, worst against torch) of a :func:`run`."""
    ref = max(v for k, v in errors.items() if k.startswith("ref:"))
    theirs = max([v for k, v in errors.items() if k.startswith("torch:")], default=0.0)
    return ref, theirs


# ------------------------------------------------------------------ the float64 child, in parallel


class BackgroundPython:
    """``code`` running now in a fresh ``python -W error`` with ``JAX_ENABLE_X64=1``.

    The same contract as conftest's ``run_python`` (``tests/`` on ``sys.path``, the
    last stdout line is JSON, a failing child fails the test with its stderr), but
    started early so that the float64 child runs alongside the float32 tests instead
    of after them: on a small machine that halves a test file's wall time.
    """

    def __init__(self, code: str) -> None:
        env = {**os.environ, "JAX_ENABLE_X64": "1"}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(TESTS_DIR)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        self._process = subprocess.Popen(
            [sys.executable, "-W", "error", "-c", code], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=env, cwd=TESTS_DIR.parent)

    def result(self, timeout: float = 300) -> Any:
        import pytest

        try:
            stdout, stderr = self._process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.communicate()
            pytest.fail(f"the float64 child ran over {timeout} s")
        if self._process.returncode != 0:
            pytest.fail(f"child python failed (rc={self._process.returncode}):\n{stderr[-4000:]}")
        return json.loads(stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.communicate()


def x64_fixtures(module_name: str) -> tuple[Any, Any]:
    """A test module's ``_x64_child`` (autouse) and ``x64`` fixtures.

    The child runs ``module_name.x64_report()`` with x64 on, started before the
    module's first test when any of its tests asks for ``x64``.
    """
    import pytest

    @pytest.fixture(scope="module", autouse=True)
    def _x64_child(request: pytest.FixtureRequest) -> Iterator[BackgroundPython | None]:
        wanted = any("x64" in item.fixturenames for item in request.session.items
                     if getattr(item, "module", None) is request.module)
        child = BackgroundPython(
            f"import json, {module_name} as t; print(json.dumps(t.x64_report()))"
        ) if wanted else None
        yield child
        if child is not None:
            child.stop()

    @pytest.fixture(scope="module")
    def x64(_x64_child: BackgroundPython) -> dict[str, Any]:
        return _x64_child.result()

    return _x64_child, x64


# ------------------------------------------------------------------ property-test trees


class Shape(tuple):
    """A leaf marker, so that shapes are not mistaken for pytree tuples."""


# A few shapes (a scalar, zero-size, odd sizes): eager ops compile once per shape.
shape_trees = st.recursive(
    st.sampled_from([(), (0,), (3,), (2, 3), (1, 5)]).map(lambda s: Shape(s)),
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=3),
        st.dictionaries(st.sampled_from("abcd"), children, min_size=1, max_size=3),
    ),
    max_leaves=4,
)
