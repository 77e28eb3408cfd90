"""Runs every ```python block of README.md and docs/*.md, so the docs cannot rot.

The blocks of one page run in order in one namespace, as a reader pasting them
into one session would, in a temporary working directory. A block right after
the line ``<!-- not run: reason -->`` is skipped (say why: it needs several hosts,
say). A failing block fails the run with its page, line and traceback::

    python docs/run_code_blocks.py                  # every page
    python docs/run_code_blocks.py -v docs/guide.md # some pages, with what they print
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
SKIP = re.compile(r"<!--\s*not run:\s*(.+?)\s*-->\s*$")


def blocks(path: Path) -> list[tuple[int, str | None, str]]:
    """``(line, skip_reason, code)`` for each ```python block of ``path``."""
    text = path.read_text()
    found = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        found.append((line, skip.group(1) if skip else None, match.group(1)))
    return found


def run_page(path: Path, verbose: bool = False) -> tuple[int, int, list[str]]:
    """Runs the blocks of one page; returns (ran, skipped, failures)."""
    namespace: dict[str, object] = {"__name__": "__main__"}
    ran = skipped = 0
    failures: list[str] = []
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    with tempfile.TemporaryDirectory() as workdir:
        here = os.getcwd()
        os.chdir(workdir)
        try:
            for line, skip, code in blocks(path):
                if skip:
                    skipped += 1
                    continue
                out = io.StringIO()
                start = time.perf_counter()
                try:
                    with contextlib.redirect_stdout(out):
                        exec(compile(code, f"{name}:{line}", "exec"), namespace)  # noqa: S102
                except BaseException:  # noqa: BLE001 - report any failure, keep going
                    failures.append(f"{name}:{line}: block failed\n{traceback.format_exc()}"
                                    f"--- its output:\n{out.getvalue()}")
                    break  # later blocks of the page build on this one
                ran += 1
                if verbose:
                    print(f"--- {name}:{line} ({time.perf_counter() - start:.1f} s)\n"
                          f"{out.getvalue()}", end="")
        finally:
            os.chdir(here)
    return ran, skipped, failures


def main(argv: list[str]) -> int:
    verbose = "-v" in argv
    argv = [arg for arg in argv if arg != "-v"]
    pages = [Path(p).resolve() for p in argv] or [
        ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    total_ran = total_skipped = 0
    failures: list[str] = []
    for page in pages:
        start = time.perf_counter()
        ran, skipped, failed = run_page(page, verbose)
        total_ran += ran
        total_skipped += skipped
        failures += failed
        name = page.relative_to(ROOT) if page.is_relative_to(ROOT) else page
        if ran or skipped or failed:
            print(f"{name}: {ran} blocks ran, {skipped} skipped, {len(failed)} failed "
                  f"({time.perf_counter() - start:.1f} s)")
    for failure in failures:
        print(f"\n{failure}", file=sys.stderr)
    print(f"{total_ran} passed, {len(failures)} failed, {total_skipped} skipped")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
