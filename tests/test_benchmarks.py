"""The benchmark script keeps running: a --quick smoke of its cheapest cases.

No timing is asserted (machines here are shared and noisy); the test checks that
every contender ran and that the table and JSON report what was measured.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("torch", reason="the benchmark compares against torch, a test dependency")
pytestmark = pytest.mark.slow  # the script as it is run, in a child process


def test_quick_benchmark_reports_every_contender(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--cases", "small",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| case | lucid_fx | optax | torch |" in result.stdout
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert rows, "the small case produced no rows"
    # Every row of the small case has all three contenders: a None is one that did not run.
    for row in rows:
        for contender in ("lucid_fx", "optax", "torch"):
            time_s = row[contender]
            assert time_s is not None and time_s > 0, (row["case"], contender, time_s)
    timed = rows[0]["extra"]["times_s"]
    assert {"FlatLayout", "fx.RMSprop (fx.backward grads)", "fx.RMSprop (grads by hand)"} <= set(timed)
