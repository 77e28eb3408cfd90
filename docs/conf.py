"""Sphinx configuration: the pages in docs/*.md (MyST) and an API reference from the docstrings.

Build (what CI runs, warnings are errors)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The API reference is generated at build time into ``docs/_api/`` (ignored by
git): one page for the names in ``lucid_fx.__all__``, grouped by what they are,
and one page per public submodule. A name added to ``__all__``, or a new
submodule that declares ``__all__``, appears without editing anything here.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import sys
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))

import lucid_fx

project = "lucid_fx"
author = "lucid_fx authors"
copyright = "lucid_fx authors"
release = lucid_fx.__version__

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "README.md"]

myst_heading_anchors = 3  # [text](#a-heading) links, as GitHub renders them
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "separated"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" as fields: NamedTuple fields are not documented twice

html_theme = "alabaster"
html_title = f"lucid_fx {release}"
html_static_path: list[str] = []
html_theme_options = {"description": "torch's optimizers for JAX", "fixed_sidebar": True}

# Submodules documented although they declare no ``__all__`` (their public names
# are the functions and classes they define without a leading underscore).
PUBLIC_SUBMODULES = ("lr_scheduler", "schedules", "sharding", "torch_compat", "weights")


# ------------------------------------------------------------------ API pages


def _group(name: str, obj: Any) -> str:
    if inspect.isclass(obj):
        if issubclass(obj, lucid_fx.Optimizer):
            return "Stateful optimizers"
        if name.endswith("State"):
            return "Optimizer states"
        return "Parameters, protocol and utilities"
    try:
        returns = str(inspect.signature(obj).return_annotation)
    except (TypeError, ValueError):
        returns = ""
    if returns.endswith("GradientTransformation"):
        return "Functional transforms"
    return "Parameters, protocol and utilities"


GROUP_ORDER = ("Functional transforms", "Stateful optimizers", "Optimizer states",
               "Parameters, protocol and utilities")


def _directive(qualified: str, obj: Any) -> list[str]:
    if inspect.isclass(obj):
        return [f".. autoclass:: {qualified}", "   :members:", "   :show-inheritance:", ""]
    if callable(obj):
        return [f".. autofunction:: {qualified}", ""]
    return [f".. autodata:: {qualified}", ""]


def _rst_block(lines: list[str]) -> list[str]:
    return ["```{eval-rst}", *lines, "```", ""]


def _public_names(module: Any) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    return [
        name for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and getattr(obj, "__module__", None) == module.__name__
    ]


def _submodules() -> list[str]:
    """Public submodules: the named ones that exist, and any that declares new names in ``__all__``."""
    found = []
    top = set(lucid_fx.__all__)
    for info in pkgutil.iter_modules(lucid_fx.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"lucid_fx.{info.name}")
        declared = set(getattr(module, "__all__", ()))
        if info.name in PUBLIC_SUBMODULES or declared - top:
            found.append(info.name)
    return sorted(found)


def write_api_pages(app: Any = None) -> None:
    out = DOCS / "_api"
    out.mkdir(exist_ok=True)
    pages: dict[str, str] = {}

    groups: dict[str, list[str]] = {group: [] for group in GROUP_ORDER}
    for name in lucid_fx.__all__:
        if not inspect.ismodule(getattr(lucid_fx, name)):  # submodules get their own page
            groups[_group(name, getattr(lucid_fx, name))].append(name)
    text = [
        "# `lucid_fx`", "",
        "Everything `import lucid_fx as fx` exports (`lucid_fx.__all__`), from the docstrings.",
        "Its submodules have their own pages.", "",
    ]
    for group, names in groups.items():
        if not names:
            continue
        text += [f"## {group}", ""]
        for name in names:
            text += _rst_block(_directive(f"lucid_fx.{name}", getattr(lucid_fx, name)))
    pages["lucid_fx"] = "\n".join(text)

    for sub in _submodules():
        module = importlib.import_module(f"lucid_fx.{sub}")
        text = [f"# `lucid_fx.{sub}`", ""]
        lines = [f".. automodule:: lucid_fx.{sub}", "   :no-members:", ""]
        for name in _public_names(module):
            lines += _directive(f"lucid_fx.{sub}.{name}", getattr(module, name))
        text += _rst_block(lines)
        pages[f"lucid_fx.{sub}"] = "\n".join(text)

    for stale in out.glob("*.md"):
        if stale.stem not in pages:
            stale.unlink()
    for stem, content in pages.items():
        path = out / f"{stem}.md"
        if not path.exists() or path.read_text() != content:  # unchanged pages stay cached
            path.write_text(content)


# ------------------------------------------------------------------ docstrings

_LITERAL = re.compile(r"(``.*?``|:math:`[^`]*`)")


def escape_bars(lines: list[str]) -> None:
    """``|g|`` in prose is an absolute value, never a reST substitution: escape the bars.

    Literal blocks (after ``::``), doctests and ````inline literals```` are left alone.
    """
    literal_indent: int | None = None
    in_doctest = False
    for i, line in enumerate(lines):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if literal_indent is not None:
            if not stripped or indent > literal_indent:
                continue
            literal_indent = None
        if stripped.startswith(">>>"):
            in_doctest = True
        if in_doctest:
            if not stripped:
                in_doctest = False
            continue
        if "|" in line:
            parts = _LITERAL.split(line)
            lines[i] = "".join(
                part if _LITERAL.fullmatch(part) else part.replace("|", r"\|") for part in parts
            )
        if stripped.endswith("::"):
            literal_indent = indent


def before_napoleon(app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    escape_bars(lines)


def skip_member(app: Any, what: str, name: str, obj: Any, skip: bool, options: Any) -> bool | None:
    # NamedTuple fields are described in the class's Attributes section.
    if isinstance(obj, property) and (obj.__doc__ or "").startswith("Alias for field number"):
        return True
    doc = getattr(obj, "__doc__", None) or ""
    if what == "class" and doc.startswith("Alias for field number"):
        return True
    return None


def setup(app: Any) -> dict[str, Any]:
    app.connect("builder-inited", write_api_pages)
    app.connect("autodoc-process-docstring", before_napoleon, priority=100)
    app.connect("autodoc-skip-member", skip_member)
    return {"parallel_read_safe": True}
