"""Numerics the kernels share: torch's lerp, 1 - β^t without cancellation, and products at
the factors' own precision.

Example:
  >>> import jax.numpy as jnp
  >>> from lucid_fx._src.transforms.numerics import lerp
  >>> float(lerp(jnp.float32(1.0), jnp.float32(3.0), 0.25))
  1.5
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def lerp(start: jax.Array, end: jax.Array, weight: jax.Array) -> jax.Array:
    """start + weight·(end - start), exact at both ends (weight 0 gives start, 1 gives end);
    torch.lerp's two forms.

    The form is chosen by the weight: from ``start`` for weight < 0.5, from
    ``end`` otherwise, so that neither endpoint is lost to rounding.
    """
    diff = end - start
    if not isinstance(weight, jax.core.Tracer) and np.ndim(weight) == 0:  # choose it here
        return start + weight * diff if weight < 0.5 else end - diff * (1 - weight)
    return jnp.where(weight < 0.5, start + weight * diff, end - diff * (1 - weight))


def one_minus_power(one_minus_beta: jax.Array, t: jax.Array) -> jax.Array:
    """1 - β^t from 1 - β, without the cancellation of forming β^t first.

    In float32, β₂ = 0.999 rounds to 0.99900001, so 1 - β₂^t formed from it
    is 0.00099998713 at t = 1, 1.3e-5 off (torch forms it in float64). From
    1 - β, formed in β's own precision, it is as exact as float32 allows.
    """
    return -jnp.expm1(t * jnp.log1p(-one_minus_beta))


def wide_product(a: Any, b: Any, dtype: Any) -> Any:
    """a·b from the factors' own precision (double for numbers and PreciseScalars), but
    never narrower than ``dtype``: a float32 schedule's η under float64 math would
    otherwise round η·λ, and so 1 - η·λ, to float32."""
    def wide(x: Any) -> Any:
        if isinstance(x, (jax.Array, np.ndarray, np.floating)):
            x = jnp.asarray(x)
            return x.astype(jnp.promote_types(x.dtype, dtype))
        return x

    return wide(a) * wide(b)
