"""The results table, in Markdown: one module for the benchmark's printout and for the
performance page (docs/gen_performance.py), so the two format every figure alike.

It imports nothing heavy: the page generator runs without jax or torch. A row is a
mapping with ``case``, ``unit`` (``"s"`` or ``"bytes"``), the three libraries' figures,
their ratios to lucid_fx (``optax_over_lucid_fx``, ``torch_over_lucid_fx``) and ``notes``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

HEADER = (
    "| case | lucid_fx | optax | torch | optax / lucid_fx | torch / lucid_fx | notes |\n"
    "|---|---:|---:|---:|---:|---:|---|"
)


def format_value(value: float | None, unit: str) -> str:
    """A time in s, ms, µs or ns with 3 significant digits; bytes in GiB, or MiB below one."""
    if value is None:
        return "—"
    if unit == "bytes":
        return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.3g} MiB"
    for scale, suffix in ((1, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if value >= scale:
            return f"{value / scale:.3g} {suffix}"
    return f"{value / 1e-9:.3g} ns"


def format_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def markdown_table(rows: Iterable[Mapping[str, Any]]) -> str:
    lines = [HEADER]
    for row in rows:
        notes = str(row["notes"]).replace("|", "\\|")
        lines.append(
            f"| {row['case']} | {format_value(row['lucid_fx'], row['unit'])} | "
            f"{format_value(row['optax'], row['unit'])} | "
            f"{format_value(row['torch'], row['unit'])} | "
            f"{format_ratio(row['optax_over_lucid_fx'])} | "
            f"{format_ratio(row['torch_over_lucid_fx'])} | {notes} |"
        )
    return "\n".join(lines)
