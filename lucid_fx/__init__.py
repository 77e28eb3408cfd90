"""lucid_fx: functional optimizer transforms for JAX, starting with RMSprop."""

from lucid_fx.base import (
    EmptyState,
    GradientTransformation,
    apply_updates,
    chain,
    identity,
)
from lucid_fx.clipping import clip_by_global_norm, global_norm
from lucid_fx.rmsprop import RMSpropState, rmsprop

__version__ = "0.1.0"

__all__ = [
    "EmptyState",
    "GradientTransformation",
    "RMSpropState",
    "apply_updates",
    "chain",
    "clip_by_global_norm",
    "global_norm",
    "identity",
    "rmsprop",
]
