"""torch's learning-rate schedulers for the stateful optimizers, and Lucid's NoamScheduler.

The classes of ``torch.optim.lr_scheduler`` (torch 2.13's names, signatures and
semantics) over any :class:`lucid_fx.Optimizer`: ``fx.SGD``, ``fx.RMSprop``,
``fx.Adam``, ... A scheduler only writes numbers into
``optimizer.param_groups`` (``lr``, and ``momentum`` or ``betas[0]`` when
CyclicLR/OneCycleLR cycle it), which the optimizer reads at its next step as
traced arrays: scheduling never recompiles the step.

The protocol is torch's. Construction records each group's ``initial_lr``
(``base_lrs``) and sets the lr of ``last_epoch = 0``; each ``step()`` after
``optimizer.step()`` advances ``last_epoch`` and sets the next lr::

    optimizer = fx.SGD(fx.parameters(model), lr=0.1, momentum=0.9)
    scheduler = fx.lr_scheduler.StepLR(optimizer, step_size=30, gamma=0.1)
    for epoch in range(100):
        train_one_epoch(optimizer)        # optimizer.step() per batch
        scheduler.step()

``step()`` updates the lr with torch's recursive ("chainable") formulas, in the
same floating-point operations, so the lr sequence equals torch's float for
float, group by group; ``step(epoch)`` (deprecated in torch) uses the closed
form. ``state_dict()`` is torch's (the scheduler's attributes but the
optimizer); resuming is torch's recipe: build the optimizer and the scheduler,
then load both state dicts. A torch scheduler's state dict loads here too.

Every closed-form schedule has a functional twin in :mod:`lucid_fx._src.schedules.schedules`
(``StepLR`` -> ``fx.schedules.step_lr``) for the functional optimizers and optax.

Bad arguments raise ``ValueError`` naming the argument and the value, before
anything changes; a scheduler over something other than a stateful fx
optimizer raises ``TypeError``; a scheduler used under ``jax.jit`` raises
``RuntimeError`` (:mod:`lucid_fx._src.stateful.tracing`).

Example:
  >>> import jax.numpy as jnp, lucid_fx as fx
  >>> w = fx.Parameter(jnp.zeros(2))
  >>> optimizer = fx.SGD([w], lr=1.0)
  >>> scheduler = fx.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
  >>> lrs = []
  >>> for _ in range(5):
  ...     lrs.append(optimizer.param_groups[0]["lr"])
  ...     optimizer.step()
  ...     scheduler.step()
  >>> lrs, scheduler.get_last_lr(), scheduler.last_epoch
  ([1.0, 1.0, 0.5, 0.5, 0.25], [0.25], 5)
"""

from lucid_fx._src.core.publishing import publish
from lucid_fx._src.schedules.lr_scheduler import (
    ChainedScheduler,
    ConstantLR,
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    CyclicLR,
    ExponentialLR,
    LambdaLR,
    LinearLR,
    LRScheduler,
    MultiplicativeLR,
    MultiStepLR,
    NoamScheduler,
    OneCycleLR,
    PolynomialLR,
    ReduceLROnPlateau,
    SequentialLR,
    StepLR,
)

__all__ = [
    "ChainedScheduler",
    "ConstantLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "ExponentialLR",
    "LRScheduler",
    "LambdaLR",
    "LinearLR",
    "MultiStepLR",
    "MultiplicativeLR",
    "NoamScheduler",
    "OneCycleLR",
    "PolynomialLR",
    "ReduceLROnPlateau",
    "SequentialLR",
    "StepLR",
]

publish(__name__, globals(), __all__)
del publish
