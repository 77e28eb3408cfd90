"""Shared test configuration: eight host devices, a hypothesis profile, a child runner.

The suite runs on eight CPU devices (``--xla_force_host_platform_device_count=8``),
so that multi-device checks run in this process like any test: XLA reads the flag
when jax's CPU backend starts, so it is set here, before any test module imports jax.
Arrays still land on the first device unless placed, so single-device code runs as
on a one-device machine. float64 checks run in-process too, under
``jax.enable_x64(True)``. Child interpreters remain for what needs a process of its
own (a restart, several hosts, a compiler dump); they get the caller's environment.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# What child interpreters get: the environment as the caller set it (one device).
CHILD_ENV = dict(os.environ)
EIGHT_DEVICES = "--xla_force_host_platform_device_count=8"
if "jax" not in sys.modules:  # else the backend may have started: eight_devices() says so
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {EIGHT_DEVICES}".strip()

TESTS_DIR = Path(__file__).resolve().parent
EXAMPLES_DIR = TESTS_DIR.parent / "examples"

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
    child_env = {**CHILD_ENV, **(env or {})}
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


def _load_example(name: str) -> ModuleType:
    """``examples/<name>.py`` as a module (its ``main(argv)`` runs it as its command line does)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_example() -> Callable[[str], ModuleType]:
    """Loads an example by name, so that a test runs its ``main(argv)`` in this process."""
    return _load_example


@pytest.fixture(scope="session")
def child_env() -> dict[str, str]:
    """The environment for a child interpreter: the caller's, so one device by default."""
    return dict(CHILD_ENV)


@pytest.fixture
def eight_devices() -> list[Any]:
    """This process's eight CPU devices; fails, saying why, when the flag came too late."""
    import jax

    devices = jax.devices()
    if len(devices) != 8:
        pytest.fail(f"expected 8 host devices, found {len(devices)}: jax started before "
                    f"tests/conftest.py set XLA_FLAGS={EIGHT_DEVICES}; run pytest as the "
                    f"README says")
    return devices
