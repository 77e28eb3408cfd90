"""lucid_fx: torch's optimizers as JAX transforms, functional and stateful: RMSprop, SGD, Adam, AdamW."""

from lucid_fx.autodiff import Parameter, backward, named_parameters, parameters
from lucid_fx.base import (
    EmptyState,
    GradientTransformation,
    apply_updates,
    chain,
    identity,
    stateless,
)
from lucid_fx.adam import AdamState, adam, adamw
from lucid_fx.clip_grad import clip_grad_norm_, clip_grad_value_
from lucid_fx.clipping import clip_by_global_norm, global_norm
from lucid_fx.dispatch import limit_in_flight
from lucid_fx.flat import FlatLayout, flatten
from lucid_fx.optimizer import Optimizer, RemovableHandle
from lucid_fx.rmsprop import RMSpropState, rmsprop
from lucid_fx.rmsprop_optimizer import RMSprop
from lucid_fx.sgd import SGDState, sgd
from lucid_fx.sgd_optimizer import SGD
from lucid_fx.weights import load_values, values

__version__ = "0.1.0"

__all__ = [
    "AdamState",
    "EmptyState",
    "FlatLayout",
    "GradientTransformation",
    "Optimizer",
    "Parameter",
    "RMSprop",
    "RMSpropState",
    "RemovableHandle",
    "SGD",
    "SGDState",
    "adam",
    "adamw",
    "apply_updates",
    "backward",
    "chain",
    "clip_by_global_norm",
    "clip_grad_norm_",
    "clip_grad_value_",
    "flatten",
    "global_norm",
    "identity",
    "limit_in_flight",
    "load_values",
    "named_parameters",
    "parameters",
    "rmsprop",
    "sgd",
    "stateless",
    "values",
]
