"""Hyper-parameters at the jit boundary: static values shape the trace, numbers feed it.

A flag, a dtype or ``None`` decides which code is traced, so it is part of the
compile key. A number is passed as a device scalar instead, so writing a new
``lr`` into ``param_groups`` (or a new ``max_norm``) takes effect at the next
call without recompiling.

Example:
  >>> from lucid_fx.hyperparameters import as_traced, is_static
  >>> is_static(True), is_static(0.1)
  (True, False)
  >>> is_static(None), as_traced(0.1).shape
  (True, ())
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_static(value: Any) -> bool:
    """Values that shape the compiled code (flags, dtypes, strings, None) rather than feed it."""
    return value is None or isinstance(value, (bool, np.bool_, str, np.dtype, type))


def as_traced(value: Any) -> Any:
    """``value`` as a 0-d device array of Python's float type; a pair (betas) as a pair of them.

    float64 when x64 is on, so float64 parameters see their exact
    hyper-parameters. Python numbers reuse one cached device scalar per
    distinct value instead of a host-to-device transfer per call.
    """
    if isinstance(value, (tuple, list)):
        return tuple(as_traced(v) for v in value)
    dtype = jnp.result_type(float)
    if isinstance(value, (int, float, np.number)):
        return _cached(value, type(value).__name__, dtype)
    return jnp.asarray(value, dtype=dtype)


@lru_cache(maxsize=4096)
def _cached(value: Any, kind: str, dtype: np.dtype) -> jax.Array:
    del kind  # part of the key only: 1 and 1.0 hash alike
    return jnp.asarray(value, dtype=dtype)
