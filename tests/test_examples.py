"""The examples keep working: each one's ``main`` run in this process, output checked.

Each example's ``main(argv)`` takes its command line and returns its result, so a
failure inside an example is an ordinary traceback here. Also checks that the JAX
CartPole in ``examples/rl_cartpole.py`` is gymnasium's CartPole-v1, step for step, so
its returns mean what CartPole returns mean.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The JAX CartPole runs in float32; gymnasium in float64.
TOL_CARTPOLE_F32 = 1e-5


def _number_after(label: str, text: str) -> float:
    match = re.search(rf"^{re.escape(label)}\s*(-?[0-9.]+)", text, re.MULTILINE)
    assert match, f"no line starting {label!r} in:\n{text}"
    return float(match.group(1))


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert path.stat().st_size < 200_000


@pytest.mark.slow  # its default length, 300 steps
def test_quickstart_fits_the_diabetes_data_as_least_squares_does(
    load_example: Callable[[str], ModuleType], capsys: pytest.CaptureFixture[str],
) -> None:
    r2 = load_example("quickstart").main(["--steps", "300"])
    out = capsys.readouterr().out
    assert _number_after("final R^2:", out) == pytest.approx(r2, abs=5e-4)
    # The exact least-squares fit of the standardised data: the optimum R² can reach.
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    x, y = (x - x.mean(0)) / x.std(0), (y - y.mean()) / y.std()
    design = np.c_[x, np.ones(len(x))]
    residual = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
    best = 1 - np.mean(residual**2) / np.var(y)
    assert best - 0.01 < r2 <= best + 1e-6, (r2, best)


@pytest.mark.slow  # trains, and draws its curves
def test_train_digits_smoke_prints_accuracy_and_writes_curves(
    load_example: Callable[[str], ModuleType], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    accuracy = load_example("train_digits").main(["--smoke", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert re.search(r"^test accuracy: \d{1,3}\.\d%$", out, re.MULTILINE)
    assert _number_after("test accuracy:", out) == pytest.approx(100 * float(accuracy), abs=0.05)
    # Ten RMSprop steps already beat chance (10%) by far.
    assert 0.3 < float(accuracy) <= 1.0
    _assert_png(tmp_path / "digits.png")


@pytest.mark.slow  # trains, twice
@pytest.mark.parametrize(("flags", "label"), [(["--swa"], "swa"), (["--ema", "0.9"], "ema")])
def test_train_digits_averages_the_weights(
    load_example: Callable[[str], ModuleType], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    flags: list[str], label: str,
) -> None:
    """--swa (torch's recipe with SWALR) and --ema: the averaged model is evaluated and
    its accuracy printed and returned, beside the trained model's."""
    accuracy = load_example("train_digits").main(["--smoke", "--out", str(tmp_path), *flags])
    out = capsys.readouterr().out
    assert _number_after(f"{label} test accuracy:", out) == pytest.approx(100 * accuracy, abs=0.05)
    assert re.search(r"^test accuracy: \d{1,3}\.\d%$", out, re.MULTILINE)
    assert 0.3 < accuracy <= 1.0  # smoke: 2 short epochs (86.7% and 78.3% measured)
    _assert_png(tmp_path / "digits.png")


@pytest.mark.slow  # trains on both faces; tests/test_muon.py checks the recipe's numbers
def test_muon_split_trains_the_same_on_both_faces(
    load_example: Callable[[str], ModuleType], capsys: pytest.CaptureFixture[str],
) -> None:
    """torch's recipe (Muon for the hidden matrices, AdamW for the rest) on both faces, two
    epochs: one step of each agrees to float32 rounding, and both learn the digits."""
    results = load_example("muon_split").main(["--epochs", "2", "--check-faces"])
    assert results["faces_max_difference"] < 1e-6
    assert results["functional_accuracy"] > 0.8 and results["stateful_accuracy"] > 0.8
    assert "largest difference between the faces' weights after one step" in capsys.readouterr().out


@pytest.mark.slow  # two child processes
def test_train_digits_compile_cache_is_written_once_and_read_after(
    tmp_path: Path, child_env: dict[str, str],
) -> None:
    """``--compile-cache``: the first run writes every program, the second compiles none
    (it writes nothing new) and learns the same. Two fresh processes: a process-wide
    setting, and a cache read back only by a new process."""
    import subprocess
    import sys

    cache = tmp_path / "cache"
    outputs, entries = [], []
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-W", "error", str(EXAMPLES / "train_digits.py"), "--smoke",
             "--out", str(tmp_path), "--compile-cache", str(cache)],
            capture_output=True, text=True, timeout=300, env=child_env, check=False)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append(_number_after("test accuracy:", result.stdout))
        entries.append(sorted(p.name for p in cache.iterdir()))
    assert len(entries[0]) >= 3, entries[0]  # backward, the step, the evaluation at least
    assert entries[1] == entries[0]
    assert outputs[1] == outputs[0]


def _random_policy_mean_return(cartpole: ModuleType, episodes: int = 200) -> float:
    """The mean return of uniformly random actions in the example's own CartPole."""
    import jax

    env_step = jax.jit(cartpole.env_step)
    rng = np.random.default_rng(0)
    starts = np.asarray(jax.vmap(cartpole.env_reset)(jax.random.split(jax.random.PRNGKey(1), episodes)))
    total = 0
    for state in starts:
        for _ in range(cartpole.MAX_STEPS):
            state, fell = env_step(state, np.int32(rng.integers(2)))
            total += 1
            if fell:
                break
    return total / episodes


@pytest.mark.slow  # trains, and draws its curve
def test_rl_cartpole_smoke_learns_and_writes_curve(
    load_example: Callable[[str], ModuleType], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    cartpole = load_example("rl_cartpole")
    mean_return = cartpole.main(["--smoke", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert _number_after("mean return (last 100 episodes):", out) == pytest.approx(
        mean_return, abs=0.05)
    assert _number_after("episodes:", out) >= 100
    # Random actions keep the pole up ~22 steps; the smoke run's 80 updates already
    # double that (measured 66.0), so a broken update or gradient shows here.
    assert mean_return > 2 * _random_policy_mean_return(cartpole)
    _assert_png(tmp_path / "returns.png")


@pytest.mark.parametrize("name", ["flax_nnx", "equinox_mlp"])
def test_framework_example_smoke_lowers_the_loss(
    load_example: Callable[[str], ModuleType], name: str, capsys: pytest.CaptureFixture[str],
) -> None:
    final = load_example(name).main(["--smoke"])
    out = capsys.readouterr().out
    match = re.search(r"^final loss: ([0-9.]+) \(from ([0-9.]+)\)$", out, re.MULTILINE)
    assert match, out
    assert float(match.group(1)) == pytest.approx(final, abs=5e-5)
    assert float(match.group(1)) < 0.5 * float(match.group(2))


def test_jax_cartpole_matches_gymnasium_cartpole_v1_step_for_step(
    load_example: Callable[[str], ModuleType],
) -> None:
    gymnasium = pytest.importorskip(
        "gymnasium", reason="the reference CartPole-v1 is gymnasium's; install gymnasium to compare"
    )
    import jax

    cartpole = load_example("rl_cartpole")
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


def test_jax_cartpole_reset_draws_gymnasium_start_range(
    load_example: Callable[[str], ModuleType],
) -> None:
    import jax

    cartpole = load_example("rl_cartpole")
    starts = np.asarray(jax.vmap(cartpole.env_reset)(jax.random.split(jax.random.PRNGKey(0), 2000)))
    assert starts.shape == (2000, 4)
    assert starts.min() >= -0.05 and starts.max() < 0.05
    assert starts.min() < -0.045 and starts.max() > 0.045  # the whole range is used


# examples/port_torch_cnn.py --smoke (5 steps): float64 measured 8.9e-16, and at most
# 8.9e-16 over 3 epochs for seeds 0-5; float32 rounding anywhere would show as ~1e-7.
# float32 measured 0.0 (4.8e-7 at most over 3 epochs without a max-pool flip, see the
# example): 1e-5 is 40 float32 units in the last place of the loss (~2.3). None of the
# smoke's pool windows has its two largest values within 8e-6 of each other, so no flip.
@pytest.mark.parametrize(("dtype", "tol"), [pytest.param("float64", 1e-12, marks=pytest.mark.slow),
                                           ("float32", 1e-5)])
def test_port_torch_cnn_smoke_matches_torch_step_for_step(
    load_example: Callable[[str], ModuleType], capsys: pytest.CaptureFixture[str],
    dtype: str, tol: float,
) -> None:
    pytest.importorskip("torch", reason="the example trains the torch model beside the port")
    import jax
    import torch

    default_dtype, x64 = torch.get_default_dtype(), jax.config.jax_enable_x64
    result = load_example("port_torch_cnn").main(["--smoke", "--dtype", dtype])
    out = capsys.readouterr().out
    assert len(result["losses_torch"]) == len(result["losses_fx"]) == 5
    assert result["max_loss_diff"] < tol
    printed = re.search(r"^largest per-step loss difference: (\d\.\d{3}e[+-]\d\d)$", out,
                        re.MULTILINE)
    assert printed, out
    assert float(printed.group(1)) == pytest.approx(result["max_loss_diff"], rel=1e-3)
    for name in ("torch", "lucid_fx"):
        assert re.search(rf"^{name} test accuracy: \d{{1,3}}\.\d%$", out, re.MULTILINE)
    # The same weights up to tol: the same predictions, but for at most one near tie
    # among the 360 test images.
    assert result["acc_fx"] == pytest.approx(result["acc_torch"], abs=1 / 360 + 1e-9)
    # In-process: the caller's torch default dtype and JAX x64 setting are untouched.
    assert torch.get_default_dtype() == default_dtype
    assert jax.config.jax_enable_x64 == x64
