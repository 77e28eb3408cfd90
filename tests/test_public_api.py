"""The public surface: every name in ``lucid_fx.__all__`` imports and is documented."""

from __future__ import annotations

import inspect
import types

import pytest

import lucid_fx as fx


def test_all_has_only_public_unique_names() -> None:
    assert len(fx.__all__) == len(set(fx.__all__)), "duplicate names in __all__"
    assert [name for name in fx.__all__ if name.startswith("_")] == []


def test_nothing_public_outside_all() -> None:
    """The package namespace re-exports the public names and nothing else."""
    public = {
        name for name, value in vars(fx).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public - set(fx.__all__) == set()


@pytest.mark.parametrize("name", fx.__all__)
def test_public_name_imports_and_has_a_docstring(name: str) -> None:
    obj = getattr(fx, name)  # what `from lucid_fx import name` reads
    # A class's own docstring only: inherited ones (tuple's, object's) do not count.
    doc = vars(obj).get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    assert doc and doc.strip(), f"{name} has no docstring of its own"
    # NamedTuple classes without a docstring get an auto-generated "Name(field, ...)".
    assert not doc.startswith(f"{name}("), f"{name} has only the generated docstring"
