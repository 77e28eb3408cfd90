"""Shared test configuration: hypothesis profile and a fresh-interpreter runner.

Checks that need another JAX configuration (``JAX_ENABLE_X64=1``, eight host
devices) run in a child interpreter, because this process has imported jax already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

TESTS_DIR = Path(__file__).resolve().parent

# Few, deterministic examples: the machine is small and shared; failures must replay.
settings.register_profile(
    "lucid_fx",
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("lucid_fx")

RunPython = Callable[..., Any]


def run_python_json(code: str, env: Mapping[str, str] | None = None, timeout: float = 300) -> Any:
    """Runs ``code`` in a fresh ``python -W error`` and returns its last stdout line as JSON.

    ``tests/`` is on the child's ``sys.path`` (so ``import reference`` works) and
    ``env`` is added to the current environment. A failing child fails the test
    with its stderr.
    """
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS_DIR)] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        check=False,  # a failure is reported below, with the child's stderr
        text=True,
        env=child_env,
        timeout=timeout,
        cwd=TESTS_DIR.parent,
    )
    if result.returncode != 0:
        pytest.fail(f"child python failed (rc={result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def run_python() -> RunPython:
    """The :func:`run_python_json` runner, as a fixture."""
    return run_python_json
