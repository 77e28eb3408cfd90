"""Migrating a run between ``torch.optim.RMSprop`` and ``fx.RMSprop``, against real torch.

torch keeps lr out of its momentum buffer, the page keeps it in (b = lr·b_torch), so the
conversion multiplies or divides by each group's own lr; torch's step is a float tensor,
ours int32. Each test trains one side, moves the state across, and checks that both sides
then continue the same way for a constant lr. tests/test_family.py moves every
optimizer's state both ways, for every flag combination (one lr for every group).
"""

from __future__ import annotations

import copy
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
from optimizers_under_test import ROWS
from reference import max_rel_error

import lucid_fx as fx
from lucid_fx._src.interop import torch as torch_compat

torch = pytest.importorskip("torch", reason="the migration tests run against real torch "
                                            "(pip install 'lucid_fx[test]')")

RTOL_F32 = 2e-5  # float32: torch and lucid_fx round differently (lr·g/d vs lr·(g/d))
BEFORE, AFTER = 5, 10  # steps on the first side, then on both
LRS = (0.1, 0.01)  # one lr per group, so each buffer is converted with its own group's lr

# The conversion touches the momentum buffer only: momentum alone, and with every flag.
ROW = ROWS["rmsprop"]
CONFIGS = {label: ROW.grid[label] for label in ("momentum=0.9", ROW.richest)}
SHAPES = ((3, 2), (2,))


def grads_at(t: int, dtype: Any = np.float32) -> list[np.ndarray]:
    rng = np.random.default_rng(100 + t)
    return [rng.standard_normal(shape).astype(dtype) for shape in SHAPES]


def initial_values(dtype: Any = np.float32) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(shape).astype(dtype) for shape in SHAPES]


class TorchSide:
    def __init__(self, values: list[np.ndarray], **hyper: Any) -> None:
        self.params = [torch.nn.Parameter(torch.tensor(v)) for v in values]
        self.optimizer = torch.optim.RMSprop(
            [{"params": [p], "lr": lr} for p, lr in zip(self.params, LRS)], **hyper)

    def steps(self, first: int, count: int) -> None:
        for t in range(first, first + count):
            for p, g in zip(self.params, grads_at(t)):
                p.grad = torch.tensor(g)
            self.optimizer.step()

    def values(self) -> list[np.ndarray]:
        return [p.detach().numpy().copy() for p in self.params]


class LucidSide:
    def __init__(self, values: list[np.ndarray], **hyper: Any) -> None:
        self.params = [fx.Parameter(v) for v in values]
        self.optimizer = fx.RMSprop(
            [{"params": [p], "lr": lr} for p, lr in zip(self.params, LRS)], **hyper)

    def steps(self, first: int, count: int) -> None:
        for t in range(first, first + count):
            for p, g in zip(self.params, grads_at(t)):
                p.grad = jnp.asarray(g)
            self.optimizer.step()

    def values(self) -> list[np.ndarray]:
        return [np.asarray(p.value) for p in self.params]


def numpy_copy(torch_state_dict: dict[str, Any]) -> dict[str, Any]:
    """torch's state dict with every tensor turned into a NumPy array (group keys kept)."""
    out = copy.deepcopy(torch_state_dict)
    for entry in out["state"].values():
        for key, value in entry.items():
            entry[key] = value.numpy().copy()
    return out


def assert_same_run(lucid: LucidSide, reference: TorchSide) -> None:
    for ours, theirs in zip(lucid.values(), reference.values()):
        assert max_rel_error(ours, theirs) <= RTOL_F32


@pytest.mark.parametrize("values_as", ["tensors", "numpy"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_torch_state_dict_loads_and_continues_as_torch(config: str, values_as: str) -> None:
    hyper = CONFIGS[config]
    theirs = TorchSide(initial_values(), **hyper)
    theirs.steps(0, BEFORE)
    sd = theirs.optimizer.state_dict()
    ours = LucidSide(theirs.values(), **hyper)
    ours.optimizer.load_state_dict(sd if values_as == "tensors" else numpy_copy(sd))

    # The conversion, checked entry by entry against torch's own numbers.
    for i, lr in enumerate(LRS):
        entry, torch_entry = ours.optimizer.state_dict()["state"][i], sd["state"][i]
        assert entry["step"].dtype == np.int32 and int(entry["step"]) == BEFORE
        assert np.array_equal(entry["square_avg"], torch_entry["square_avg"].numpy())
        if hyper.get("centered"):
            assert np.array_equal(entry["grad_avg"], torch_entry["grad_avg"].numpy())
        if hyper.get("momentum"):
            expected = (lr * torch_entry["momentum_buffer"].numpy().astype(np.float64))
            assert np.array_equal(entry["momentum_buffer"], expected.astype(np.float32))
        assert set(entry) == set(torch_entry)
    assert [g["lr"] for g in ours.optimizer.param_groups] == list(LRS)
    for key in ("foreach", "capturable", "differentiable"):  # kept as torch keeps them
        assert ours.optimizer.param_groups[0][key] == sd["param_groups"][0][key]

    theirs.steps(BEFORE, AFTER)
    ours.steps(BEFORE, AFTER)
    assert_same_run(ours, theirs)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_export_loads_into_torch_and_continues_the_same(config: str) -> None:
    hyper = CONFIGS[config]
    ours = LucidSide(initial_values(), **hyper)
    ours.steps(0, BEFORE)
    exported = ours.optimizer.torch_state_dict()
    theirs = TorchSide(ours.values(), **hyper)
    theirs.optimizer.load_state_dict(exported)

    loaded = theirs.optimizer.state_dict()
    for i, lr in enumerate(LRS):
        entry = loaded["state"][i]
        assert entry["step"].dtype == torch.float32 and float(entry["step"]) == BEFORE
        if hyper.get("momentum"):
            ours_b = ours.optimizer.state_dict()["state"][i]["momentum_buffer"]
            assert max_rel_error(entry["momentum_buffer"].numpy() * lr, ours_b) <= RTOL_F32
    for group in loaded["param_groups"]:
        assert {"foreach", "capturable", "differentiable"} <= set(group)
        assert "skip_nonfinite" not in group and "state_dtype" not in group

    theirs.steps(BEFORE, AFTER)
    ours.steps(BEFORE, AFTER)
    assert_same_run(ours, theirs)


@pytest.mark.parametrize("lr, exact", [(0.125, True), (0.1, False)], ids=["lr=2^-3", "lr=0.1"])
def test_round_trip_through_torch_form_keeps_the_state(lr: float, exact: bool) -> None:
    """lucid_fx → torch form → lucid_fx: b/lr·lr is exact for a power of two, else within an ulp."""
    params = [fx.Parameter(v) for v in initial_values()]
    optimizer = fx.RMSprop(params, lr=lr, momentum=0.9, centered=True, skip_nonfinite=True)
    for t in range(3):
        for p, g in zip(params, grads_at(t)):
            p.grad = jnp.asarray(g)
        optimizer.step()
    before = optimizer.state_dict()
    optimizer.load_state_dict(optimizer.torch_state_dict())
    after = optimizer.state_dict()
    for i in before["state"]:
        # torch has no skipped-step counter: it is dropped on export and restarts at 0.
        assert set(after["state"][i]) == set(before["state"][i]) - {"skipped"}
        for key, value in after["state"][i].items():
            value = before["state"][i][key]
            if exact or key != "momentum_buffer":
                assert np.array_equal(after["state"][i][key], value), key
            else:
                ulp = np.spacing(np.abs(value))
                assert np.all(np.abs(after["state"][i][key] - value) <= ulp), key
    assert after["param_groups"] == before["param_groups"]


def test_torch_to_lucid_to_torch_gives_torch_back() -> None:
    theirs = TorchSide(initial_values(), momentum=0.9, centered=True)
    theirs.steps(0, BEFORE)
    sd = theirs.optimizer.state_dict()
    ours = LucidSide(theirs.values(), momentum=0.9, centered=True)
    ours.optimizer.load_state_dict(sd)
    back = ours.optimizer.torch_state_dict()
    assert [sorted(g) for g in back["param_groups"]] == [sorted(g) for g in sd["param_groups"]]
    for i in sd["state"]:
        assert set(back["state"][i]) == set(sd["state"][i])
        for key, value in sd["state"][i].items():
            assert back["state"][i][key].dtype == value.dtype
            assert max_rel_error(back["state"][i][key].numpy(), value.numpy()) <= RTOL_F32, key


def test_scheduler_and_torch_only_keys_are_accepted_and_dropped() -> None:
    theirs = TorchSide(initial_values(), momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(theirs.optimizer, lambda epoch: 1.0)
    theirs.steps(0, BEFORE)
    scheduler.step()
    sd = theirs.optimizer.state_dict()
    assert "initial_lr" in sd["param_groups"][0]
    ours = LucidSide(theirs.values(), momentum=0.9)
    ours.optimizer.load_state_dict(sd)
    assert set(ours.optimizer.param_groups[0]) == {"params", *ours.optimizer.defaults}
    theirs.steps(BEFORE, AFTER)
    ours.steps(BEFORE, AFTER)
    assert_same_run(ours, theirs)


def test_lr_zero_converts_zero_buffers_and_the_documented_workaround_works() -> None:
    # Zero gradients leave torch's buffer at zero: nothing is lost, lr 0 loads.
    theirs = TorchSide(initial_values(), momentum=0.9)
    for group in theirs.optimizer.param_groups:
        group["lr"] = 0.0
    for p in theirs.params:
        p.grad = torch.zeros_like(p)
    theirs.optimizer.step()
    ours = LucidSide(theirs.values(), momentum=0.9)
    ours.optimizer.load_state_dict(theirs.optimizer.state_dict())
    state = ours.optimizer.state_dict()["state"]
    assert all(not np.any(entry["momentum_buffer"]) for entry in state.values())
    assert ours.optimizer.torch_state_dict()["param_groups"][0]["lr"] == 0.0

    # A non-zero buffer with lr 0 is refused (tests/test_reliability.py); the message's
    # advice: write the next step's lr into the dict, then torch and lucid_fx agree.
    theirs = TorchSide(initial_values(), momentum=0.9)
    theirs.steps(0, BEFORE)
    sd = theirs.optimizer.state_dict()
    for group in sd["param_groups"]:
        group["lr"] = 0.0
    with pytest.raises(ValueError, match=r"param_groups\[0\] has lr 0"):
        LucidSide(theirs.values(), momentum=0.9).optimizer.load_state_dict(sd)
    for group, lr in zip(sd["param_groups"], LRS):
        group["lr"] = lr
    ours = LucidSide(theirs.values(), momentum=0.9)
    ours.optimizer.load_state_dict(sd)
    theirs.steps(BEFORE, AFTER)
    ours.steps(BEFORE, AFTER)
    assert_same_run(ours, theirs)


def test_bfloat16_state_converts_bit_for_bit() -> None:
    p = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    optimizer = torch.optim.RMSprop([p], lr=0.5, momentum=0.9, centered=True)
    for t in range(3):
        p.grad = torch.linspace(-1, 1 + t, 4, dtype=torch.bfloat16)
        optimizer.step()
    sd = optimizer.state_dict()
    ours = fx.RMSprop([fx.Parameter(jnp.ones(4, jnp.bfloat16))])
    ours.load_state_dict(sd)
    entry = ours.state_dict()["state"][0]
    for key in ("square_avg", "grad_avg"):
        assert entry[key].dtype == jnp.bfloat16
        assert np.array_equal(entry[key].astype(np.float32), sd["state"][0][key].float().numpy())
    expected = (0.5 * sd["state"][0]["momentum_buffer"].double().numpy()).astype(jnp.bfloat16)
    assert np.array_equal(entry["momentum_buffer"], expected)


def test_only_torch_state_dicts_are_treated_as_torch() -> None:
    ours = LucidSide(initial_values(), momentum=0.9)
    ours.steps(0, 2)
    theirs = TorchSide(initial_values(), momentum=0.9)
    theirs.steps(0, 2)
    assert not torch_compat.is_torch_state_dict(ours.optimizer.state_dict())
    assert torch_compat.is_torch_state_dict(theirs.optimizer.state_dict())
    assert torch_compat.is_torch_state_dict(numpy_copy(theirs.optimizer.state_dict()))
    assert not torch_compat.is_torch_state_dict([1, 2])
    mixed = ours.optimizer.state_dict()
    mixed["param_groups"].append(theirs.optimizer.state_dict()["param_groups"][0])
    with pytest.raises(ValueError, match=r"groups \[2\] lack lucid_fx's options"):
        torch_compat.is_torch_state_dict(mixed)


def test_our_state_dict_through_torch_save_is_still_ours(tmp_path: Any) -> None:
    """torch.load's default gives tensors back, and our groups hold torch's implementation
    options now: neither may make our dict look like torch's, or RMSprop's momentum
    buffer would be converted (multiplied by lr) on the way back in."""
    ours = LucidSide(initial_values(), momentum=0.9)  # each group its own lr (LRS)
    ours.steps(0, 3)
    saved = ours.optimizer.state_dict()
    torch.save(saved, tmp_path / "optimizer.pt")
    loaded = torch.load(tmp_path / "optimizer.pt")  # the default, weights_only=True
    assert not torch_compat.is_torch_state_dict(loaded)
    resumed = LucidSide(ours.values(), momentum=0.9)
    resumed.optimizer.load_state_dict(loaded)
    for index, entry in resumed.optimizer.state_dict()["state"].items():
        for key, value in entry.items():
            assert value.dtype == saved["state"][index][key].dtype
            assert value.tobytes() == saved["state"][index][key].tobytes(), (index, key)
