"""Public names report their public module, so that pickles and reprs outlive the private tree.

A class or function defined under ``lucid_fx._src`` and re-exported as
``lucid_fx.X`` says it lives in ``lucid_fx``: ``pickle`` then writes
``lucid_fx.AdamState``, which keeps loading whatever module holds the class
later, and ``repr``, tracebacks and the API pages show the name users import.
NumPy and JAX do the same for their public functions.

Example:
  >>> import lucid_fx as fx
  >>> fx.AdamState.__module__, fx.adam.__module__
  ('lucid_fx', 'lucid_fx')
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, MutableMapping
from typing import Any


def publish(module: str, namespace: MutableMapping[str, Any], names: Iterable[str]) -> None:
    """Sets ``__module__`` to ``module`` for each class or function ``namespace[name]``
    that is defined under ``lucid_fx._src`` (modules and anything else are left alone)."""
    for name in names:
        obj = namespace[name]
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(
                obj, "__module__", "").startswith("lucid_fx._src."):
            obj.__module__ = module
