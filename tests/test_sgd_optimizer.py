"""``fx.SGD``: the stateful face of ``fx.sgd`` equals it bit for bit, and torch's SGD.

Every flag combination of the table's SGD grid runs through both faces over
parameters that share one packed buffer, with gradients on some steps only for
one of them (torch does not advance a parameter without a gradient).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from optimizers_under_test import ROWS, RTOL_TORCH_F32

import lucid_fx as fx
from lucid_fx._src.stateful import steps as packed_step

torch = pytest.importorskip("torch", reason="parity is checked against real torch "
                                            "(pip install 'lucid_fx[test]')")

GRID = ROWS["sgd"].grid
SHAPES = ((3, 2), (4,))
STEPS = 8


def _grads(t: int) -> list[np.ndarray | None]:
    rng = np.random.default_rng(1000 + t)
    grads: list[np.ndarray | None] = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    if t % 3 == 1:
        grads[1] = None  # the second parameter skips this step
    return grads


def _initial() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def _stateful(config: dict[str, Any]) -> list[np.ndarray]:
    params = [fx.Parameter(v) for v in _initial()]
    opt = fx.SGD(params, **config)
    for t in range(STEPS):
        opt.zero_grad()
        for p, g in zip(params, _grads(t)):
            if g is not None:
                p.grad = jnp.asarray(g)
        opt.step()
    assert params[0].storage.pack is params[1].storage.pack
    return [np.asarray(p.value) for p in params]


def _functional(config: dict[str, Any]) -> list[np.ndarray]:
    """One functional run per parameter, stepping only when it has a gradient."""
    out = []
    for i, value in enumerate(_initial()):
        tx = fx.sgd(**{k: jnp.asarray(v) if isinstance(v, float) and k != "lr" else v
                       for k, v in config.items()})
        update = jax.jit(tx.update)
        param, state = jnp.asarray(value), tx.init(jnp.asarray(value))
        for t in range(STEPS):
            g = _grads(t)[i]
            if g is not None:
                updates, state = update(jnp.asarray(g), state, param)
                param = fx.apply_updates(param, updates)
        out.append(np.asarray(param))
    return out


def _torch(config: dict[str, Any]) -> list[np.ndarray]:
    params = [torch.nn.Parameter(torch.tensor(v)) for v in _initial()]
    opt = torch.optim.SGD(params, **config)
    for t in range(STEPS):
        opt.zero_grad(set_to_none=True)
        for p, g in zip(params, _grads(t)):
            if g is not None:
                p.grad = torch.tensor(g)
        opt.step()
    return [p.detach().numpy() for p in params]


@pytest.mark.parametrize("label", GRID)
def test_stateful_matches_torch_and_the_functional_face(label: str) -> None:
    config = dict(GRID[label])
    stateful = _stateful(config)
    for ours, theirs in zip(stateful, _torch(config)):
        error = np.max(np.abs(ours - theirs) / np.maximum(1.0, np.abs(theirs)))
        assert error <= RTOL_TORCH_F32, (label, error)
    # The functional run with the same traced hyper-parameters: 1 ulp apart at most,
    # where XLA fuses the packed step differently (see test_optimizer's note).
    for ours, functional in zip(stateful, _functional(config)):
        np.testing.assert_allclose(ours, functional, rtol=2**-22, atol=1e-7, err_msg=label)


def test_momentum_buffer_is_torchs_and_step_counts_per_parameter() -> None:
    config = {"lr": 0.05, "momentum": 0.9, "dampening": 0.1}
    params = [fx.Parameter(v) for v in _initial()]
    opt = fx.SGD(params, **config)
    tparams = [torch.nn.Parameter(torch.tensor(v)) for v in _initial()]
    topt = torch.optim.SGD(tparams, **config)
    for t in range(STEPS):
        opt.zero_grad()
        topt.zero_grad(set_to_none=True)
        for p, q, g in zip(params, tparams, _grads(t)):
            if g is not None:
                p.grad, q.grad = jnp.asarray(g), torch.tensor(g)
        opt.step()
        topt.step()
    for p, q in zip(params, tparams):
        np.testing.assert_allclose(opt.state[p]["momentum_buffer"],
                                   topt.state[q]["momentum_buffer"].numpy(), rtol=RTOL_TORCH_F32)
    assert [int(opt.state[p]["step"]) for p in params] == [STEPS, STEPS - 3]


def test_writing_lr_and_momentum_does_not_recompile() -> None:
    params = [fx.Parameter(v) for v in _initial()]
    opt = fx.SGD(params, lr=0.1, momentum=0.9)
    for p, g in zip(params, _grads(0)):
        p.grad = jnp.asarray(g)
    opt.step()
    before = packed_step.compiled_step("cpu")._cache_size()
    for lr, momentum in ((0.05, 0.8), (0.01, 0.5)):
        opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"] = lr, momentum
        for p, g in zip(params, _grads(2)):
            p.grad = jnp.asarray(g)
        opt.step()
    assert packed_step.compiled_step("cpu")._cache_size() == before


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"lr": -0.1}, r"Invalid lr value: -0.1"),
     ({"momentum": -0.5}, r"Invalid momentum value: -0.5"),
     ({"nesterov": True}, r"Nesterov momentum needs momentum > 0 and dampening = 0")],
)
def test_bad_hyperparameters_name_the_argument(kwargs: dict[str, Any], match: str) -> None:
    params = [fx.Parameter(v) for v in _initial()]
    with pytest.raises(ValueError, match=match):
        fx.SGD(params, **kwargs)
    assert all(p.storage is None for p in params)
