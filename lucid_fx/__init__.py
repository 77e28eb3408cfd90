"""lucid_fx: torch's optimizers and schedulers for JAX, functional and stateful, on one base.

Every optimizer exists twice, over one implementation: a pure transform
(``fx.adam(...)``: ``init``/``update`` over pytrees, the optax protocol) and
torch's stateful class (``fx.Adam(params, ...)``: ``param_groups``, ``step()``,
state dicts, hooks). The submodules ``lucid_fx.lr_scheduler``,
``lucid_fx.schedules``, ``lucid_fx.swa_utils``, ``lucid_fx.weights`` and
``lucid_fx.sharding`` hold torch's schedulers, their functional twins, weight
averaging (SWA, EMA), a model's weights in and out, and scale-out.
Everything under ``lucid_fx._src`` is private.
"""

from lucid_fx import lr_scheduler, schedules, sharding, swa_utils, weights
from lucid_fx._src.core.base import (
    EmptyState,
    GradientTransformation,
    apply_updates,
    chain,
    identity,
    stateless,
)
from lucid_fx._src.core.publishing import publish
from lucid_fx._src.scale.dispatch import limit_in_flight
from lucid_fx._src.scale.flat import FlatLayout, flatten
from lucid_fx._src.stateful.autodiff import Parameter, backward, named_parameters, parameters
from lucid_fx._src.stateful.clip_grad import clip_grad_norm_, clip_grad_value_
from lucid_fx._src.stateful.hooks import RemovableHandle
from lucid_fx._src.stateful.lbfgs import LBFGS
from lucid_fx._src.stateful.optimizer import Optimizer
from lucid_fx._src.stateful.optimizers import (
    ASGD,
    SGD,
    Adadelta,
    Adafactor,
    Adagrad,
    Adam,
    Adamax,
    AdamW,
    Muon,
    NAdam,
    RAdam,
    RMSprop,
    Rprop,
)
from lucid_fx._src.stateful.weights import load_values, values
from lucid_fx._src.transforms.adadelta import AdadeltaState, adadelta
from lucid_fx._src.transforms.adafactor import AdafactorState, adafactor
from lucid_fx._src.transforms.adagrad import AdagradState, adagrad
from lucid_fx._src.transforms.adam import AdamState, adam, adamw
from lucid_fx._src.transforms.adamax import AdamaxState, adamax
from lucid_fx._src.transforms.asgd import ASGDState, asgd
from lucid_fx._src.transforms.averaging import (
    AveragingState,
    WeightAveraging,
    ema_average,
    swa_average,
    weight_average,
)
from lucid_fx._src.transforms.clipping import clip_by_global_norm, global_norm
from lucid_fx._src.transforms.muon import MuonState, muon
from lucid_fx._src.transforms.nadam import NAdamState, nadam
from lucid_fx._src.transforms.radam import RAdamState, radam
from lucid_fx._src.transforms.rmsprop import RMSpropState, rmsprop
from lucid_fx._src.transforms.rprop import RpropState, rprop
from lucid_fx._src.transforms.sgd import SGDState, sgd

__version__ = "0.2.0"

__all__ = [
    "ASGD",
    "LBFGS",
    "SGD",
    "ASGDState",
    "Adadelta",
    "AdadeltaState",
    "Adafactor",
    "AdafactorState",
    "Adagrad",
    "AdagradState",
    "Adam",
    "AdamState",
    "AdamW",
    "Adamax",
    "AdamaxState",
    "AveragingState",
    "EmptyState",
    "FlatLayout",
    "GradientTransformation",
    "Muon",
    "MuonState",
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
    "WeightAveraging",
    "adadelta",
    "adafactor",
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
    "ema_average",
    "flatten",
    "global_norm",
    "identity",
    "limit_in_flight",
    "load_values",
    "lr_scheduler",
    "muon",
    "nadam",
    "named_parameters",
    "parameters",
    "radam",
    "rmsprop",
    "rprop",
    "schedules",
    "sgd",
    "sharding",
    "stateless",
    "swa_average",
    "swa_utils",
    "values",
    "weight_average",
    "weights",
]

publish(__name__, globals(), __all__)
del publish
