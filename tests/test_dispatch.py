"""``fx.limit_in_flight`` bounds the queue of dispatched steps; the stateful step bounds its own.

The deadlock itself (hundreds of queued steps holding collectives) is shown at
full length by ``test_multihost.py``'s runs of ``examples/distributed.py``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lucid_fx as fx
from lucid_fx._src.scale import dispatch


@jax.jit
def _slow_step(x: jax.Array) -> jax.Array:
    # Enough work that a call is still running when Python dispatches the next one.
    y = x
    for _ in range(8):
        y = jnp.tanh(y @ y.T) @ y
    return y


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_at_most_max_in_flight_calls_are_pending(limit: int) -> None:
    step = fx.limit_in_flight(_slow_step, max_in_flight=limit)
    x = jnp.ones((256, 256)) / 256
    outputs = []
    for _ in range(3 * limit + 2):
        x = step(x)
        outputs.append(x)
        # Every call older than the last `limit` has finished.
        assert all(out.is_ready() for out in outputs[:-limit])


def test_results_are_the_steps_own() -> None:
    step = fx.limit_in_flight(jax.jit(lambda x, k: (x * k, x.sum())))
    x = jnp.arange(4.0)
    for _ in range(5):
        x, total = step(x, 2.0)
    np.testing.assert_array_equal(x, np.arange(4.0) * 32)
    assert float(total) == 6.0 * 16


def test_donated_outputs_are_skipped_and_the_loss_is_waited_for() -> None:
    @jax.jit(donate_argnums=0)
    def train(params: jax.Array) -> tuple[jax.Array, jax.Array]:
        return params - 0.1 * params, jnp.sum(params**2)

    step = fx.limit_in_flight(train, max_in_flight=1)
    params = jnp.ones(1000)
    losses = []
    for _ in range(4):
        params, loss = step(params)   # the previous params are deleted (donated)
        losses.append(loss)
        assert all(old.is_ready() for old in losses[:-1])
    assert float(losses[-1]) == pytest.approx(1000 * 0.9**6, rel=1e-5)


def test_wrapper_keeps_name_and_docstring() -> None:
    def train_step(x: Any) -> Any:
        """Doc."""
        return x

    wrapped = fx.limit_in_flight(train_step)
    assert wrapped.__name__ == "train_step" and wrapped.__doc__ == "Doc."


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None, "2"])
def test_bad_limit_is_a_value_error_naming_it(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"max_in_flight must be an int >= 1, got"):
        fx.limit_in_flight(_slow_step, max_in_flight=bad)


def test_stateful_step_waits_for_the_previous_step_only_over_several_devices(
    eight_devices: list[Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Over a mesh, ``step()`` waits for the previous step before queuing its own."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from lucid_fx._src.stateful import optimizer as optimizer_module

    waits: list[int] = []
    real = optimizer_module.wait_for
    monkeypatch.setattr(optimizer_module, "wait_for",
                        lambda tree: (waits.append(len(jax.tree.leaves(tree))), real(tree)))

    def train(model: dict[str, fx.Parameter]) -> np.ndarray:
        opt = fx.RMSprop(fx.parameters(model), lr=1e-2)
        for _ in range(3):
            opt.zero_grad()
            fx.backward(lambda m: jnp.sum(m["w"] ** 2), model)
            opt.step()
        return np.asarray(model["w"].value)

    mesh = jax.make_mesh((8,), ("data",), devices=eight_devices)
    w = np.linspace(-1, 1, 8 * 1024, dtype=np.float32)
    on_one = train({"w": fx.Parameter(jnp.asarray(w))})
    assert waits == []  # one device: nothing to wait for
    sharded = train({"w": fx.Parameter(jax.device_put(w, NamedSharding(mesh, P("data"))))})
    assert waits == [1, 1, 1]  # one wait per step, on the one sharded buffer
    np.testing.assert_array_equal(on_one, sharded)


def test_wait_for_skips_deleted_arrays() -> None:
    x = jnp.ones(3)
    x.delete()
    dispatch.wait_for({"gone": x, "kept": jnp.zeros(2), "python": 3})  # does not raise
