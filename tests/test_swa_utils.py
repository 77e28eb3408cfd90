"""``lucid_fx.swa_utils``: torch's weight averaging (SWA and EMA), both faces.

Checked against torch 2.13's ``torch.optim.swa_utils`` run side by side (values,
``n_averaged``, SWALR's lr sequence float for float, torch's full recipe, state
dicts both ways, ``update_bn``) and against independent float64 NumPy formulas
(the arithmetic mean; the EMA's closed-form weighted sum), in float32 and
float64. Also: the stateful face equals the functional twin bit for bit (one
math), resuming is exact, a new decay compiles nothing, and every bad input
raises its error and changes nothing.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from typing import Any

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given

import lucid_fx as fx
from lucid_fx import swa_utils as su
from lucid_fx._src.stateful import averaging as stateful_averaging

torch = pytest.importorskip("torch", reason="parity is checked against real torch "
                                            "(pip install 'lucid_fx[test]')")
T = torch.optim.swa_utils

# Measured against torch 2.13 on CPU (30 updates of values ~N(0, 1)): our formulas are
# torch's, so what is left is XLA's fused arithmetic against torch's kernels, an ulp or two.
ATOL_F32 = 3e-7  # measured 1.2e-7
ATOL_F64 = 1e-15  # measured 2.2e-16
# torch forms SWA-multi's weight 1/(n+1) as a float32 tensor, also for float64 arrays;
# ours is formed in the arrays' precision (measured 1.6e-8 apart).
ATOL_SWA_MULTI_F64 = 1e-7
# Against the float64 NumPy closed forms (sums in another order than the recurrence).
RTOL_REFERENCE_F32 = 2e-6
RTOL_REFERENCE_F64 = 1e-12
# torch's recipe side by side, 36 SGD steps (torch's matmul and reductions against XLA's).
ATOL_RECIPE_F32 = 1e-6  # measured 6.0e-8
ATOL_RECIPE_F64 = 1e-14  # measured 1.1e-16

SHAPES = [(3, 4), (7,), (), (2, 2, 2), (300,)]
DECAY = 0.9

# kind -> (our keyword arguments, torch's), each a function of decay
KINDS: dict[str, Callable[[float], tuple[dict[str, Any], dict[str, Any]]]] = {
    "swa": lambda d: ({}, {}),
    "swa_multi": lambda d: ({"multi_avg_fn": su.get_swa_multi_avg_fn()},
                            {"multi_avg_fn": T.get_swa_multi_avg_fn()}),
    "ema": lambda d: ({"avg_fn": su.get_ema_avg_fn(d)}, {"avg_fn": T.get_ema_avg_fn(d)}),
    "ema_multi": lambda d: ({"multi_avg_fn": su.get_ema_multi_avg_fn(d)},
                            {"multi_avg_fn": T.get_ema_multi_avg_fn(d)}),
}


def _atol(kind: str, dtype: Any) -> float:
    if np.dtype(dtype) == np.float32:
        return ATOL_F32
    return ATOL_SWA_MULTI_F64 if kind == "swa_multi" else ATOL_F64


def _sequence(dtype: Any, steps: int, seed: int = 0,
              shapes: list[tuple[int, ...]] = SHAPES) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]


def _model(values: list[np.ndarray]) -> dict[str, fx.Parameter]:
    return {f"p{i}": fx.Parameter(v) for i, v in enumerate(values)}


def _torch_model(values: list[np.ndarray]) -> Any:
    return torch.nn.ParameterDict(
        {f"p{i}": torch.nn.Parameter(torch.from_numpy(v.copy())) for i, v in enumerate(values)})


def _store(storage: str, model: dict[str, fx.Parameter]) -> Any:
    """Keeps the model's Parameters where an optimizer would: none (each its own array), one
    group (one buffer, laid out as the average's), or two groups in another order (the
    average gathers its values slot by slot)."""
    params = fx.parameters(model)
    if storage == "one group":
        return fx.SGD(params, lr=0.1)
    if storage == "two groups":
        return fx.SGD([{"params": params[::-2]}, {"params": params[-2::-2]}], lr=0.1)
    return None


def _set(model: dict[str, fx.Parameter], values: list[np.ndarray], tmodel: Any = None) -> None:
    for i, v in enumerate(values):
        model[f"p{i}"].value = v
        if tmodel is not None:
            with torch.no_grad():
                tmodel[f"p{i}"].copy_(torch.from_numpy(v.copy()))


def _values(model: Any) -> list[np.ndarray]:
    return [np.asarray(p.value) for p in fx.parameters(model)]


# ------------------------------------------------------------------ parity with torch


@pytest.mark.parametrize("storage", ["plain", "one group", "two groups"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", KINDS)
def test_values_and_n_averaged_equal_torchs(kind: str, dtype: Any, storage: str) -> None:
    with jax.enable_x64(dtype == np.float64):
        seq = _sequence(dtype, 12)
        model, tmodel = _model(seq[0]), _torch_model(seq[0])
        _store(storage, model)
        ours_kw, theirs_kw = KINDS[kind](DECAY)
        ours, theirs = su.AveragedModel(model, **ours_kw), T.AveragedModel(tmodel, **theirs_kw)
        for values in seq:
            _set(model, values, tmodel)
            ours.update_parameters(model)
            theirs.update_parameters(tmodel)
            assert int(ours.n_averaged) == int(theirs.n_averaged)
        for i, got in enumerate(_values(ours.module)):
            assert got.dtype == dtype
            np.testing.assert_allclose(got, theirs.module[f"p{i}"].detach().numpy(), rtol=0,
                                       atol=_atol(kind, dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_swa_is_the_mean_and_ema_the_closed_form_of_float64_numpy(dtype: Any) -> None:
    rtol = RTOL_REFERENCE_F32 if dtype == np.float32 else RTOL_REFERENCE_F64
    with jax.enable_x64(dtype == np.float64):
        seq = _sequence(dtype, 20, seed=3)
        model = _model(seq[0])
        swa = su.AveragedModel(model)
        ema = su.AveragedModel(model, multi_avg_fn=su.get_ema_multi_avg_fn(DECAY))
        for values in seq:
            _set(model, values)
            swa.update_parameters(model)
            ema.update_parameters(model)
        wide = [np.stack([step[i].astype(np.float64) for step in seq]) for i in range(len(SHAPES))]
        k = len(seq)
        weights = np.array([DECAY ** (k - 1)] + [(1 - DECAY) * DECAY ** (k - i) for i in range(2, k + 1)])
        for i, w in enumerate(wide):
            np.testing.assert_allclose(_values(swa.module)[i], w.mean(axis=0), rtol=rtol, atol=rtol)
            np.testing.assert_allclose(_values(ema.module)[i], np.tensordot(weights, w, axes=1),
                                       rtol=rtol, atol=rtol)


@jax.jit
def _functional_swa(params: Any, state: su.AveragingState) -> su.AveragingState:
    return su.swa_average().update(params, state)


@jax.jit
def _functional_ema(params: Any, state: su.AveragingState, decay: Any) -> su.AveragingState:
    return su.ema_average(decay).update(params, state)  # decay traced: compiled once


@given(
    steps=st.integers(1, 12),
    decay=st.floats(0.0, 1.0),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    seed=st.integers(0, 2**16),
)
def test_property_functional_swa_and_ema_against_float64_formulas(
    steps: int, decay: float, scale: float, seed: int
) -> None:
    """The functional twin, jitted, with decay as data: SWA is the arithmetic mean and EMA
    the weighted sum decay^(k-1)·W_1 + Σ_{i>=2} (1-decay)·decay^(k-i)·W_i."""
    seq = [[scale * v for v in step] for step in _sequence(np.float32, steps, seed, [(5,), (2, 3)])]
    s, e = su.swa_average().init(seq[0]), su.ema_average().init(seq[0])
    for values in seq:
        s, e = _functional_swa(values, s), _functional_ema(values, e, decay)
    assert int(s.n_averaged) == int(e.n_averaged) == steps
    weights = np.array([decay ** (steps - 1)] + [(1 - decay) * decay ** (steps - i)
                                                  for i in range(2, steps + 1)])
    for i in range(2):
        wide = np.stack([step[i].astype(np.float64) for step in seq])
        tol = RTOL_REFERENCE_F32 * scale
        np.testing.assert_allclose(s.average[i], wide.mean(axis=0), rtol=RTOL_REFERENCE_F32, atol=tol)
        np.testing.assert_allclose(e.average[i], np.tensordot(weights, wide, axes=1),
                                   rtol=RTOL_REFERENCE_F32, atol=tol)


def test_the_stateful_face_runs_the_functional_math() -> None:
    """One math: AveragedModel on packed buffers equals weight_average on the leaves, to the
    last bit but where XLA contracts ``d·a + e·c`` into one multiply-add for one shape and not
    for another (measured: the 0-d leaf under get_ema_avg_fn, 1 ulp)."""
    seq = _sequence(np.float32, 8, seed=5)
    for kwargs in KINDS.values():
        ours_kw, _ = kwargs(DECAY)
        model = _model(seq[0])
        _store("two groups", model)
        averaged = su.AveragedModel(model, **ours_kw)
        twin = su.weight_average(**ours_kw)
        state = twin.init(seq[0])
        update = jax.jit(twin.update)
        for values in seq:
            _set(model, values)
            averaged.update_parameters(model)
            state = update(values, state)
        for got, want in zip(_values(averaged.module), state.average):
            np.testing.assert_array_max_ulp(got, np.asarray(want), maxulp=1)


def test_buffers_are_copied_or_averaged_as_torchs() -> None:
    """Array leaves are the model's buffers: copied each update, or with use_buffers=True
    averaged (the float ones) as torch averages its buffers; an integer count is copied."""
    seq = _sequence(np.float32, 6, seed=7, shapes=[(3,), (3,)])

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(3))
            self.register_buffer("stat", torch.zeros(3))

    for use_buffers in (False, True):
        tmodel = Net()
        theirs = T.AveragedModel(tmodel, use_buffers=use_buffers)
        model = {"w": fx.Parameter(seq[0][0]), "stat": jnp.zeros(3), "count": jnp.int32(0)}
        ours = su.AveragedModel(model, use_buffers=use_buffers)
        for k, (w, stat) in enumerate(seq):
            model = {**model, "stat": jnp.asarray(stat), "count": jnp.int32(k)}
            model["w"].value = w
            with torch.no_grad():
                tmodel.w.copy_(torch.from_numpy(w))
                tmodel.stat.copy_(torch.from_numpy(stat))
            ours.update_parameters(model)
            theirs.update_parameters(tmodel)
        np.testing.assert_allclose(ours.module["stat"], theirs.module.stat.numpy(), atol=ATOL_F32)
        np.testing.assert_allclose(ours.module["w"].value, theirs.module.w.detach().numpy(),
                                   atol=ATOL_F32)
        assert int(ours.module["count"]) == len(seq) - 1


def test_every_storage_and_dtype_averages_as_the_float64_formula(eight_devices: list[Any]) -> None:
    """A Parameter sharded over a mesh (its average stays sharded alike), matrices stacked by
    Muon (shape-aware storage), bfloat16 and complex64 Parameters: EMA as in NumPy."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    sharding = NamedSharding(Mesh(np.array(eight_devices), ("d",)), PartitionSpec("d"))
    model = {
        "sharded": fx.Parameter(jax.device_put(jnp.zeros((16, 2)), sharding)),
        "m1": fx.Parameter(jnp.zeros((4, 3))), "m2": fx.Parameter(jnp.zeros((4, 3))),
        "half": fx.Parameter(jnp.zeros(5, jnp.bfloat16)),
        "complex": fx.Parameter(jnp.zeros(3, jnp.complex64)),
    }
    fx.Muon([model["m1"], model["m2"]], lr=0.1)  # stacks the two matrices
    ema = su.AveragedModel(model, multi_avg_fn=su.get_ema_multi_avg_fn(0.5))
    for k in (1, 2, 3):  # values k: the average is 1, then 1.5, then 2.25
        for name, p in model.items():
            p.value = jnp.full(p.shape, k * (1 + 1j) if name == "complex" else k, p.dtype)
        ema.update_parameters(model)
    for name, p in ema.module.items():
        expected = 2.25 * (1 + 1j) if name == "complex" else 2.25
        np.testing.assert_array_equal(np.asarray(p.value), np.full(p.shape, expected, p.dtype))
        assert p.dtype == model[name].dtype
    assert ema.module["sharded"].value.sharding == sharding


def test_the_averaged_model_is_not_averaged_into_itself() -> None:
    model = _params_model()
    averaged = su.AveragedModel(model)
    averaged.update_parameters(model)
    with pytest.raises(ValueError, match=r"model\['b'\] is a Parameter of the averaged model "
                                         r"itself \(swa.module\): pass the model you train"):
        averaged.update_parameters(averaged.module)
    assert int(averaged.n_averaged) == 1
    np.testing.assert_array_equal(averaged.module["w"].value, np.ones(3))


# ------------------------------------------------------------------ custom averaging functions


def _warmup_ema(averaged: Any, current: Any, n: Any) -> Any:
    """An EMA whose decay warms up: min(0.99, (1 + n) / (10 + n)); returns the new average
    (works on torch tensors and JAX arrays alike)."""
    decay = ((1 + n) / (10 + n)).clamp(max=0.99) if torch.is_tensor(n) else jnp.minimum(
        0.99, (1 + n) / (10 + n))
    return decay * averaged + (1 - decay) * current


def _torch_in_place_multi(averaged: list[Any], current: list[Any], n: Any) -> None:
    for a, c in zip(averaged, current):
        a.copy_(_warmup_ema(a, c, n))


def _our_multi(averaged: list[Any], current: list[Any], n: Any) -> list[Any]:
    return [_warmup_ema(a, c, n) for a, c in zip(averaged, current)]


def test_custom_functions_equal_torchs_and_see_each_parameter_in_its_shape() -> None:
    seq = _sequence(np.float32, 10, seed=11)
    seen: list[tuple[int, ...]] = []

    def shapes_seen(averaged: Any, current: Any, n: Any) -> Any:
        seen.append(tuple(averaged.shape))  # at trace time: once per Parameter
        return _warmup_ema(averaged, current, n)

    for ours_kw, theirs_kw in (
        ({"avg_fn": shapes_seen}, {"avg_fn": _warmup_ema}),
        ({"multi_avg_fn": _our_multi}, {"multi_avg_fn": _torch_in_place_multi}),
    ):
        model, tmodel = _model(seq[0]), _torch_model(seq[0])
        _store("one group", model)
        ours, theirs = su.AveragedModel(model, **ours_kw), T.AveragedModel(tmodel, **theirs_kw)
        for values in seq:
            _set(model, values, tmodel)
            ours.update_parameters(model)
            theirs.update_parameters(tmodel)
        for i, got in enumerate(_values(ours.module)):
            np.testing.assert_allclose(got, theirs.module[f"p{i}"].detach().numpy(), atol=ATOL_F32)
    assert set(seen) == set(SHAPES)


def test_a_torch_style_in_place_multi_avg_fn_is_told_to_return_the_values() -> None:
    def in_place(averaged: list[Any], current: list[Any], n: Any) -> None:
        return None  # torch's form: writes into `averaged`, returns nothing

    pattern = r"multi_avg_fn must return the list of new averages.*return the new values"
    model = _model(_sequence(np.float32, 1)[0])
    averaged = su.AveragedModel(model, multi_avg_fn=in_place)
    with pytest.raises(TypeError, match=pattern):
        averaged.update_parameters(model)
    assert int(averaged.n_averaged) == 0
    twin = su.weight_average(multi_avg_fn=in_place)
    with pytest.raises(TypeError, match=pattern):
        twin.update([jnp.ones(2)], twin.init([jnp.ones(2)]))


# ------------------------------------------------------------------ compilations


def test_an_update_is_one_compiled_call_and_a_new_decay_compiles_nothing() -> None:
    """50 small Parameters: one packed buffer, one program compiled at the first update; then
    new decays (torch's factories carry decay as data), new values and counts reuse it."""
    shapes = [(13 + k % 5,) for k in range(50)]
    model = {f"p{k:02d}": fx.Parameter(jnp.full(s, float(k))) for k, s in enumerate(shapes)}
    optimizer = fx.SGD(fx.parameters(model), lr=0.1)
    ema = su.AveragedModel(model, multi_avg_fn=su.get_ema_multi_avg_fn(0.5))
    assert len(ema._packs) == 1
    before = stateful_averaging._update._cache_size()
    ema.update_parameters(model)
    assert stateful_averaging._update._cache_size() == before + 1
    first = model["p00"]
    expected = np.asarray(first.value)
    for decay in (0.9, 0.99, 0.25):
        ema.multi_avg_fn = su.get_ema_multi_avg_fn(decay)
        for p in fx.parameters(model):
            p.grad = jnp.ones(p.shape)
        optimizer.step()  # every value moves by -0.1
        ema.update_parameters(model)
        expected = decay * expected + (1 - decay) * np.asarray(first.value)
    assert stateful_averaging._update._cache_size() == before + 1
    np.testing.assert_allclose(ema.module["p00"].value, expected, rtol=RTOL_REFERENCE_F32)


def test_the_functional_ema_takes_decay_as_data_and_compiles_once() -> None:
    @jax.jit
    def step(params: Any, state: su.AveragingState, decay: jax.Array) -> su.AveragingState:
        return su.ema_average(decay).update(params, state)

    state = su.ema_average().init({"w": jnp.zeros(3)})
    expected = np.zeros(3)
    for k, decay in enumerate((0.5, 0.9, 0.99, 0.999)):
        params = {"w": jnp.full(3, float(k + 1))}
        state = step(params, state, jnp.float32(decay))
        expected = np.full(3, 1.0) if k == 0 else decay * expected + (1 - decay) * (k + 1)
    assert step._cache_size() == 1
    np.testing.assert_allclose(state.average["w"], expected, rtol=RTOL_REFERENCE_F32)


def test_the_functional_twin_composes_with_a_jitted_donated_training_step() -> None:
    tx = fx.sgd(lr=0.1)
    ema = su.ema_average(decay=0.5)

    def train_step(params: Any, opt_state: Any, avg: su.AveragingState) -> Any:
        grads = jax.grad(lambda p: jnp.sum((p["w"] - 1.0) ** 2))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = fx.apply_updates(params, updates)
        return params, opt_state, ema.update(params, avg)

    train_step = jax.jit(train_step, donate_argnums=(0, 1, 2))
    params = {"w": jnp.zeros(2)}
    opt_state, avg = tx.init(params), ema.init(params)
    w, expected = 0.0, 0.0
    for k in range(5):
        params, opt_state, avg = train_step(params, opt_state, avg)
        w = w - 0.1 * 2 * (w - 1.0)
        expected = w if k == 0 else 0.5 * expected + 0.5 * w
    np.testing.assert_allclose(avg.average["w"], [expected] * 2, rtol=RTOL_REFERENCE_F32)
    assert int(avg.n_averaged) == 5


# ------------------------------------------------------------------ SWALR and the recipe


def _lr_optimizers(lrs: tuple[float, ...]) -> tuple[fx.Optimizer, Any]:
    ours = fx.SGD([{"params": [fx.Parameter(jnp.zeros(1))], "lr": lr} for lr in lrs], lr=lrs[0])
    theirs = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "lr": lr}
                              for lr in lrs], lr=lrs[0])
    return ours, theirs


def _lrs(optimizer: Any) -> list[float]:
    return [float(group["lr"]) for group in optimizer.param_groups]


@pytest.mark.parametrize("anneal_epochs", [0, 1, 5])
@pytest.mark.parametrize("anneal_strategy", ["cos", "linear"])
@pytest.mark.parametrize("swa_lr", [0.05, [0.05, 0.002]])
def test_swalr_alone_is_torchs_sequence_float_for_float(
    anneal_epochs: int, anneal_strategy: str, swa_lr: Any
) -> None:
    ours, theirs = _lr_optimizers((0.1, 0.03))
    mine = su.SWALR(ours, swa_lr, anneal_epochs=anneal_epochs, anneal_strategy=anneal_strategy)
    torchs = T.SWALR(theirs, swa_lr, anneal_epochs=anneal_epochs, anneal_strategy=anneal_strategy)
    assert _lrs(ours) == _lrs(theirs)
    for _ in range(anneal_epochs + 3):
        ours.step()
        theirs.step()
        mine.step()
        torchs.step()
        assert _lrs(ours) == _lrs(theirs) and mine.get_last_lr() == torchs.get_last_lr()
    assert [g["swa_lr"] for g in ours.param_groups] == [g["swa_lr"] for g in theirs.param_groups]
    assert set(mine.state_dict()) == set(torchs.state_dict())


def test_a_torch_swalr_state_dict_loads_and_continues_as_torch() -> None:
    ours, theirs = _lr_optimizers((0.1, 0.03))
    torchs = T.SWALR(theirs, 0.01, anneal_epochs=6)
    for _ in range(2):
        theirs.step()
        torchs.step()
    for group, their_group in zip(ours.param_groups, theirs.param_groups):
        group.update({k: v for k, v in their_group.items() if k != "params"})
    mine = su.SWALR(ours, 0.01, anneal_epochs=6)
    mine.load_state_dict(torchs.state_dict())
    assert mine.last_epoch == torchs.last_epoch == 2
    for _ in range(6):
        ours.step()
        theirs.step()
        mine.step()
        torchs.step()
        assert _lrs(ours) == _lrs(theirs)


def _recipe(module: Any, dtype: Any, base: str, anneal_strategy: str) -> tuple[
        list[list[float]], list[np.ndarray], int]:
    """torch's documented recipe, in torch or in lucid_fx: SGD with momentum, a schedule
    until swa_start, then SWALR and the average updated each epoch."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((3, 16, 5)).astype(dtype), rng.standard_normal((3, 16, 2)).astype(dtype)
    w0, b0 = rng.standard_normal((5, 2)).astype(dtype), np.zeros(2, dtype)
    epochs, swa_start = 12, 5
    if module is T:
        model = torch.nn.ParameterDict({"b": torch.nn.Parameter(torch.from_numpy(b0)),
                                        "w": torch.nn.Parameter(torch.from_numpy(w0))})
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        schedulers = torch.optim.lr_scheduler
    else:
        model = {"b": fx.Parameter(b0), "w": fx.Parameter(w0)}
        optimizer = fx.SGD(fx.parameters(model), lr=0.1, momentum=0.9)
        schedulers = fx.lr_scheduler
    swa_model = module.AveragedModel(model)
    scheduler = (schedulers.CosineAnnealingLR(optimizer, T_max=epochs) if base == "cosine"
                 else schedulers.StepLR(optimizer, step_size=2, gamma=0.5))
    swa_scheduler = module.SWALR(optimizer, swa_lr=0.01, anneal_epochs=3,
                                 anneal_strategy=anneal_strategy)

    def loss_fn(m: Any, xb: Any, yb: Any) -> Any:
        return ((xb @ m["w"] + m["b"] - yb) ** 2).mean()

    lrs = []
    for epoch in range(epochs):
        for xb, yb in zip(x, y):
            optimizer.zero_grad()
            if module is T:
                loss_fn(model, torch.from_numpy(xb), torch.from_numpy(yb)).backward()
            else:
                fx.backward(loss_fn, model, xb, yb)
            optimizer.step()
        if epoch > swa_start:
            swa_model.update_parameters(model)
            swa_scheduler.step()
        else:
            scheduler.step()
        lrs.append(_lrs(optimizer))
    if module is T:
        averaged = [swa_model.module[k].detach().numpy() for k in ("b", "w")]
    else:
        averaged = [np.asarray(swa_model.module[k].value) for k in ("b", "w")]
    return lrs, averaged, int(swa_model.n_averaged)


@pytest.mark.parametrize("anneal_strategy", ["cos", "linear"])
@pytest.mark.parametrize("base", ["cosine", "step"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torchs_recipe_gives_torchs_lrs_and_average(dtype: Any, base: str, anneal_strategy: str) -> None:
    with jax.enable_x64(dtype == np.float64):
        ours = _recipe(su, dtype, base, anneal_strategy)
    theirs = _recipe(T, dtype, base, anneal_strategy)
    assert ours[0] == theirs[0]  # lr per epoch, float for float
    assert ours[2] == theirs[2] == 6
    atol = ATOL_RECIPE_F32 if dtype == np.float32 else ATOL_RECIPE_F64
    for got, want in zip(ours[1], theirs[1]):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=atol, atol=atol)


# ------------------------------------------------------------------ state dicts


def _run(averaged: su.AveragedModel, model: dict[str, fx.Parameter],
         seq: list[list[np.ndarray]]) -> None:
    for values in seq:
        _set(model, values)
        averaged.update_parameters(model)


@pytest.mark.parametrize("via", ["pickle", "torch.save"])
def test_resuming_from_a_state_dict_continues_bit_for_bit(via: str) -> None:
    seq = _sequence(np.float32, 10, seed=13)
    model = _model(seq[0])
    _store("one group", model)
    kwargs = {"multi_avg_fn": su.get_ema_multi_avg_fn(0.7)}
    whole = su.AveragedModel(model, **kwargs)
    _run(whole, model, seq)

    model = _model(seq[0])
    first = su.AveragedModel(model, **kwargs)
    _run(first, model, seq[:4])
    if via == "pickle":
        saved = pickle.loads(pickle.dumps(first.state_dict()))
    else:
        buffer = io.BytesIO()
        torch.save(first.state_dict(), buffer)
        saved = torch.load(io.BytesIO(buffer.getvalue()))  # weights_only=True, torch's default
        assert all(torch.is_tensor(v) for v in saved.values())
    model = _model(seq[3])
    resumed = su.AveragedModel(model, **kwargs)
    assert resumed.load_state_dict(saved) == ([], [])
    assert int(resumed.n_averaged) == 4
    _run(resumed, model, seq[4:])
    assert int(resumed.n_averaged) == int(whole.n_averaged) == 10
    for got, want in zip(_values(resumed.module), _values(whole.module)):
        np.testing.assert_array_equal(got, want)


class _TorchNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(),
                                          torch.nn.Linear(3, 2))


def _our_net() -> dict[str, Any]:
    """_TorchNet's Parameters as a tree with the same dotted names (``layers.0.weight``, ...)."""
    return {"layers": {str(i): {"weight": fx.Parameter(jnp.zeros(shape)),
                                "bias": fx.Parameter(jnp.zeros(shape[0]))}
                       for i, shape in ((0, (3, 4)), (2, (2, 3)))}}


@pytest.mark.parametrize("via", ["in memory", "torch.save"])
def test_a_torch_state_dict_loads_by_name_and_ours_loads_into_torch(via: str) -> None:
    torch.manual_seed(0)
    tnet = _TorchNet()
    theirs = T.AveragedModel(tnet, multi_avg_fn=T.get_ema_multi_avg_fn(0.8))
    for _ in range(3):
        with torch.no_grad():
            for p in tnet.parameters():
                p.add_(torch.randn_like(p))
        theirs.update_parameters(tnet)
    saved = theirs.state_dict()
    if via == "torch.save":
        buffer = io.BytesIO()
        torch.save(saved, buffer)
        saved = torch.load(io.BytesIO(buffer.getvalue()))
    net = _our_net()
    ours = su.AveragedModel(net, multi_avg_fn=su.get_ema_multi_avg_fn(0.8))
    ours.load_state_dict(saved)
    assert int(ours.n_averaged) == 3
    mine = ours.state_dict()
    assert sorted(mine) == sorted(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        np.testing.assert_array_equal(mine[key], value.numpy())
    # ... and back: torch loads ours (its default torch.load reads our arrays as tensors).
    buffer = io.BytesIO()
    torch.save(mine, buffer)
    back = T.AveragedModel(_TorchNet(), multi_avg_fn=T.get_ema_multi_avg_fn(0.8))
    back.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    assert int(back.n_averaged) == 3
    for (name, p), (_, q) in zip(back.module.named_parameters(), theirs.module.named_parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    # Both go on alike, from the torch model's weights (loaded by name).
    fx.weights.load_state_dict(net, tnet.state_dict())
    for p in fx.parameters(net):
        p.value = p.value + 1.0
    with torch.no_grad():
        for p in tnet.parameters():
            p.add_(1.0)
    ours.update_parameters(net)
    theirs.update_parameters(tnet)
    for key, value in theirs.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[key], value.numpy(), atol=ATOL_F32)


def test_tied_parameters_stay_tied_and_are_named_under_each_path() -> None:
    shared = fx.Parameter(jnp.ones(2))
    model = {"a": shared, "b": [shared, fx.Parameter(jnp.zeros(3))]}
    averaged = su.AveragedModel(model)
    assert averaged.module["a"] is averaged.module["b"][0]
    assert averaged.module["a"] is not shared
    assert sorted(averaged.state_dict()) == ["module.a", "module.b.0", "module.b.1", "n_averaged"]
    saved = averaged.state_dict()
    saved["module.b.0"] = saved["module.b.0"] + 1
    with pytest.raises(ValueError, match=r"'module.a' and 'module.b.0' are the same Parameter"):
        averaged.load_state_dict(saved)


# ------------------------------------------------------------------ using the average


def test_the_module_is_a_model_for_backward_and_evaluation() -> None:
    model = {"w": fx.Parameter(jnp.array([1.0, 2.0]))}
    optimizer = fx.SGD(fx.parameters(model), lr=0.25)  # w ← w - 0.25·2w = w / 2
    averaged = su.AveragedModel(model)
    for _ in range(3):
        optimizer.zero_grad()
        fx.backward(lambda m: jnp.sum(m["w"] ** 2), model)
        optimizer.step()
        averaged.update_parameters(model)
    # w halves each step: 0.5·(1, 2), 0.25·(1, 2), 0.125·(1, 2); their mean.
    np.testing.assert_allclose(averaged.module["w"].value, [0.875 / 3, 1.75 / 3], rtol=1e-6)
    loss = fx.backward(lambda m: jnp.sum(m["w"] ** 2), averaged.module)
    np.testing.assert_allclose(averaged.module["w"].grad, 2 * averaged.module["w"].value)
    np.testing.assert_allclose(float(loss), float(jnp.sum(fx.values(averaged.module)["w"] ** 2)))


def test_the_average_can_live_on_a_named_device() -> None:
    model = {"w": fx.Parameter(jnp.ones(3))}
    averaged = su.AveragedModel(model, device="cpu")
    averaged.update_parameters(model)
    value = averaged.module["w"].value
    assert value.committed and value.sharding.device_set == {jax.devices("cpu")[0]}


def test_an_optimizer_over_the_average_is_refused_by_update_parameters() -> None:
    model = {"w": fx.Parameter(jnp.ones(3))}
    averaged = su.AveragedModel(model)
    fx.SGD(fx.parameters(averaged.module), lr=0.1)
    with pytest.raises(RuntimeError, match=r"taken over by an optimizer created later"):
        averaged.update_parameters(model)


# ------------------------------------------------------------------ update_bn


def test_update_bn_recomputes_flax_batchnorm_statistics_as_torch() -> None:
    """Means equal torch's; variances are Flax's biased ones: torch's unbiased·(n-1)/n."""
    nnx = pytest.importorskip(
        "flax.nnx", reason="update_bn recomputes Flax NNX BatchNorm statistics (the test extra)")
    torch.manual_seed(0)
    tnet = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    net = nnx.Sequential(nnx.Linear(4, 3, rngs=nnx.Rngs(0)),
                         nnx.BatchNorm(3, use_running_average=True, rngs=nnx.Rngs(0)))
    net.layers[0].kernel[...] = jnp.asarray(tnet[0].weight.detach().numpy().T)
    net.layers[0].bias[...] = jnp.asarray(tnet[0].bias.detach().numpy())
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((8, 4)).astype(np.float32) * 3 + 1, None) for _ in range(5)]
    T.update_bn([torch.from_numpy(x) for x, _ in batches], tnet)
    su.update_bn(batches, net)  # a (input, target) pair: the input is its first element
    bn = net.layers[1]
    np.testing.assert_allclose(bn.mean[...], tnet[1].running_mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(bn.var[...], tnet[1].running_var.numpy() * 7 / 8, rtol=1e-5)
    assert bn.use_running_average is True and bn.momentum == 0.99  # the model's own modes
    before = np.asarray(bn.mean[...])
    su.update_bn([], net)  # no batches: nothing to average
    np.testing.assert_array_equal(bn.mean[...], before)
    plain = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    su.update_bn([jnp.ones((2, 2))], plain)  # no batch norm: nothing to do


# ------------------------------------------------------------------ bad input


def _params_model() -> dict[str, fx.Parameter]:
    return {"w": fx.Parameter(jnp.ones(3)), "b": fx.Parameter(jnp.zeros(2))}


BAD_CONSTRUCTION: dict[str, tuple[Callable[[], Any], type[Exception], str]] = {
    "a dict of arrays": (lambda: su.AveragedModel({"w": jnp.ones(3)}), TypeError,
                         r"holds none: pass the tree of Parameters.*ema_average"),
    "both functions": (lambda: su.AveragedModel(_params_model(), avg_fn=su.get_swa_avg_fn(),
                                                multi_avg_fn=su.get_swa_multi_avg_fn()),
                       ValueError, r"give avg_fn or multi_avg_fn, not both"),
    "avg_fn not callable": (lambda: su.AveragedModel(_params_model(), avg_fn=3), TypeError,
                            r"avg_fn must be a function .* got int"),
    "use_buffers not a flag": (lambda: su.AveragedModel(_params_model(), use_buffers="yes"),
                               ValueError, r"Invalid use_buffers value: 'yes'"),
    "unknown device": (lambda: su.AveragedModel(_params_model(), device="tpu:7"), ValueError,
                       r"Invalid device value: 'tpu:7'"),
    "device index out of range": (lambda: su.AveragedModel(_params_model(), device=99),
                                  ValueError, r"Invalid device value: 99"),
    "device of another type": (lambda: su.AveragedModel(_params_model(), device=1.5), TypeError,
                               r"Invalid device value: 1.5"),
    "an integer Parameter": (lambda: su.AveragedModel({"n": fx.Parameter(jnp.arange(3))}),
                             TypeError, r"floating-point Parameters, but model\['n'\] has dtype int32"),
    "decay above 1": (lambda: su.get_ema_avg_fn(1.5), ValueError,
                      r"Invalid decay value: 1.5 \(expected a number in \[0.0, 1.0\]\)"),
    "decay below 0": (lambda: su.get_ema_multi_avg_fn(-0.1), ValueError,
                      r"Invalid decay value: -0.1"),
    "decay nan": (lambda: su.ema_average(float("nan")), ValueError, r"Invalid decay value: nan"),
    "functional: both functions": (lambda: su.weight_average(su.get_swa_avg_fn(),
                                                             su.get_swa_multi_avg_fn()),
                                   ValueError, r"weight_average: give avg_fn or multi_avg_fn"),
    "functional: integer leaves": (lambda: su.swa_average().init({"n": jnp.arange(2)}), TypeError,
                                   r"weight_average optimizes floating-point parameters only"),
    "functional: another state": (lambda: su.swa_average().update({"w": jnp.ones(2)}, ()),
                                  TypeError, r"state must be the AveragingState made by init"),
    "functional: other params": (
        lambda: su.swa_average().update({"v": jnp.ones(2)}, su.swa_average().init({"w": jnp.ones(2)})),
        ValueError, r"params do not match the average"),
    "update_bn on a tree": (lambda: su.update_bn([jnp.ones(2)], _params_model()), TypeError,
                            r"update_bn takes a Flax NNX model .* use_buffers=True"),
}


@pytest.mark.parametrize("name", BAD_CONSTRUCTION)
def test_bad_construction_raises_naming_the_argument(name: str) -> None:
    make, error, pattern = BAD_CONSTRUCTION[name]
    with pytest.raises(error, match=pattern):
        make()


def _bad_updates() -> dict[str, tuple[Callable[[dict[str, Any]], Any], type[Exception], str]]:
    return {
        "arrays for Parameters": (lambda m: fx.values(m), TypeError,
                                  (r"model\['b'\] is a ArrayImpl where the averaged model has an "
                                  r"fx.Parameter.*swa_utils.ema_average")),
        "another structure": (lambda m: {"w": m["w"]}, ValueError,
                              r"the model's Parameters do not match the averaged model's"),
        "another shape": (lambda m: {**m, "b": fx.Parameter(jnp.zeros(5))}, ValueError,
                          (r"model\['b'\] has shape \(5,\) and dtype float32; the averaged "
                          r"model's has \(2,\)")),
        "another dtype": (lambda m: {**m, "b": fx.Parameter(jnp.zeros(2, jnp.bfloat16))},
                          ValueError, r"dtype bfloat16; the averaged model's has \(2,\) and float32"),
    }


@pytest.mark.parametrize("name", list(_bad_updates()))
def test_a_bad_model_in_update_parameters_raises_and_changes_nothing(name: str) -> None:
    model = _params_model()
    averaged = su.AveragedModel(model)
    averaged.update_parameters(model)
    before = averaged.state_dict()
    change, error, pattern = _bad_updates()[name]
    with pytest.raises(error, match=pattern):
        averaged.update_parameters(change(model))
    after = averaged.state_dict()
    assert after.keys() == before.keys() and all(np.array_equal(after[k], before[k]) for k in before)


def _bad_state_dicts(good: dict[str, Any]) -> dict[str, tuple[Any, type[Exception], str]]:
    return {
        "not a mapping": ([1, 2], TypeError, r"Expected state_dict to be dict-like, got list"),
        "missing and unexpected": ({**{k: v for k, v in good.items() if k != "module.b"},
                                    "module.c": np.ones(2, np.float32)}, ValueError,
                                   r"missing \['module.b'\], unexpected \['module.c'\]"),
        "wrong shape": ({**good, "module.w": np.ones(4, np.float32)}, ValueError,
                        r"'module.w': expected shape \(3,\) and dtype float32, got shape \(4,\)"),
        "wrong dtype": ({**good, "module.w": np.ones(3, np.float64)}, ValueError,
                        (r"'module.w': expected shape \(3,\) and dtype float32, got shape \(3,\) "
                        r"and dtype float64")),
        "not an array": ({**good, "module.w": [1.0, 2.0, 3.0]}, TypeError,
                         r"'module.w' is a list; expected a NumPy or JAX array or a torch tensor"),
        "negative count": ({**good, "n_averaged": np.int64(-1)}, ValueError,
                           r"'n_averaged': expected an integer >= 0"),
        "float count": ({**good, "n_averaged": 2.5}, ValueError,
                        r"'n_averaged': expected an integer >= 0"),
        "strict not a flag": (good, ValueError, r"Invalid strict value"),
    }


@pytest.mark.parametrize("name", list(_bad_state_dicts({})))
def test_a_bad_state_dict_raises_and_changes_nothing(name: str) -> None:
    model = _params_model()
    averaged = su.AveragedModel(model)
    averaged.update_parameters(model)
    before = averaged.state_dict()
    saved, error, pattern = _bad_state_dicts(dict(before))[name]
    strict: Any = "no" if name == "strict not a flag" else True
    with pytest.raises(error, match=pattern):
        averaged.load_state_dict(saved, strict=strict)
    after = averaged.state_dict()
    assert all(np.array_equal(after[k], before[k]) for k in before)


def test_a_partial_state_dict_loads_when_not_strict_and_says_what_it_left_out() -> None:
    model = _params_model()
    averaged = su.AveragedModel(model)
    result = averaged.load_state_dict({"module.w": np.full(3, 2.0, np.float32), "extra": 1},
                                      strict=False)
    assert result == (["n_averaged", "module.b"], ["extra"])
    assert result.missing_keys == ["n_averaged", "module.b"]
    np.testing.assert_array_equal(averaged.module["w"].value, [2.0, 2.0, 2.0])
    assert int(averaged.n_averaged) == 0


BAD_SWALR: dict[str, tuple[dict[str, Any], type[Exception], str]] = {
    "negative swa_lr": ({"swa_lr": -0.1}, ValueError, r"Invalid swa_lr value: -0.1"),
    "swa_lr per group, wrong count": ({"swa_lr": [0.1]}, ValueError,
                                      (r"Invalid swa_lr value: \[0.1\] \(1 values; the optimizer "
                                      r"has 2 param groups")),
    "unknown strategy": ({"swa_lr": 0.1, "anneal_strategy": "exp"}, ValueError,
                         r"Invalid anneal_strategy value: 'exp' \(expected one of \['cos', 'linear'\]\)"),
    "negative anneal_epochs": ({"swa_lr": 0.1, "anneal_epochs": -1}, ValueError,
                               r"Invalid anneal_epochs value: -1 \(expected an integer >= 0\)"),
    "fractional anneal_epochs": ({"swa_lr": 0.1, "anneal_epochs": 2.5}, ValueError,
                                 r"Invalid anneal_epochs value: 2.5"),
}


@pytest.mark.parametrize("name", BAD_SWALR)
def test_bad_swalr_arguments_raise_and_change_nothing(name: str) -> None:
    optimizer, _ = _lr_optimizers((0.1, 0.03))
    before = [dict(g) for g in optimizer.param_groups]
    kwargs, error, pattern = BAD_SWALR[name]
    with pytest.raises(error, match=pattern):
        su.SWALR(optimizer, **kwargs)
    assert [dict(g) for g in optimizer.param_groups] == before


def test_swalr_needs_a_stateful_fx_optimizer() -> None:
    _, theirs = _lr_optimizers((0.1,))
    with pytest.raises(TypeError, match=r"SWALR needs a stateful lucid_fx optimizer"):
        su.SWALR(theirs, 0.1)


def test_under_jit_every_stateful_call_raises_and_changes_nothing() -> None:
    model = _params_model()
    averaged = su.AveragedModel(model)
    saved = averaged.state_dict()

    def under_jit(call: Callable[[], Any]) -> None:
        @jax.jit
        def traced(x: jax.Array) -> jax.Array:
            call()
            return x

        with pytest.raises(RuntimeError, match=r"was called under a JAX transformation.*"
                                               r"functional face"):
            traced(jnp.ones(()))

    under_jit(lambda: su.AveragedModel(model))
    under_jit(lambda: averaged.update_parameters(model))
    under_jit(lambda: averaged.load_state_dict(saved))
    optimizer, _ = _lr_optimizers((0.1,))
    under_jit(lambda: su.SWALR(optimizer, 0.01))
    assert int(averaged.n_averaged) == 0 and "swa_lr" not in optimizer.param_groups[0]


def test_reprs_say_what_averages() -> None:
    averaged = su.AveragedModel(_params_model(), multi_avg_fn=su.get_ema_multi_avg_fn(0.99))
    assert repr(averaged) == ("AveragedModel(n_averaged=0, parameters=2, "
                              "averaging=get_ema_multi_avg_fn(decay=0.99), use_buffers=False)")
    assert repr(su.get_swa_avg_fn()) == "get_swa_avg_fn()"
