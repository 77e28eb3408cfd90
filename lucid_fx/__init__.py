"""lucid_fx: torch's optimizers as JAX transforms, functional and stateful: RMSprop, SGD, Adam, AdamW."""

from lucid_fx import lr_scheduler, schedules
from lucid_fx.adadelta import AdadeltaState, adadelta
from lucid_fx.adadelta_optimizer import Adadelta
from lucid_fx.adagrad import AdagradState, adagrad
from lucid_fx.adagrad_optimizer import Adagrad
from lucid_fx.adam import AdamState, adam, adamw
from lucid_fx.adam_optimizer import Adam, AdamW
from lucid_fx.adamax import AdamaxState, adamax
from lucid_fx.adamax_optimizer import Adamax
from lucid_fx.asgd import ASGDState, asgd
from lucid_fx.asgd_optimizer import ASGD
from lucid_fx.autodiff import Parameter, backward, named_parameters, parameters
from lucid_fx.base import (
    EmptyState,
    GradientTransformation,
    apply_updates,
    chain,
    identity,
    stateless,
)
from lucid_fx.clip_grad import clip_grad_norm_, clip_grad_value_
from lucid_fx.clipping import clip_by_global_norm, global_norm
from lucid_fx.dispatch import limit_in_flight
from lucid_fx.flat import FlatLayout, flatten
from lucid_fx.lbfgs import LBFGS
from lucid_fx.nadam import NAdamState, nadam
from lucid_fx.nadam_optimizer import NAdam
from lucid_fx.optimizer import Optimizer, RemovableHandle
from lucid_fx.radam import RAdamState, radam
from lucid_fx.radam_optimizer import RAdam
from lucid_fx.rmsprop import RMSpropState, rmsprop
from lucid_fx.rmsprop_optimizer import RMSprop
from lucid_fx.rprop import RpropState, rprop
from lucid_fx.rprop_optimizer import Rprop
from lucid_fx.sgd import SGDState, sgd
from lucid_fx.sgd_optimizer import SGD
from lucid_fx.weights import load_values, values

__version__ = "0.1.0"

__all__ = [
    "ASGD",
    "LBFGS",
    "SGD",
    "ASGDState",
    "Adadelta",
    "AdadeltaState",
    "Adagrad",
    "AdagradState",
    "Adam",
    "AdamState",
    "AdamW",
    "Adamax",
    "AdamaxState",
    "EmptyState",
    "FlatLayout",
    "GradientTransformation",
    "NAdam",
    "NAdamState",
    "Optimizer",
    "Parameter",
    "RAdam",
    "RAdamState",
    "RMSprop",
    "RMSpropState",
    "RemovableHandle",
    "Rprop",
    "RpropState",
    "SGDState",
    "adadelta",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "apply_updates",
    "asgd",
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
    "lr_scheduler",
    "nadam",
    "named_parameters",
    "parameters",
    "radam",
    "rmsprop",
    "rprop",
    "schedules",
    "sgd",
    "stateless",
    "values",
]
