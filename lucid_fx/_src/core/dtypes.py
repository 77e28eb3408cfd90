"""The dtype policy: what a state buffer is stored in, and what the arithmetic runs in.

Both faces follow one rule, torch's: a buffer is stored in ``state_dtype`` (by
default its parameter's dtype; a complex parameter's buffer is complex, or real
where it holds ``|g|²``), the arithmetic runs in the widest dtype of its inputs and
at least float32, and every result is rounded back to its own buffer's dtype.
A hyper-parameter is cast into the arithmetic's real dtype by :func:`cast_scalar`.

Example:
  >>> import jax.numpy as jnp
  >>> from lucid_fx._src.core.dtypes import buffer_dtype, compute_dtype
  >>> buffer_dtype(jnp.bfloat16), compute_dtype(jnp.ones(2, jnp.bfloat16))
  (dtype(bfloat16), dtype('float32'))
"""

from __future__ import annotations

from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

from lucid_fx._src.core.scalars import PreciseScalar


def buffer_dtype(param_dtype: Any, state_dtype: Any | None = None, *, real: bool = False) -> Any:
    """The dtype of a state buffer for a parameter of ``param_dtype``.

    The buffer takes ``state_dtype`` when given, else the parameter's dtype.
    For a complex parameter it is complex (a real ``state_dtype`` becomes its
    complex counterpart, at least complex64), or the matching real dtype when
    ``real`` (a running average of ``|g|²``).

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.core.dtypes import buffer_dtype
      >>> buffer_dtype(jnp.bfloat16), buffer_dtype(jnp.bfloat16, jnp.float32)
      (dtype(bfloat16), dtype('float32'))
      >>> buffer_dtype(jnp.complex64), buffer_dtype(jnp.complex64, real=True)
      (dtype('complex64'), dtype('float32'))
    """
    base = jnp.dtype(param_dtype if state_dtype is None else state_dtype)
    if jnp.issubdtype(param_dtype, jnp.complexfloating):
        full = jnp.result_type(base, jnp.complex64) if not jnp.issubdtype(
            base, jnp.complexfloating) else base
        return jnp.finfo(full).dtype if real else full
    return base


def compute_dtype(*arrays: Any) -> Any:
    """The dtype the arithmetic runs in: the widest of ``arrays`` (``None`` skipped), >= float32.

    At least float32 so that ``1 - β`` and small updates keep their precision
    for bfloat16/float16 parameters and buffers; each result is rounded back
    to its own buffer's dtype afterwards.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.core.dtypes import compute_dtype
      >>> compute_dtype(jnp.ones(2, jnp.bfloat16), None)
      dtype('float32')
      >>> compute_dtype(jnp.ones(2, jnp.complex64), jnp.ones(2, jnp.float32))
      dtype('complex64')
    """
    return jnp.result_type(*[a for a in arrays if a is not None], jnp.float32)


def real_dtype(dtype: Any) -> Any:
    """The real dtype of ``dtype``'s components: complex64 -> float32, float32 -> float32.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.core.dtypes import real_dtype
      >>> real_dtype(jnp.complex64), real_dtype(jnp.float32)
      (dtype('float32'), dtype('float32'))
    """
    return jnp.finfo(dtype).dtype


def cast_scalar(value: Any, dtype: Any) -> jax.Array:
    """A hyper-parameter (a number, a 0-d or broadcastable array, a tracer) in ``dtype``.

    Derived scalars (``1 - β``, ``1 - η·λ``) should be formed *before* this
    cast, from the value's own precision: from a Python float they are then
    exact to float64 and rounded once, as torch rounds them.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.core.dtypes import cast_scalar
      >>> float(cast_scalar(1 - 0.999, jnp.float32)) == float(jnp.float32(1 - 0.999))
      True
    """
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        # A constant either way; NumPy rounds it to ``dtype`` as jnp would, without a dispatch.
        return cast(jax.Array, np.asarray(value, dtype))
    if isinstance(value, PreciseScalar):  # the stateful face's double-precision scalars
        return cast(jax.Array, value.value(dtype))
    return jnp.asarray(value).astype(dtype)
