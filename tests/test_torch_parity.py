"""Parity of ``fx.RMSprop`` with ``torch.optim.RMSprop``, step for step, with constant lr.

Both sides train the same small MLP from the same start on the same batches,
each with its own autodiff (``fx.backward`` here, ``loss.backward()`` there), so the
whole stateful loop is compared, not only the update rule. float32 runs in this
process, float64 under ``jax.enable_x64(True)``. Our momentum buffer holds η·b where
torch's holds b (Lucid's definition puts η inside the buffer); with a constant η they agree.

Not compared: complex parameters. torch's RMSprop treats the real and imaginary
parts as two independent reals (``view_as_real``), while lucid_fx follows the
design's |g|² = g·conj(g); only the gradient convention is compared for them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import max_rel_error

import lucid_fx as fx

torch = pytest.importorskip(
    "torch", reason="torch is not installed; it is in the test extra: pip install -e '.[test]'"
)

# Named tolerances, as max_rel_error (|a - b| / max(1, |b|)) over every step.
# float32: two autodiff engines round the gradient differently and the closed loop
# carries the difference on, through 1/sqrt(v), for STEPS steps.
RTOL_TORCH_F32 = 5e-5  # measured <= 1e-5 at 15 steps (1.9e-5 at 25)
RTOL_TORCH_F64 = 1e-12  # float64: the same computation, rounding only (measured 1e-14)
STEPS = 15

FLAGS: dict[str, dict[str, Any]] = {
    "momentum": dict(momentum=0.9),
    "centered": dict(centered=True),
    "weight_decay": dict(weight_decay=0.1),
    "maximize": dict(maximize=True),
}
EXTRA: dict[str, dict[str, Any]] = {
    "alpha=0.9,eps=1e-6": dict(alpha=0.9, eps=1e-6),
    "lr=0.05,alpha=0.5,eps=1e-3": dict(lr=0.05, alpha=0.5, eps=1e-3),
    "lr=0.003,momentum=0.5,centered,alpha=0.95":
        dict(lr=0.003, momentum=0.5, centered=True, alpha=0.95),
    "lr=0.02,momentum=0.99,weight_decay=0.01": dict(lr=0.02, momentum=0.99, weight_decay=0.01),
}


def _grid() -> dict[str, dict[str, Any]]:
    """Every subset of FLAGS (each alone and combined), then EXTRA."""
    grid = {}
    for size in range(len(FLAGS) + 1):
        for names in itertools.combinations(FLAGS, size):
            grid["+".join(names) or "defaults"] = {k: v for n in names for k, v in FLAGS[n].items()}
    return {**grid, **EXTRA}


GRID = _grid()


@dataclasses.dataclass
class Problem:
    """A small regression MLP: initial weights and STEPS batches, as NumPy arrays."""

    weights: dict[str, np.ndarray]
    batches: list[tuple[np.ndarray, np.ndarray]]


def make_problem(dtype: Any, seed: int = 0) -> Problem:
    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.standard_normal((3, 8)) * 0.5,
        "b1": rng.standard_normal(8) * 0.1,
        "w2": rng.standard_normal((8, 1)) * 0.5,
        "b2": np.zeros(1),
    }
    batches = []
    for _ in range(STEPS):
        x = rng.standard_normal((16, 3))
        batches.append((x, np.sin(x.sum(axis=1, keepdims=True))))
    def cast(a: Any) -> np.ndarray:
        return np.asarray(a, dtype)

    return Problem({k: cast(v) for k, v in weights.items()},
                   [(cast(x), cast(y)) for x, y in batches])


def mlp_loss(m: dict[str, Any], x: Any, y: Any, tanh: Callable[[Any], Any]) -> Any:
    """The same formula for both libraries; ``tanh`` is jnp's or torch's."""
    return ((tanh(x @ m["w1"] + m["b1"]) @ m["w2"] + m["b2"] - y) ** 2).mean()


def jax_loss(m: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
    return mlp_loss(m, x, y, jnp.tanh)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """A deterministic, light torch on a shared machine; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def compare(config: dict[str, Any], dtype: Any, *, use_closure: bool = False) -> dict[str, float]:
    """Trains with both libraries; returns the max error per quantity over all steps."""
    problem = make_problem(dtype)
    model = {k: fx.Parameter(v) for k, v in problem.weights.items()}
    names = sorted(model)  # fx.parameters order for a dict: sorted keys
    params = fx.parameters(model)
    assert params == [model[k] for k in names]
    optimizer = fx.RMSprop(params, **config)

    with one_torch_thread():
        theirs = {k: torch.nn.Parameter(torch.from_numpy(problem.weights[k].copy())) for k in names}
        torch_optimizer = torch.optim.RMSprop([theirs[k] for k in names], **config)
        errors = {"params": 0.0, "loss": 0.0}
        for x, y in problem.batches:
            def closure(x: np.ndarray = x, y: np.ndarray = y) -> jax.Array:
                optimizer.zero_grad()
                return fx.backward(jax_loss, model, x, y)

            if use_closure:
                loss = optimizer.step(closure)
            else:
                loss = closure()
                optimizer.step()

            def torch_closure(x: np.ndarray = x, y: np.ndarray = y) -> Any:
                torch_optimizer.zero_grad()
                torch_loss = mlp_loss(theirs, torch.from_numpy(x), torch.from_numpy(y), torch.tanh)
                torch_loss.backward()
                return torch_loss

            torch_loss = torch_optimizer.step(torch_closure)
            errors["loss"] = max(errors["loss"], max_rel_error(loss, torch_loss.item()))
            for k in names:
                errors["params"] = max(errors["params"], max_rel_error(
                    model[k].value, theirs[k].detach().numpy()))
        lr = config.get("lr", 0.01)
        for k in names:
            ours, state = optimizer.state[model[k]], torch_optimizer.state[theirs[k]]
            assert int(ours["step"]) == int(state["step"].item()) == STEPS
            assert set(ours) - {"step"} == set(state) - {"step"}
            for key in set(ours) - {"step"}:
                expected = state[key].numpy() * (lr if key == "momentum_buffer" else 1.0)
                errors[key] = max(errors.get(key, 0.0), max_rel_error(ours[key], expected))
    return errors


@pytest.mark.parametrize("label", GRID)
def test_parity_float32(label: str) -> None:
    errors = compare(GRID[label], np.float32)
    assert max(errors.values()) <= RTOL_TORCH_F32, errors


def test_parity_with_closures_float32() -> None:
    errors = compare(dict(momentum=0.9, centered=True), np.float32, use_closure=True)
    assert max(errors.values()) <= RTOL_TORCH_F32, errors


def x64_report() -> dict[str, dict[str, float]]:
    """The grid in float64; called under ``jax.enable_x64(True)``."""
    assert jax.config.jax_enable_x64, "call under jax.enable_x64(True)"
    return {label: compare(config, np.float64) for label, config in GRID.items()}


@pytest.fixture(scope="module")
def x64() -> dict[str, dict[str, float]]:
    with jax.enable_x64(True):
        return x64_report()


@pytest.mark.parametrize("label", GRID)
def test_parity_float64(label: str, x64: dict[str, dict[str, float]]) -> None:
    errors = x64[label]
    assert max(errors.values()) <= RTOL_TORCH_F64, errors


def test_complex_gradients_follow_torchs_convention() -> None:
    """``fx.backward`` gives complex Parameters the gradient torch's autograd gives."""
    rng = np.random.default_rng(3)
    a = (rng.standard_normal((5, 3)) + 1j * rng.standard_normal((5, 3))).astype(np.complex64)
    y = (rng.standard_normal(5) + 1j * rng.standard_normal(5)).astype(np.complex64)
    z0 = (rng.standard_normal(3) + 1j * rng.standard_normal(3)).astype(np.complex64)
    scale = fx.Parameter(np.float32(0.7))  # a real Parameter in the same loss

    def loss_fn(m: dict[str, Any], a: Any, y: Any) -> Any:
        residual = a @ m["z"] * m["s"] - y
        return (residual.real ** 2 + residual.imag ** 2).sum()

    model = {"z": fx.Parameter(z0), "s": scale}
    loss = fx.backward(loss_fn, model, a, y)
    with one_torch_thread():
        z = torch.tensor(z0, requires_grad=True)
        s = torch.tensor(np.float32(0.7), requires_grad=True)
        torch_loss = loss_fn({"z": z, "s": s}, torch.from_numpy(a), torch.from_numpy(y))
        torch_loss.backward()
        assert max_rel_error(loss, torch_loss.item()) <= RTOL_TORCH_F32
        assert max_rel_error(model["z"].grad, z.grad.numpy()) <= RTOL_TORCH_F32
        assert max_rel_error(scale.grad, s.grad.numpy()) <= RTOL_TORCH_F32
