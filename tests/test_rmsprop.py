"""Tests of ``lucid_fx._src.transforms.rmsprop`` against the float64 NumPy reference (tests/reference.py).

One table of labelled cases drives the parity tests in float32 (this process) and
float64 (in this process, under ``jax.enable_x64(True)``), and the parity with optax.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
import zlib
from collections.abc import Callable
from typing import Any

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from optimizers_under_test import leaves64, tree_error
from reference import RTOL_F32, RTOL_F64, max_rel_error, reference_run

import lucid_fx as fx

# Named tolerances beyond reference.RTOL_F32/RTOL_F64 (max_rel_error: |a-b| / max(1, |b|)).
RTOL_GRAD = 1e-3  # jax.grad in float32 vs central differences of the float64 reference
# One step relative to |update|: float32 arithmetic, then one rounding to the dtype (2 ulp).
RTOL_ONE_STEP = {jnp.bfloat16: 2**-7, jnp.float16: 2**-10, jnp.float32: 2**-20}

SCHEDULES: dict[str, Callable[[], optax.Schedule]] = {
    "exponential_decay": lambda: optax.exponential_decay(0.05, transition_steps=10, decay_rate=0.5),
    "piecewise": lambda: optax.piecewise_constant_schedule(0.05, {20: 0.1, 40: 10.0}),
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One labelled configuration of rmsprop; ``lr`` may name a schedule in SCHEDULES."""

    label: str
    lr: float | str = 0.01
    alpha: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.0
    centered: bool = False
    maximize: bool = False
    is_complex: bool = False
    steps: int = 60

    def learning_rate(self) -> Any:
        return SCHEDULES[self.lr]() if isinstance(self.lr, str) else self.lr

    def hyper(self) -> dict[str, Any]:
        """Keyword arguments of ``fx.rmsprop``."""
        return dict(
            lr=self.learning_rate(), alpha=self.alpha, eps=self.eps,
            weight_decay=self.weight_decay, momentum=self.momentum,
            centered=self.centered, maximize=self.maximize,
        )

    def reference_hyper(self) -> dict[str, Any]:
        """Keyword arguments of the reference: a schedule becomes its values per step.

        The contract calls a schedule with the int32 step count; optax's schedules then
        compute in float32 even under x64, so the reference gets exactly those values.
        """
        hyper = self.hyper()
        if callable(hyper["lr"]):
            schedule = jax.jit(hyper["lr"])
            hyper["lr"] = [float(schedule(np.int32(t))) for t in range(self.steps)]
        return hyper


FLAGS: dict[str, dict[str, Any]] = {
    "momentum": dict(momentum=0.9),
    "centered": dict(centered=True),
    "weight_decay": dict(weight_decay=0.1),
    "maximize": dict(maximize=True),
}
EXTRA_CASES: list[tuple[str, dict[str, Any]]] = [
    ("alpha=0.5,eps=1e-3", dict(alpha=0.5, eps=1e-3)),
    ("alpha=0", dict(alpha=0.0, momentum=0.5)),
    ("alpha=1,eps=0.1", dict(alpha=1.0, eps=0.1)),
    ("lr=1,momentum", dict(lr=1.0, momentum=0.9)),
    ("lr=0.5,centered,alpha=0.9", dict(lr=0.5, centered=True, alpha=0.9)),
    ("schedule=exponential_decay", dict(lr="exponential_decay")),
    ("schedule=piecewise+momentum", dict(lr="piecewise", momentum=0.9)),
    ("schedule=exponential_decay+all",
     dict(lr="exponential_decay", momentum=0.5, centered=True, weight_decay=0.01)),
    ("long=200+momentum+centered", dict(momentum=0.9, centered=True, steps=200)),
    ("complex", dict(is_complex=True)),
    ("complex+momentum+centered+weight_decay",
     dict(is_complex=True, momentum=0.9, centered=True, weight_decay=0.1)),
    ("complex+maximize+schedule", dict(is_complex=True, maximize=True, lr="piecewise")),
]


def _build_cases() -> list[Case]:
    """Every subset of FLAGS (alone and combined), then the EXTRA_CASES."""
    cases = []
    for size in range(len(FLAGS) + 1):
        for names in itertools.combinations(FLAGS, size):
            kwargs = {k: v for name in names for k, v in FLAGS[name].items()}
            cases.append(Case("+".join(names) or "defaults", **kwargs))
    cases += [Case(label, **kwargs) for label, kwargs in EXTRA_CASES]
    return cases


CASES = _build_cases()
CASES_BY_LABEL = {case.label: case for case in CASES}
assert len(CASES_BY_LABEL) == len(CASES), "case labels must be unique"


def make_tree(rng: np.random.Generator, dtype: Any) -> dict[str, Any]:
    """A pytree with nested dicts, a list, a tuple, a scalar and zero-size leaves."""

    def leaf(*shape: int) -> np.ndarray:
        x = rng.standard_normal(shape)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            x = x + 1j * rng.standard_normal(shape)
        return np.asarray(x).astype(dtype)

    return {"dense": {"w": leaf(3, 4)}, "blocks": [leaf(5), (leaf(), leaf(2, 0))]}


def run_parity(
    cases: list[Case], real: Any, wide: Any, *, jit: bool = True
) -> dict[str, dict[str, float]]:
    """Runs ``cases`` with lucid_fx and the reference; label -> max errors per quantity.

    Complex cases run in ``wide``, the others in ``real``. Jitted, the cases of one
    length step in one compiled function (every compilation costs about 0.1 s here),
    which must compile once for all steps (the state's structure and dtypes are
    stable); the parameters must keep their dtype.
    """
    dtypes = {case.label: wide if case.is_complex else real for case in cases}
    problems = {}
    for case in cases:
        rng = np.random.default_rng(zlib.crc32(case.label.encode()))
        problems[case.label] = (make_tree(rng, dtypes[case.label]),
                                [make_tree(rng, dtypes[case.label]) for _ in range(case.steps)])
    finals = {}
    for steps in sorted({case.steps for case in cases}):
        group = [case for case in cases if case.steps == steps]
        txs = {case.label: fx.rmsprop(**case.hyper()) for case in group}

        def update_all(grads: Any, states: Any, params: Any, txs: Any = txs) -> Any:
            return {label: tx.update(grads[label], states[label], params[label])
                    for label, tx in txs.items()}

        update = jax.jit(update_all) if jit else update_all
        params = {label: jax.tree.map(jnp.asarray, problems[label][0]) for label in txs}
        states = {label: tx.init(params[label]) for label, tx in txs.items()}
        for t in range(steps):
            results = update({label: problems[label][1][t] for label in txs}, states, params)
            states = {label: state for label, (_, state) in results.items()}
            params = {label: fx.apply_updates(params[label], updates)
                      for label, (updates, _) in results.items()}
        if jit:
            assert update._cache_size() == 1, "the update recompiled between steps"
        finals.update({label: (params[label], states[label]) for label in txs})
    report = {}
    for case in cases:
        params, state = finals[case.label]
        assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(dtypes[case.label])}
        params0, grads = problems[case.label]
        history, ref = reference_run(leaves64(params0), [leaves64(g) for g in grads],
                                     **case.reference_hyper())
        report[case.label] = {
            "params": tree_error(params, history[-1]),
            "square_avg": tree_error(state.square_avg, ref["square_avg"]),
            "grad_avg": tree_error(state.grad_avg, ref["grad_avg"]),
            "momentum_buffer": tree_error(state.momentum_buffer, ref["momentum_buffer"]),
            "step": float(abs(int(state.step) - ref["step"])),
        }
    return report


def x64_report() -> dict[str, Any]:
    """Everything checked in float64; called under ``jax.enable_x64(True)``."""
    assert jax.config.jax_enable_x64, "call under jax.enable_x64(True)"
    parity = run_parity(CASES, np.float64, np.complex128)
    # float32 parameters stay float32 although Python scalars and schedules are 64-bit now.
    f32_case = Case("f32-under-x64", lr="exponential_decay", momentum=0.9, centered=True,
                    weight_decay=0.1, steps=5)
    rng = np.random.default_rng(0)
    params = jax.tree.map(jnp.asarray, make_tree(rng, np.float32))
    tx = fx.rmsprop(**f32_case.hyper())
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(make_tree(rng, np.float32), state, params)
    dtypes = {
        "updates": sorted({str(x.dtype) for x in jax.tree.leaves(updates)}),
        "params": sorted({str(x.dtype) for x in jax.tree.leaves(fx.apply_updates(params, updates))}),
        "state": sorted({str(x.dtype) for x in jax.tree.leaves(
            (state.square_avg, state.grad_avg, state.momentum_buffer))}),
        "step": str(state.step.dtype),
    }
    return {"parity": parity, "f32_parity": run_parity([f32_case], np.float32, np.complex64)[
        f32_case.label], "f32_dtypes": dtypes}


# ------------------------------------------------------------------ parity with the reference


@pytest.fixture(scope="module")
def f32() -> dict[str, dict[str, float]]:
    return run_parity(CASES, np.float32, np.complex64)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.label)
def test_parity_float32(case: Case, f32: dict[str, dict[str, float]]) -> None:
    errors = f32[case.label]
    assert errors["step"] == 0
    assert max(errors.values()) <= RTOL_F32, errors


@pytest.fixture(scope="module")
def x64() -> dict[str, Any]:
    with jax.enable_x64(True):
        return x64_report()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.label)
def test_parity_float64(case: Case, x64: dict[str, Any]) -> None:
    errors = x64["parity"][case.label]
    assert errors["step"] == 0
    assert max(errors.values()) <= RTOL_F64, errors


def test_float32_stays_float32_under_x64(x64: dict[str, Any]) -> None:
    assert x64["f32_dtypes"] == {
        "updates": ["float32"], "params": ["float32"], "state": ["float32"], "step": "int32"
    }
    assert max(x64["f32_parity"].values()) <= RTOL_F32, x64["f32_parity"]


@pytest.mark.parametrize("label", ["momentum+centered+weight_decay+maximize",
                                   "schedule=piecewise+momentum"])
def test_eager_matches_reference_like_jit(label: str) -> None:
    case = dataclasses.replace(CASES_BY_LABEL[label], steps=10)
    errors = run_parity([case], np.float32, np.complex64, jit=False)[label]
    assert max(errors.values()) <= RTOL_F32, errors


def test_defaults_are_the_documents() -> None:
    params = inspect.signature(fx.rmsprop).parameters
    positional = [(n, p.default) for n, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == [("lr", 0.01), ("alpha", 0.99), ("eps", 1e-08),
                          ("weight_decay", 0), ("momentum", 0), ("centered", False)]


def test_state_layout_follows_the_flags() -> None:
    params = {"w": jnp.ones(3)}
    plain = fx.rmsprop().init(params)
    assert isinstance(plain, fx.RMSpropState)
    assert plain.grad_avg is None and plain.momentum_buffer is None and plain.skipped is None
    assert plain.step.dtype == jnp.int32 and int(plain.step) == 0
    full = fx.rmsprop(momentum=0.9, centered=True, skip_nonfinite=True).init(params)
    assert jax.tree.structure(full.grad_avg) == jax.tree.structure(params)
    assert jax.tree.structure(full.momentum_buffer) == jax.tree.structure(params)
    assert int(full.skipped) == 0
    # A jax array, even 0, may change later (traced), so it gets a buffer.
    assert fx.rmsprop(momentum=jnp.asarray(0.0)).init(params).momentum_buffer is not None


TORCH_LABELS = [c.label for c in CASES if c.lr == 0.01 and not c.is_complex and c.steps <= 60]


@pytest.mark.parametrize("label", TORCH_LABELS)
def test_reference_equals_torch_for_constant_lr(label: str) -> None:
    """The reference itself, against torch.optim.RMSprop in float64 (DESIGN: equal for a
    constant lr). torch keeps lr out of its buffer, so only the parameters are compared."""
    torch = pytest.importorskip("torch", reason="torch (a test dependency) is not installed")
    case = CASES_BY_LABEL[label]
    rng = np.random.default_rng(zlib.crc32(label.encode()))
    theta0 = [rng.standard_normal((3, 2)), rng.standard_normal(4)]
    grads = [[rng.standard_normal(x.shape) for x in theta0] for _ in range(20)]
    history, _ = reference_run(theta0, grads, **case.hyper())
    params = [torch.tensor(x, requires_grad=True) for x in theta0]
    hyper = {k: v for k, v in case.hyper().items() if k != "lr"}
    optimizer = torch.optim.RMSprop(params, lr=case.lr, **hyper)
    for step in grads:
        for p, g in zip(params, step):
            p.grad = torch.tensor(g)
        optimizer.step()
    for p, expected in zip(params, history[-1]):
        assert max_rel_error(p.detach().numpy(), expected) <= RTOL_F64


# ------------------------------------------------------------------ parity with optax

# optax has no ``maximize``; these cover each remaining flag, schedules and complex.
OPTAX_LABELS = [
    "defaults", "momentum", "centered", "weight_decay", "momentum+centered+weight_decay",
    "alpha=0.5,eps=1e-3", "lr=1,momentum", "schedule=piecewise+momentum",
    "schedule=exponential_decay+all", "complex+momentum+centered+weight_decay",
]


@pytest.mark.parametrize("label", OPTAX_LABELS)
def test_parity_with_optax(label: str) -> None:
    """optax's rmsprop with eps outside the sqrt, after its coupled weight decay.

    Two float32 computations of the same formulas in different operation orders:
    each may be RTOL_F32 from the exact result, so they agree to 2·RTOL_F32.
    """
    case = CASES_BY_LABEL[label]
    optax_tx = optax.chain(
        optax.add_decayed_weights(case.weight_decay),
        optax.rmsprop(case.learning_rate(), decay=case.alpha, eps=case.eps, eps_in_sqrt=False,
                      centered=case.centered, momentum=case.momentum or None),
    )
    dtype = np.complex64 if case.is_complex else np.float32
    rng = np.random.default_rng(zlib.crc32(case.label.encode()))
    params0 = jax.tree.map(jnp.asarray, make_tree(rng, dtype))
    grads = [make_tree(rng, dtype) for _ in range(case.steps)]
    finals = []
    for tx in (fx.rmsprop(**case.hyper()), optax_tx):
        params, state, update = params0, tx.init(params0), jax.jit(tx.update)
        for g in grads:
            updates, state = update(g, state, params)
            params = optax.apply_updates(params, updates)
        finals.append(params)
    assert tree_error(finals[0], leaves64(finals[1])) <= 2 * RTOL_F32


# ------------------------------------------------------------------ property tests


class _Shape(tuple):
    """A leaf marker, so that shapes are not mistaken for pytree tuples."""


_shapes = st.lists(st.integers(0, 3), min_size=0, max_size=2).map(lambda s: _Shape(s))
_trees = st.recursive(
    _shapes,
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=3),
        st.dictionaries(st.sampled_from("abcd"), children, min_size=1, max_size=3),
        st.tuples(children, children),
    ),
    max_leaves=5,
)


@given(
    shape_tree=_trees,
    lr=st.floats(0.0, 1.0),
    alpha=st.floats(0.1, 1.0),  # α < 0.1 makes v - ḡ² cancel in float32 (see the x64 grid)
    eps=st.floats(1e-8, 0.1),
    weight_decay=st.sampled_from([0.0, 0.01, 0.5]),
    momentum=st.sampled_from([0.0, 0.5, 0.95]),
    centered=st.booleans(),
    maximize=st.booleans(),
    steps=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_property_random_trees_and_hyperparameters(
    shape_tree: Any, lr: float, alpha: float, eps: float, weight_decay: float,
    momentum: float, centered: bool, maximize: bool, steps: int, seed: int,
) -> None:
    rng = np.random.default_rng(seed)

    def arrays() -> Any:
        return jax.tree.map(lambda s: rng.standard_normal(tuple(s)).astype(np.float32),
                            shape_tree, is_leaf=lambda x: isinstance(x, _Shape))

    hyper = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                 centered=centered, maximize=maximize)
    params0, grads = arrays(), [arrays() for _ in range(steps)]
    tx = fx.rmsprop(**hyper)
    params = jax.tree.map(jnp.asarray, params0)
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = fx.apply_updates(params, updates)
    history, ref = reference_run(leaves64(params0), [leaves64(g) for g in grads], **hyper)
    assert jax.tree.structure(params) == jax.tree.structure(params0)
    assert int(state.step) == steps
    assert tree_error(params, history[-1]) <= RTOL_F32
    assert tree_error(state.square_avg, ref["square_avg"]) <= RTOL_F32
    assert tree_error(state.grad_avg, ref["grad_avg"]) <= RTOL_F32
    assert tree_error(state.momentum_buffer, ref["momentum_buffer"]) <= RTOL_F32


# ------------------------------------------------------------------ transformations of update


def test_vmap_over_independent_problems() -> None:
    batch, steps = 3, 6
    hyper = dict(lr=0.05, alpha=0.9, eps=1e-6, weight_decay=0.01, momentum=0.9, centered=True)
    rng = np.random.default_rng(1)
    params0 = {"w": rng.standard_normal((batch, 4)).astype(np.float32),
               "b": rng.standard_normal((batch,)).astype(np.float32)}
    grads = [jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32), params0)
             for _ in range(steps)]
    tx = fx.rmsprop(**hyper)
    params = params0
    state = jax.vmap(tx.init)(params)
    update = jax.jit(jax.vmap(tx.update))
    for g in grads:
        updates, state = update(g, state, params)
        params = fx.apply_updates(params, updates)

    def take(tree: Any, i: int) -> list[np.ndarray]:
        """Problem i's leaves, in pytree order (b, w)."""
        return [np.asarray(tree["b"][i]), np.asarray(tree["w"][i])]

    for i in range(batch):
        history, ref = reference_run(take(params0, i), [take(g, i) for g in grads], **hyper)
        assert max(max_rel_error(a, e) for a, e in zip(take(params, i), history[-1])) <= RTOL_F32
        assert max(max_rel_error(a, e)
                   for a, e in zip(take(state.square_avg, i), ref["square_avg"])) <= RTOL_F32


def test_grad_through_update_matches_finite_differences() -> None:
    """d/d(θ₀, g₃, η) of Σ c·θ₃ after three steps, against the float64 reference."""
    hyper = dict(alpha=0.8, eps=1e-3, weight_decay=0.3, momentum=0.7, centered=True)
    rng = np.random.default_rng(2)
    theta0 = rng.standard_normal(4)
    g1, g2, g3 = (rng.standard_normal(4) for _ in range(3))
    c = rng.standard_normal(4)
    lr = 0.05

    def objective(theta: jax.Array, last_grad: jax.Array, eta: jax.Array) -> jax.Array:
        tx = fx.rmsprop(lr=eta, **hyper)
        state = tx.init(theta)
        for g in (jnp.asarray(g1, jnp.float32), jnp.asarray(g2, jnp.float32), last_grad):
            updates, state = tx.update(g, state, theta)
            theta = fx.apply_updates(theta, updates)
        return jnp.sum(jnp.asarray(c, jnp.float32) * theta)

    grads = jax.jit(jax.grad(objective, argnums=(0, 1, 2)))(
        jnp.asarray(theta0, jnp.float32), jnp.asarray(g3, jnp.float32), jnp.float32(lr))

    def reference(theta: np.ndarray, last_grad: np.ndarray, eta: float) -> float:
        history, _ = reference_run([theta], [[g1], [g2], [last_grad]], lr=eta, **hyper)
        return float(c @ history[-1][0])

    h = 1e-6
    basis = np.eye(4)
    expected = [
        np.array([(reference(theta0 + h * e, g3, lr) - reference(theta0 - h * e, g3, lr)) / (2 * h)
                  for e in basis]),
        np.array([(reference(theta0, g3 + h * e, lr) - reference(theta0, g3 - h * e, lr)) / (2 * h)
                  for e in basis]),
        np.array((reference(theta0, g3, lr + h) - reference(theta0, g3, lr - h)) / (2 * h)),
    ]
    for actual, fd in zip(grads, expected):
        assert max_rel_error(actual, fd) <= RTOL_GRAD, (actual, fd)


def test_donated_state_gives_the_same_result() -> None:
    tx = fx.rmsprop(lr=0.01, momentum=0.9, centered=True, weight_decay=0.1, skip_nonfinite=True)
    rng = np.random.default_rng(3)
    params = jax.tree.map(jnp.asarray, make_tree(rng, np.float32))
    grads = make_tree(rng, np.float32)
    kept_state = tx.init(params)
    expected_updates, expected_state = jax.jit(tx.update)(grads, kept_state, params)
    donated_state = tx.init(params)
    # Donation works only if every output buffer matches an input buffer in shape and
    # dtype; a mismatch would warn, and warnings are errors here.
    updates, state = jax.jit(tx.update, donate_argnums=(1,))(grads, donated_state, params)
    assert all(x.is_deleted() for x in jax.tree.leaves(donated_state) if x.size)
    assert jax.tree.all(jax.tree.map(np.array_equal, updates, expected_updates))
    assert jax.tree.all(jax.tree.map(np.array_equal, state, expected_state))


def test_none_leaves_pass_through() -> None:
    hyper = dict(lr=0.1, momentum=0.9, weight_decay=0.1, centered=True)
    w0, g = np.array([1.0, -2.0], np.float32), np.array([0.5, 3.0], np.float32)
    params = {"w": jnp.asarray(w0), "frozen": None}
    tx = fx.rmsprop(**hyper)
    state = tx.init(params)
    assert state.square_avg["frozen"] is None and state.momentum_buffer["frozen"] is None
    updates, state = tx.update({"w": g, "frozen": None}, state, params)
    assert updates["frozen"] is None
    new_params = fx.apply_updates(params, updates)
    assert new_params["frozen"] is None
    history, _ = reference_run([w0], [[g]], **hyper)
    assert max_rel_error(new_params["w"], history[-1][0]) <= RTOL_F32


# ------------------------------------------------------------------ dtypes


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32],
                         ids=lambda d: jnp.dtype(d).name)
def test_dtypes_are_kept(dtype: Any) -> None:
    # alpha=0.999 rounds to 1.0 in bfloat16: arithmetic must not run in bfloat16.
    hyper = dict(lr=0.01, alpha=0.999, momentum=0.9, centered=True, weight_decay=0.1)
    rng = np.random.default_rng(4)
    params = jax.tree.map(jnp.asarray, make_tree(rng, dtype))
    grads = [make_tree(rng, dtype) for _ in range(2)]
    tx = fx.rmsprop(**hyper)
    update = jax.jit(tx.update)
    state = tx.init(params)
    updates, state = update(grads[0], state, params)
    _, ref = reference_run(leaves64(params), [leaves64(grads[0])], **hyper)

    def stored(x: np.ndarray) -> np.ndarray:
        # Buffers are kept in the parameter's dtype and the step goes on from the
        # stored values (as torch does), so the model rounds v, ḡ and b to it.
        return np.asarray(x).astype(dtype).astype(np.float64)

    for actual, p, g, v, gbar in zip(leaves64(updates), leaves64(params), leaves64(grads[0]),
                                     ref["square_avg"], ref["grad_avg"]):
        denom = np.sqrt(np.maximum(stored(v) - stored(gbar) ** 2, 0)) + 1e-8
        expected = stored(hyper["lr"] * (g + hyper["weight_decay"] * p) / denom)  # b_1 = η·g/d
        # update = -b after one step; relative to |update|, which is about lr/sqrt(1-α).
        assert np.all(np.abs(actual + expected) <= RTOL_ONE_STEP[dtype] * np.abs(expected))
    params = fx.apply_updates(params, updates)
    updates, state = update(grads[1], state, params)
    assert update._cache_size() == 1
    buffers = (state.square_avg, state.grad_avg, state.momentum_buffer)
    assert {x.dtype for x in jax.tree.leaves(buffers)} == {jnp.dtype(dtype)}
    assert {x.dtype for x in jax.tree.leaves(updates)} == {jnp.dtype(dtype)}
    assert {x.dtype for x in jax.tree.leaves(fx.apply_updates(params, updates))} == {
        jnp.dtype(dtype)}
    assert state.step.dtype == jnp.int32


def test_state_dtype_float32_for_bfloat16_params() -> None:
    hyper = dict(lr=0.01, alpha=0.999, momentum=0.9, centered=True)
    rng = np.random.default_rng(5)
    params = jax.tree.map(jnp.asarray, make_tree(rng, jnp.bfloat16))
    grads = [make_tree(rng, jnp.bfloat16) for _ in range(10)]
    tx = fx.rmsprop(**hyper, state_dtype=jnp.float32)
    state = tx.init(params)
    params0 = params
    update = jax.jit(tx.update)
    for g in grads:
        updates, state = update(g, state, params)
        assert {x.dtype for x in jax.tree.leaves(updates)} == {jnp.dtype(jnp.bfloat16)}
        params = fx.apply_updates(params, updates)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    buffers = (state.square_avg, state.grad_avg, state.momentum_buffer)
    assert {x.dtype for x in jax.tree.leaves(buffers)} == {jnp.dtype(jnp.float32)}
    # Without weight decay the buffers depend on the (exact) bf16 gradients only, so
    # float32 state must match the float64 reference to float32 accuracy.
    _, ref = reference_run(leaves64(params0), [leaves64(g) for g in grads], **hyper)
    for name in ("square_avg", "grad_avg", "momentum_buffer"):
        assert tree_error(getattr(state, name), ref[name]) <= RTOL_F32, name


# ------------------------------------------------------------------ non-finite gradients


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_skip_nonfinite_changes_nothing_and_counts(bad: float) -> None:
    hyper = dict(lr=0.1, momentum=0.9, centered=True, weight_decay=0.01)
    rng = np.random.default_rng(6)
    params0 = jax.tree.map(jnp.asarray, make_tree(rng, np.float32))
    g1, g2 = make_tree(rng, np.float32), make_tree(rng, np.float32)
    broken = jax.tree.map(np.copy, g2)
    broken["dense"]["w"][1, 2] = bad
    tx = fx.rmsprop(**hyper, skip_nonfinite=True)
    update = jax.jit(tx.update)
    updates, state1 = update(g1, tx.init(params0), params0)
    params1 = fx.apply_updates(params0, updates)
    zeros, state_skipped = update(broken, state1, params1)
    assert all(not np.any(np.asarray(u)) for u in jax.tree.leaves(zeros))
    assert jax.tree.all(jax.tree.map(
        np.array_equal, state_skipped._replace(skipped=None), state1._replace(skipped=None)))
    assert int(state_skipped.skipped) == 1 and int(state_skipped.step) == 1
    params_after_skip = fx.apply_updates(params1, zeros)
    assert jax.tree.all(jax.tree.map(np.array_equal, params_after_skip, params1))
    updates, state2 = update(g2, state_skipped, params_after_skip)
    params2 = fx.apply_updates(params_after_skip, updates)
    history, _ = reference_run(leaves64(params0), [leaves64(g1), leaves64(g2)], **hyper)
    assert tree_error(params2, history[-1]) <= RTOL_F32
    assert int(state2.skipped) == 1 and int(state2.step) == 2


def test_nonfinite_gradients_propagate_by_default() -> None:
    tx = fx.rmsprop(lr=0.1)
    params = jnp.ones(3)
    updates, state = tx.update(jnp.array([1.0, np.nan, 1.0]), tx.init(params), params)
    assert np.isnan(np.asarray(updates)).tolist() == [False, True, False]
    assert int(state.step) == 1


def test_centered_variance_is_clamped_at_zero() -> None:
    """Near-constant g with α=0.5: v - ḡ² rounds below 0 in float32; the clamp keeps it finite."""
    alpha, eps, lr, steps = 0.5, 1e-8, 0.01, 40
    rng = np.random.default_rng(7)
    g = rng.uniform(0.5, 2.0, size=256).astype(np.float32)
    # The unclamped formula in float32 NumPy: sqrt of a negative number, NaN.
    v = np.zeros_like(g)
    gbar = np.zeros_like(g)
    a = np.float32(alpha)
    unclamped_nan = False
    for _ in range(steps):
        v = a * v + (1 - a) * g * g
        gbar = a * gbar + (1 - a) * g
        with np.errstate(invalid="ignore"):
            unclamped_nan |= bool(np.isnan(lr * g / (np.sqrt(v - gbar * gbar) + eps)).any())
    assert unclamped_nan, "this input should drive v - ḡ² below zero in float32"
    # optax's centered rmsprop (no clamp) goes NaN on the same input ...
    for tx, expect_finite in (
        (optax.rmsprop(lr, decay=alpha, eps=eps, eps_in_sqrt=False, centered=True), False),
        (fx.rmsprop(lr, alpha=alpha, eps=eps, centered=True), True),
    ):
        params, state, update = jnp.zeros_like(g), tx.init(jnp.zeros_like(g)), jax.jit(tx.update)
        finite = True
        for _ in range(steps):
            updates, state = update(jnp.asarray(g), state, params)
            params = optax.apply_updates(params, updates)
            finite &= bool(jnp.all(jnp.isfinite(updates)))
        assert finite == expect_finite
    # ... while lucid_fx's state stays finite too.
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))


# ------------------------------------------------------------------ traced hyper-parameters


def test_hyperparameters_traced_inside_jit() -> None:
    rng = np.random.default_rng(8)
    params0 = {"w": rng.standard_normal(5).astype(np.float32)}
    grads = [{"w": rng.standard_normal(5).astype(np.float32)} for _ in range(5)]

    @jax.jit
    def run(hyper: dict[str, jax.Array], params: Any) -> Any:
        tx = fx.rmsprop(**hyper, centered=True)
        state = tx.init(params)
        for g in grads:
            updates, state = tx.update(g, state, params)
            params = fx.apply_updates(params, updates)
        return params, state

    for values in (dict(lr=0.1, alpha=0.9, eps=1e-4, momentum=0.5, weight_decay=0.1),
                   dict(lr=0.02, alpha=0.5, eps=1e-2, momentum=0.0, weight_decay=0.0)):
        params, state = run({k: jnp.float32(v) for k, v in values.items()}, params0)
        history, ref = reference_run([params0["w"]], [[g["w"]] for g in grads],
                                     centered=True, **values)
        assert max_rel_error(params["w"], history[-1][0]) <= RTOL_F32
        assert max_rel_error(state.square_avg["w"], ref["square_avg"][0]) <= RTOL_F32
        assert max_rel_error(state.grad_avg["w"], ref["grad_avg"][0]) <= RTOL_F32
    assert run._cache_size() == 1


def test_inject_hyperparams_changes_lr_without_recompiling() -> None:
    rng = np.random.default_rng(9)
    params0 = {"w": jnp.asarray(rng.standard_normal(5), jnp.float32)}
    grads = [{"w": jnp.asarray(rng.standard_normal(5), jnp.float32)} for _ in range(6)]
    lrs = [0.1, 0.1, 0.01, 0.3, 0.0, 0.05]
    tx = optax.inject_hyperparams(fx.rmsprop)(lr=0.1, momentum=0.9)
    params = params0
    state = tx.init(params)
    update = jax.jit(tx.update)
    for lr, g in zip(lrs, grads):
        state.hyperparams["lr"] = jnp.asarray(lr, jnp.float32)
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
    assert update._cache_size() == 1
    history, _ = reference_run([params0["w"]], [[g["w"]] for g in grads], lr=lrs, momentum=0.9)
    assert max_rel_error(params["w"], history[-1][0]) <= RTOL_F32


# ------------------------------------------------------------------ errors

HYPER_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("lr<0", dict(lr=-0.1), r"Invalid lr value: -0\.1 \(expected a number >= 0\.0\)"),
    ("eps<0", dict(eps=-1e-08), r"Invalid eps value: -1e-08 \(expected a number >= 0\.0\)"),
    ("alpha<0", dict(alpha=-0.5), r"Invalid alpha value: -0\.5 \(expected a number in \[0\.0, 1\.0\]\)"),
    ("alpha>1", dict(alpha=1.5), r"Invalid alpha value: 1\.5 \(expected a number in \[0\.0, 1\.0\]\)"),
    ("momentum<0", dict(momentum=-0.9), r"Invalid momentum value: -0\.9 \(expected a number >= 0\.0\)"),
    ("weight_decay<0", dict(weight_decay=-1e-4),
     r"Invalid weight_decay value: -0\.0001 \(expected a number >= 0\.0\)"),
] + [
    (f"{name}=nan", {name: math.nan}, rf"Invalid {name} value: nan \(expected a number")
    for name in ("lr", "alpha", "eps", "weight_decay", "momentum")
]


@pytest.mark.parametrize("kwargs, pattern", [e[1:] for e in HYPER_ERRORS],
                         ids=[e[0] for e in HYPER_ERRORS])
def test_invalid_hyperparameters_raise(kwargs: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        fx.rmsprop(**kwargs)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_], ids=["int32", "bool"])
def test_non_float_params_raise(dtype: Any) -> None:
    params = {"w": jnp.ones(2), "n": jnp.ones(2, dtype)}
    with pytest.raises(TypeError, match=rf"floating-point parameters only; \['n'\] has dtype "
                                        rf"{jnp.dtype(dtype).name}\. Cast it"):
        fx.rmsprop().init(params)


_P = {"a": jnp.ones(2), "layers": [jnp.ones(3), jnp.ones((2, 2))]}
MISMATCHES: list[tuple[str, Any, str]] = [
    ("renamed key", {"b": jnp.ones(2), "layers": [jnp.ones(3), jnp.ones((2, 2))]},
     r"gradients do not match the state: first difference at \['b'\] \(expected \['a'\]\)"),
    ("missing leaf", {"a": jnp.ones(2), "layers": [jnp.ones(3)]},
     r"gradients do not match the state: \['layers'\]\[1\] is missing from gradients"),
    ("extra leaf", {"a": jnp.ones(2), "layers": [jnp.ones(3), jnp.ones((2, 2)), jnp.ones(1)]},
     r"gradients do not match the state: \['layers'\]\[2\] is unexpected in gradients"),
    ("shape", {"a": jnp.ones(2), "layers": [jnp.ones(3), jnp.ones((2, 3))]},
     (r"gradients do not match the state: \['layers'\]\[1\] has shape \(2, 3\), "
      r"expected \(2, 2\)")),
    ("None for an array", {"a": None, "layers": [jnp.ones(3), jnp.ones((2, 2))]},
     (r"gradients do not match the state: first difference at \['layers'\]\[0\] "
      r"\(expected \['a'\]\)")),
]


@pytest.mark.parametrize("grads, pattern", [m[1:] for m in MISMATCHES],
                         ids=[m[0] for m in MISMATCHES])
def test_mismatched_gradients_name_the_path(grads: Any, pattern: str) -> None:
    tx = fx.rmsprop()
    with pytest.raises(ValueError, match=pattern):
        tx.update(grads, tx.init(_P), _P)


def test_mismatched_params_with_weight_decay() -> None:
    tx = fx.rmsprop(weight_decay=0.1)
    params = {"a": jnp.ones(2), "layers": [jnp.ones(4), jnp.ones((2, 2))]}
    with pytest.raises(ValueError, match=r"params do not match the state: \['layers'\]\[0\] "
                                         r"has shape \(4,\), expected \(3,\)"):
        tx.update(_P, tx.init(_P), params)


def test_weight_decay_needs_params() -> None:
    tx = fx.rmsprop(weight_decay=0.1)
    with pytest.raises(ValueError, match=r"weight_decay is non-zero, so update\(\) needs params"):
        tx.update(_P, tx.init(_P))
    # Without weight decay params are optional.
    updates, _ = fx.rmsprop().update(_P, fx.rmsprop().init(_P))
    assert jax.tree.structure(updates) == jax.tree.structure(_P)
