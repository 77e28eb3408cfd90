"""Clipping transforms."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lucid_fx._src.core.base import GradientTransformation, Params, Updates, stateless
from lucid_fx._src.core.validation import check_hyperparameter


def global_norm(tree: Updates) -> jax.Array:
    """The Euclidean norm of all leaves of ``tree`` taken together (complex: |x|)."""
    leaves = [x for x in jax.tree.leaves(tree) if x is not None]
    if not leaves:
        return jnp.zeros(())
    return jnp.sqrt(sum(jnp.sum(jnp.real(x * jnp.conj(x))) for x in leaves))


def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """Scales updates by ``min(1, max_norm / ‖updates‖₂)`` over the whole tree.

    Args:
      max_norm: the largest global norm let through (>= 0).

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> tx = fx.clip_by_global_norm(1.0)
      >>> [round(u, 6) for u in tx.update(jnp.array([3.0, 4.0]), tx.init(None))[0].tolist()]
      [0.6, 0.8]
    """
    check_hyperparameter("max_norm", max_norm, low=0.0)

    def clip(updates: Updates, params: Params | None) -> Updates:
        del params
        norm = global_norm(updates)
        # where() rather than max_norm / norm alone: an all-zero tree must not divide by 0.
        scale = jnp.where(norm > max_norm, max_norm / jnp.where(norm > 0, norm, 1.0), 1.0)
        return jax.tree.map(lambda u: (u * scale).astype(u.dtype), updates)

    return stateless(clip)
