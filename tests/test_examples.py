"""The examples keep working: each ``--smoke`` run in a fresh interpreter, output checked.

Also checks that the JAX CartPole in ``examples/rl_cartpole.py`` is gymnasium's
CartPole-v1, step for step, so its returns mean what CartPole returns mean.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The JAX CartPole runs in float32; gymnasium in float64.
TOL_CARTPOLE_F32 = 1e-5


def _run_example(name: str, *args: str) -> str:
    """Runs ``examples/<name>.py`` with ``args`` under ``-W error``; returns its stdout."""
    result = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / f"{name}.py"), *args],
        check=False, capture_output=True, text=True, timeout=300,
    )
    if result.returncode != 0:
        pytest.fail(f"{name} failed (rc={result.returncode}):\n{result.stderr[-4000:]}")
    return result.stdout


def _number_after(label: str, text: str) -> float:
    match = re.search(rf"^{re.escape(label)}\s*(-?[0-9.]+)", text, re.MULTILINE)
    assert match, f"no line starting {label!r} in:\n{text}"
    return float(match.group(1))


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert path.stat().st_size < 200_000


def test_train_digits_smoke_prints_accuracy_and_writes_curves(tmp_path: Path) -> None:
    out = _run_example("train_digits", "--smoke", "--out", str(tmp_path))
    accuracy = _number_after("test accuracy:", out)
    assert re.search(r"^test accuracy: \d{1,3}\.\d%$", out, re.MULTILINE)
    # Ten RMSprop steps already beat chance (10%) by far.
    assert 30.0 < accuracy <= 100.0
    _assert_png(tmp_path / "digits.png")


def test_rl_cartpole_smoke_prints_mean_return_and_writes_curve(tmp_path: Path) -> None:
    out = _run_example("rl_cartpole", "--smoke", "--out", str(tmp_path))
    mean_return = _number_after("mean return (last 100 episodes):", out)
    assert 8.0 <= mean_return <= 500.0  # an episode lasts 8 to 500 steps
    assert _number_after("episodes:", out) > 0
    _assert_png(tmp_path / "returns.png")


@pytest.mark.parametrize("name", ["flax_nnx", "equinox_mlp"])
def test_framework_example_smoke_lowers_the_loss(name: str) -> None:
    out = _run_example(name, "--smoke")
    match = re.search(r"^final loss: ([0-9.]+) \(from ([0-9.]+)\)$", out, re.MULTILINE)
    assert match, out
    final, first = float(match.group(1)), float(match.group(2))
    assert final < 0.5 * first


def _load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_jax_cartpole_matches_gymnasium_cartpole_v1_step_for_step() -> None:
    gymnasium = pytest.importorskip(
        "gymnasium", reason="the reference CartPole-v1 is gymnasium's; install gymnasium to compare"
    )
    import jax

    cartpole = _load_example("rl_cartpole")
    env = gymnasium.make("CartPole-v1").unwrapped
    env_step = jax.jit(cartpole.env_step)
    rng = np.random.default_rng(0)
    terminations = 0
    for episode in range(20):
        env.reset(seed=episode)
        state = np.asarray(env.state, np.float64)
        for _ in range(cartpole.MAX_STEPS):
            action = int(rng.integers(2))
            observation, reward, terminated, _, _ = env.step(action)
            ours, fell = env_step(np.float32(state), np.int32(action))
            np.testing.assert_allclose(ours, observation, rtol=TOL_CARTPOLE_F32, atol=TOL_CARTPOLE_F32)
            assert bool(fell) == terminated
            assert reward == 1.0
            state = np.asarray(env.state, np.float64)
            if terminated:
                terminations += 1
                break
    assert terminations == 20  # random actions drop the pole: every episode ended by a fall
    assert cartpole.MAX_STEPS == gymnasium.spec("CartPole-v1").max_episode_steps
    assert cartpole.SOLVED == gymnasium.spec("CartPole-v1").reward_threshold


def test_jax_cartpole_reset_draws_gymnasium_start_range() -> None:
    import jax

    cartpole = _load_example("rl_cartpole")
    starts = np.asarray(jax.vmap(cartpole.env_reset)(jax.random.split(jax.random.PRNGKey(0), 2000)))
    assert starts.shape == (2000, 4)
    assert starts.min() >= -0.05 and starts.max() < 0.05
    assert starts.min() < -0.045 and starts.max() > 0.045  # the whole range is used
