"""Tests of Muon (``lucid_fx._src.transforms.muon``) that a row of the table cannot say.

The float64 reference (tests/reference_shape_aware.py) with the iteration in float64;
torch 2.13's numbers step by step, on both faces, with a tolerance derived from the
noise measured here (torch against itself); one batched Newton–Schulz per stack
of equal shapes, equal to one by one; a sharded matrix under GSPMD on eight
devices; shapes kept; torch's recipe (Muon for matrices, AdamW for the rest) on
both faces. The grid's generic checks (errors, state dicts, schedulers, no
recompilation) come from the table in tests/optimizers_under_test.py.

Muon's tolerance against torch. torch runs the iteration in bfloat16, each matrix
product accumulated in float32 and rounded to bfloat16, as ours does (XLA's and
torch's kernels sum in different orders, so a product can round to the next
bfloat16 either way). Measured one step at a time from torch's own state, over
tall, wide and square matrices, as a fraction of the step's largest movement:

- ours against torch: at most 0.0101 (float32 iteration: at most one ulp of θ);
- torch against itself with each gradient nudged by one float32 ulp: up to 0.0130
  (and 0 where the nudge does not change the bfloat16 input);
- torch's bfloat16 iteration against the same in float32: at least 0.0117.

The nudge sets the floor: one bfloat16 rounding of the update, 2⁻⁷ of the
largest element; ours stays within two of them (:data:`BF16_STEP_TOL`), and with
the float32 iteration within two float32 ulps of θ.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optimizers_under_test import CompileCounter
from reference_shape_aware import muon_reference
from reference_shape_aware import newton_schulz as reference_newton_schulz

import lucid_fx as fx
from lucid_fx._src.transforms.muon import newton_schulz

torch = pytest.importorskip(
    "torch", reason="torch is not installed; it is in the test extra: pip install -e '.[test]'"
)
torch_muon = pytest.importorskip("torch.optim._muon", reason="torch < 2.9 has no Muon")

COEFFICIENTS = (3.4445, -4.775, 2.0315)
# How much the default iteration can magnify a rounding: its slope at 0 is a, so five
# iterations carry a relative error of the smallest singular directions up to a⁵.
ITERATION_GAIN = COEFFICIENTS[0] ** 5
SHAPES = [(64, 32), (32, 64), (48, 48), (128, 16)]
CONFIGS = {
    "defaults": dict(lr=0.02),
    "plain": dict(lr=0.02, nesterov=False, weight_decay=0.0),
    "original": dict(lr=0.02, adjust_lr_fn="original", momentum=0.9),
    "match_rms_adamw": dict(lr=0.02, adjust_lr_fn="match_rms_adamw", ns_steps=3),
}


def torch_float32_newton_schulz(grad: Any, coefficients: Any, steps: int, eps: float) -> Any:
    """torch's iteration with its bfloat16 cast removed: the same products in float32."""
    a, b, c = coefficients
    tall = grad.size(0) > grad.size(1)
    x = grad.float().T if tall else grad.float()
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


@contextmanager
def torch_iteration_in(dtype: Any) -> Iterator[None]:
    """torch's Muon with its iteration in bfloat16 (its own) or float32 (patched)."""
    original = torch_muon._zeropower_via_newtonschulz
    if dtype == jnp.float32:
        torch_muon._zeropower_via_newtonschulz = torch_float32_newton_schulz
    try:
        yield
    finally:
        torch_muon._zeropower_via_newtonschulz = original


def torch_step(theta: np.ndarray, buffer: np.ndarray, grad: np.ndarray,
               **config: Any) -> tuple[np.ndarray, np.ndarray]:
    """One step of torch.optim.Muon from (θ, B): returns the new (θ, B)."""
    param = torch.nn.Parameter(torch.tensor(theta))
    param.grad = torch.tensor(grad)
    opt = torch.optim.Muon([param], **config)
    opt.state[param]["momentum_buffer"] = torch.tensor(buffer)
    opt.step()
    return param.detach().numpy(), opt.state[param]["momentum_buffer"].numpy()


def functional_step(theta: np.ndarray, buffer: np.ndarray, grad: np.ndarray,
                    ns_dtype: Any, **config: Any) -> tuple[np.ndarray, np.ndarray]:
    tx = fx.muon(ns_dtype=ns_dtype, **config)
    state = tx.init(jnp.asarray(theta))._replace(momentum_buffer=jnp.asarray(buffer))
    updates, state = jax.jit(tx.update)(jnp.asarray(grad), state, jnp.asarray(theta))
    return np.asarray(optax.apply_updates(jnp.asarray(theta), updates)), np.asarray(
        state.momentum_buffer)


def stateful_step(theta: np.ndarray, buffer: np.ndarray, grad: np.ndarray,
                  ns_dtype: Any, **config: Any) -> tuple[np.ndarray, np.ndarray]:
    """One fx.Muon step from (θ, B), B loaded from a torch state dict as a port would."""
    param = fx.Parameter(jnp.asarray(theta))
    opt = fx.Muon([param], ns_dtype=ns_dtype, **config)
    source = torch.optim.Muon([torch.nn.Parameter(torch.tensor(theta))], **config)
    source.state[source.param_groups[0]["params"][0]]["momentum_buffer"] = torch.tensor(buffer)
    opt.load_state_dict(source.state_dict())
    param.grad = jnp.asarray(grad)
    opt.step()
    return np.asarray(param.value), np.asarray(opt.state[param]["momentum_buffer"])


STEPPERS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "functional": functional_step, "stateful": stateful_step}

# The bfloat16 iteration (torch's default) is the slow tier's: float32's runs fast.
NS_DTYPES = [pytest.param(jnp.bfloat16, marks=pytest.mark.slow), jnp.float32]


def nudged_distance(theta: np.ndarray, buffer: np.ndarray, grad: np.ndarray,
                    step: np.ndarray, **config: Any) -> float:
    """How far torch's own step moves when the gradient moves by one float32 ulp, up
    or down: the floor of any comparison with it."""
    return max(float(np.max(np.abs(torch_step(theta, buffer, np.nextafter(grad, to), **config)[0]
                                   - step))) for to in (np.float32(np.inf), np.float32(-np.inf)))


@pytest.mark.slow  # the fast tier has Muon against the float64 reference, on both faces
@pytest.mark.parametrize("face", sorted(STEPPERS))
@pytest.mark.parametrize("ns_dtype", [jnp.bfloat16, jnp.float32], ids=["bf16", "f32"])
def test_matches_torch_step_by_step(ns_dtype: Any, face: str) -> None:
    """Every configuration, tall, wide and square, three steps each; each step starts
    from torch's θ and B, so the comparison is one step's noise, not a trajectory's.
    The buffer is a lerp of float32 values in both, so it agrees to the ulp.

    With the float32 iteration, θ agrees within two ulps. With torch's bfloat16
    iteration, so do most steps (the same bfloat16 products), and the others by no more than twice
    what a one-ulp nudge of the gradient does to torch's own step (the floor:
    the module docstring has the measurement)."""
    ours: list[float] = []
    nudged: list[float] = []
    within_ulps: list[bool] = []
    for label, config in CONFIGS.items():
        rng = np.random.default_rng(len(label))
        for shape in SHAPES:
            theta = rng.standard_normal(shape).astype(np.float32)
            buffer = np.zeros(shape, np.float32)
            for _ in range(3):
                grad = rng.standard_normal(shape).astype(np.float32)
                with torch_iteration_in(ns_dtype):
                    expected, expected_buffer = torch_step(theta, buffer, grad, **config)
                actual, actual_buffer = STEPPERS[face](theta, buffer, grad, ns_dtype, **config)
                assert actual.shape == shape and actual_buffer.shape == shape
                np.testing.assert_allclose(actual_buffer, expected_buffer, rtol=0,
                                           atol=np.max(np.spacing(np.abs(expected_buffer))))
                close = np.allclose(actual, expected, rtol=0,
                                    atol=2 * np.max(np.spacing(np.abs(expected))))
                within_ulps.append(bool(close))
                if ns_dtype == jnp.bfloat16:
                    movement = float(np.max(np.abs(expected - theta)))
                    ours.append(float(np.max(np.abs(actual - expected))) / movement)
                    nudged.append(nudged_distance(theta, buffer, grad, expected, **config)
                                  / movement)
                theta, buffer = expected, expected_buffer
    if ns_dtype == jnp.float32:
        assert all(within_ulps)
    else:
        assert sum(within_ulps) >= len(within_ulps) / 2, ours
        assert max(ours) <= 2 * max(nudged), (max(ours), max(nudged))


def test_the_nudge_sets_the_floor() -> None:
    """The measurement behind the bfloat16 tolerance, kept honest: a one-ulp nudge of
    the gradient moves torch's step by about one bfloat16 rounding of its largest
    element, and torch's own float32 iteration moves it further, in every case:
    the nudge, the smaller, is the floor."""
    rng = np.random.default_rng(7)
    nudged, other_dtype = [], []
    for shape in SHAPES * 3:
        theta, grad = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
        buffer = (0.3 * rng.standard_normal(shape)).astype(np.float32)
        step, _ = torch_step(theta, buffer, grad, lr=0.02)
        movement = np.max(np.abs(step - theta))
        with torch_iteration_in(jnp.float32):
            float32_step, _ = torch_step(theta, buffer, grad, lr=0.02)
        nudged.append(nudged_distance(theta, buffer, grad, step, lr=0.02) / movement)
        other_dtype.append(np.max(np.abs(float32_step - step)) / movement)
    assert 2**-8 <= max(nudged) <= 4 * 2**-7, nudged
    assert np.median(nudged) < np.median(other_dtype), (nudged, other_dtype)


# The fast tier keeps the defaults; the table's row runs the whole grid (tests/test_family.py).
@pytest.mark.parametrize("label", [
    pytest.param(label, marks=[] if label == "defaults" else [pytest.mark.slow])
    for label in sorted(CONFIGS)])
def test_matches_the_float64_reference(label: str) -> None:
    """The iteration in float64 (``ns_dtype``): ours is the formulas to the last bits,
    over a trajectory of tall, wide and square matrices, functional and stateful."""
    config = CONFIGS[label]
    rng = np.random.default_rng(3)
    shapes = [(16, 8), (8, 16), (12, 12), (16, 8)]
    params = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(6)]
    history, state = muon_reference(params, grads, **config)
    with jax.enable_x64(True):
        tx = fx.muon(ns_dtype=jnp.float64, **config)
        theta = [jnp.asarray(p) for p in params]
        opt_state = tx.init(theta)
        model = [fx.Parameter(jnp.asarray(p)) for p in params]
        opt = fx.Muon(model, ns_dtype=jnp.float64, **config)
        for step, g in enumerate(grads):
            updates, opt_state = tx.update([jnp.asarray(x) for x in g], opt_state, theta)
            theta = optax.apply_updates(theta, updates)
            for p, x in zip(model, g):
                p.grad = jnp.asarray(x)
            opt.step()
            for actual, stateful, expected in zip(theta, model, history[step]):
                np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-12, atol=1e-12)
                np.testing.assert_allclose(np.asarray(stateful.value), expected, rtol=1e-12,
                                           atol=1e-12)
        for actual, expected in zip(opt_state.momentum_buffer, state["momentum_buffer"]):
            np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-12, atol=1e-15)


def test_newton_schulz_orthogonalises() -> None:
    """Ten quintic iterations bring every singular value into the band the
    coefficients aim at (about 0.7 to 1.2), from a matrix of condition number 100,
    in float64 as the reference, and in float32 close to it."""
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.standard_normal((24, 24)))
    v, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    g = u[:, :12] @ np.diag(np.geomspace(1, 100, 12)) @ v.T
    expected = reference_newton_schulz(g, COEFFICIENTS, 10, 1e-7)
    assert np.all(np.abs(np.linalg.svd(expected, compute_uv=False) - 0.95) < 0.3)
    with jax.enable_x64(True):
        exact = newton_schulz(jnp.asarray(g), COEFFICIENTS, 10, 1e-7, jnp.float64)
    np.testing.assert_allclose(np.asarray(exact), expected, rtol=0, atol=1e-13)
    single = newton_schulz(jnp.asarray(g, jnp.float32), COEFFICIENTS, 10, 1e-7, jnp.float32)
    np.testing.assert_allclose(np.asarray(single), expected, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- equal shapes, one stack


def _mixed_model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A transformer block in miniature: four equal attention matrices, an MLP pair,
    and a small 16×8 one."""
    shapes = {"q": (32, 32), "k": (32, 32), "v": (32, 32), "o": (32, 32),
              "up": (32, 128), "down": (128, 32), "small": (16, 8)}
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


@pytest.mark.parametrize("ns_dtype", NS_DTYPES, ids=["bf16", "f32"])
def test_one_batched_iteration_equals_one_by_one(ns_dtype: Any) -> None:
    """A tree's equal-shape matrices run as one stack (jax.vmap of the kernel): each
    matrix's result is what it gets alone, on each face. With the bfloat16
    iteration, to the last bit on this backend; in float32, a batched product
    sums in its own order, an ulp apart. (On another backend the bfloat16
    results may differ by bfloat16 noise, as the two faces may: a multiply-add
    that XLA contracts in one program and not in the other moves U by an ulp,
    which bfloat16 can round the other way.)"""
    rng = np.random.default_rng(1)
    params = _mixed_model(rng)
    grads = [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
             for _ in range(3)]
    tx = fx.muon(lr=0.02, ns_dtype=ns_dtype)
    together = {k: jnp.asarray(v) for k, v in params.items()}
    state = tx.init(together)
    alone = {k: jnp.asarray(v) for k, v in params.items()}
    alone_states = {k: tx.init(v) for k, v in alone.items()}
    model = {k: fx.Parameter(jnp.asarray(v)) for k, v in params.items()}
    opt = fx.Muon(fx.parameters(model), lr=0.02, ns_dtype=ns_dtype)
    singles = {k: fx.Parameter(jnp.asarray(v)) for k, v in params.items()}
    single_opts = {k: fx.Muon([p], lr=0.02, ns_dtype=ns_dtype) for k, p in singles.items()}
    for g in grads:
        updates, state = jax.jit(tx.update)({k: jnp.asarray(v) for k, v in g.items()}, state,
                                            together)
        together = optax.apply_updates(together, updates)
        for k, value in alone.items():
            update, alone_states[k] = jax.jit(tx.update)(jnp.asarray(g[k]), alone_states[k],
                                                         value)
            alone[k] = value + update
            model[k].grad = singles[k].grad = jnp.asarray(g[k])
            single_opts[k].step()
        opt.step()
    for k in params:
        assert together[k].shape == params[k].shape == model[k].shape
        pairs = [(together[k], alone[k]), (model[k].value, singles[k].value)]
        for actual, expected in (tuple(map(np.asarray, pair)) for pair in pairs):
            if ns_dtype == jnp.bfloat16:  # the same bfloat16 products, to the bit
                np.testing.assert_array_equal(actual, expected)
            else:  # a batched float32 product sums in its own order: an ulp per step
                np.testing.assert_allclose(actual, expected, rtol=0, atol=len(grads) * np.max(
                    np.spacing(np.abs(expected))))


def test_equal_shapes_share_one_batched_matmul_chain() -> None:
    """The compiled update of four equal 32×32 matrices holds the iteration's matrix
    products once, batched over four, not four times: XLA's dots count 3 per
    iteration (X·Xᵀ, S·S, (bS + cS²)·X) whatever the number of equal matrices."""
    tree = {name: jnp.ones((32, 32)) for name in "abcd"}
    tx = fx.muon(ns_steps=5, ns_dtype=jnp.float32)
    state = tx.init(tree)
    text = jax.jit(tx.update).lower(tree, state, tree).as_text()
    dots = [line for line in text.splitlines() if "dot_general" in line]
    assert len(dots) == 3 * 5
    assert all("tensor<4x32x32xf32>" in line for line in dots)


def test_a_small_matrix_keeps_its_shape_among_large_ones() -> None:
    """16×8 next to 128×32 and 32×128: each update, buffer and Parameter keeps its
    own shape, on both faces, and so does the state dict torch reads."""
    rng = np.random.default_rng(2)
    params = _mixed_model(rng)
    tx = fx.muon(lr=0.02)
    tree = {k: jnp.asarray(v) for k, v in params.items()}
    state = tx.init(tree)
    updates, state = tx.update(tree, state, tree)
    model = {k: fx.Parameter(jnp.asarray(v)) for k, v in params.items()}
    opt = fx.Muon(fx.parameters(model), lr=0.02)
    for p in model.values():
        p.grad = p.value
    opt.step()
    exported = opt.torch_state_dict()
    for i, k in enumerate(sorted(params)):  # fx.parameters(model) orders a dict by key
        v = params[k]
        assert updates[k].shape == state.momentum_buffer[k].shape == v.shape
        assert model[k].value.shape == opt.state[model[k]]["momentum_buffer"].shape == v.shape
        assert tuple(exported["state"][i]["momentum_buffer"].shape) == v.shape


# ---------------------------------------------------------------- sharding


@pytest.mark.slow  # eight simulated devices, two mesh kinds
@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
def test_a_sharded_matrix_orthogonalises_as_on_one_device(eight_devices: list[Any],
                                                          axis_type: str) -> None:
    """GSPMD partitions the iteration of a matrix sharded over eight devices (a wide
    one by its long side, a tall one by its long side, a square one by rows, and
    two equal ones, stacked), on an Auto and an Explicit mesh, with the float32
    iteration: equal to one device's result up to float32 reduction order (two
    roundings, magnified by the iteration's gain), each update sharded as its
    parameter. The long side sharded costs one all-reduce
    of the short side's Gram matrix per iteration, and nothing else (docs/scaling.md)."""
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    mesh = jax.make_mesh((8,), ("d",), axis_types=(getattr(AxisType, axis_type),),
                         devices=eight_devices)
    rng = np.random.default_rng(4)
    tree = {"wide": rng.standard_normal((32, 256)), "tall": rng.standard_normal((256, 32)),
            "a": rng.standard_normal((64, 64)), "b": rng.standard_normal((64, 64))}
    specs = {"wide": PartitionSpec(None, "d"), "tall": PartitionSpec("d", None),
             "a": PartitionSpec("d", None), "b": PartitionSpec("d", None)}
    tx = fx.muon(lr=0.02, ns_dtype=jnp.float32)
    one = {k: jax.device_put(jnp.asarray(v, jnp.float32), eight_devices[0])
           for k, v in tree.items()}
    expected, _ = jax.jit(tx.update)(one, tx.init(one), one)
    sharded = {k: jax.device_put(jnp.asarray(v, jnp.float32), NamedSharding(mesh, specs[k]))
               for k, v in tree.items()}
    update = jax.jit(tx.update)
    state = tx.init(sharded)
    actual, new_state = update(sharded, state, sharded)
    for k in tree:
        assert actual[k].sharding.is_equivalent_to(sharded[k].sharding, 2), k
        assert new_state.momentum_buffer[k].sharding.is_equivalent_to(sharded[k].sharding, 2)
        error = np.max(np.abs(np.asarray(actual[k]) - np.asarray(expected[k])))
        assert error <= ITERATION_GAIN * 2**-23 * np.max(np.abs(np.asarray(expected[k]))), k
    long_side = {k: sharded[k] for k in ("wide", "tall")}
    hlo = jax.jit(tx.update).lower(long_side, tx.init(long_side), long_side).compile().as_text()
    kinds = re.findall(r"(all-reduce|all-gather|reduce-scatter|collective-permute|all-to-all)"
                       r"(?:-start)?\(", hlo)
    results = re.findall(r"= (.*?) all-reduce(?:-start)?\(", hlo)  # each one's result type(s)
    reduced = sum(math.prod(int(n) for n in dims.split(",") if n)
                  for result in results for dims in re.findall(r"f32\[([\d,]*)\]", result))
    assert set(kinds) == {"all-reduce"}, kinds
    assert reduced == 2 * (5 * 32 * 32 + 1)  # per matrix: a Gram per iteration, and ‖U‖


# ---------------------------------------------------------------- torch's recipe, both faces


@pytest.mark.slow  # two optimizers and a partition on both faces: 5 s of compilation
def test_muon_for_matrices_adamw_for_the_rest_on_both_faces() -> None:
    """torch's recipe: Muon for hidden matrices, AdamW for biases (and embeddings and
    heads). The stateful face as torch writes it (two optimizers), the functional
    face as one transform through ``optax.partition``: the same numbers."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((64, 16)).astype(np.float32)
    y = rng.standard_normal((64, 4)).astype(np.float32)
    init = {"w1": 0.3 * rng.standard_normal((16, 32)), "b1": np.zeros(32),
            "w2": 0.3 * rng.standard_normal((32, 4)), "b2": np.zeros(4)}

    def loss_fn(p: Any) -> Any:
        hidden = jnp.tanh(x @ p["w1"] + p["b1"])
        return jnp.mean((hidden @ p["w2"] + p["b2"] - y) ** 2)

    labels = {k: "muon" if v.ndim == 2 else "adamw" for k, v in init.items()}
    tx = optax.partition({"muon": fx.muon(lr=0.02, ns_dtype=jnp.float32),
                          "adamw": fx.adamw(lr=1e-2)}, labels)
    params = {k: jnp.asarray(v, jnp.float32) for k, v in init.items()}
    state = tx.init(params)
    model = {k: fx.Parameter(jnp.asarray(v, jnp.float32)) for k, v in init.items()}
    hidden = fx.Muon([model["w1"], model["w2"]], lr=0.02, ns_dtype=jnp.float32)
    rest = fx.AdamW([model["b1"], model["b2"]], lr=1e-2)
    first = float(loss_fn(params))
    for _ in range(30):
        updates, state = tx.update(jax.grad(loss_fn)(params), state, params)
        params = optax.apply_updates(params, updates)
        hidden.zero_grad()
        rest.zero_grad()
        fx.backward(loss_fn, model)
        hidden.step()
        rest.step()
    assert float(loss_fn(params)) < 0.5 * first
    for k in init:
        np.testing.assert_allclose(np.asarray(model[k].value), np.asarray(params[k]), rtol=0,
                                   atol=1e-6)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("shape", [(8,), (2, 3, 4), ()], ids=["vector", "3-D", "scalar"])
def test_refuses_what_is_not_a_matrix_as_torch_does(shape: tuple[int, ...]) -> None:
    """torch's constructor raises ValueError for a Parameter that is not 2-D; so do
    ours and ``init``, naming the shape and what to do instead."""
    with pytest.raises(ValueError, match=r"only supports 2D parameters"):
        torch.optim.Muon([torch.nn.Parameter(torch.zeros(shape))])
    good, bad = fx.Parameter(jnp.zeros((4, 4))), fx.Parameter(jnp.zeros(shape))
    with pytest.raises(ValueError, match=rf"only supports 2D parameters.*{shape}.*AdamW"):
        fx.Muon([good, bad])
    opt = fx.Muon([good])
    with pytest.raises(ValueError, match=r"only supports 2D parameters"):
        opt.add_param_group({"params": [bad]})
    assert len(opt.param_groups) == 1
    with pytest.raises(ValueError, match=r"only supports 2D parameters.*\['b'\]"):
        fx.muon().init({"a": jnp.zeros((4, 4)), "b": jnp.zeros(shape)})


def test_refuses_complex_matrices_as_torch_does() -> None:
    param = torch.nn.Parameter(torch.zeros((3, 3), dtype=torch.complex64))
    param.grad = torch.zeros_like(param)
    with pytest.raises(RuntimeError, match="does not support complex"):
        torch.optim.Muon([param]).step()
    with pytest.raises(RuntimeError, match="does not support complex"):
        fx.muon().init(jnp.zeros((3, 3), jnp.complex64))


def test_a_new_ns_steps_compiles_once_more_and_runs_it() -> None:
    """``ns_steps`` is a loop count: written into a group, it compiles the step once
    (a traced count could not unroll the loop), and the step runs that many."""
    rng = np.random.default_rng(6)
    theta, grad = (rng.standard_normal((12, 6)).astype(np.float32) for _ in range(2))
    param = fx.Parameter(jnp.asarray(theta))
    opt = fx.Muon([param], lr=0.1, weight_decay=0.0, momentum=0.0, nesterov=False,
                  ns_dtype=jnp.float32)
    param.grad = jnp.asarray(grad)
    opt.step()
    opt.param_groups[0]["ns_steps"] = 2
    param.grad = jnp.asarray(grad)
    before = np.asarray(param.value)
    with CompileCounter() as counter:
        opt.step()
    assert counter.count >= 1
    expected = before - 0.1 * np.sqrt(2.0) * reference_newton_schulz(grad, COEFFICIENTS, 2, 1e-7)
    np.testing.assert_allclose(np.asarray(param.value), expected, rtol=0, atol=1e-5)
    param.grad = jnp.asarray(grad)
    with CompileCounter() as counter:
        opt.step()
    assert counter.count == 0

