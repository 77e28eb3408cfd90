"""Learning-rate schedules as pure functions: the functional twins of :mod:`lucid_fx._src.schedules.lr_scheduler`.

Each function here is named after a scheduler class, snake-cased
(``StepLR`` -> :func:`step_lr`; ``swa_utils.SWALR`` -> :func:`swalr`), and takes that class's arguments with the
optimizer replaced by ``base_lr``. It returns a schedule ``count -> lr``: a
jit-friendly function of the step count (an int32, traced or not) for
``fx.rmsprop(lr=...)``, ``fx.sgd(lr=...)`` or any optax optimizer.

``schedule(t)`` is the learning rate of the (t+1)-th update when
``scheduler.step()`` follows each ``optimizer.step()``: the scheduler's lr at
``last_epoch = t``. The functional step counts start at 0 at the first update,
so the two faces run the same sequence. The scheduler updates its lr
recursively (torch's chainable form, float64 Python floats); a schedule
evaluates the closed form, so the two agree to rounding (about 1e-15 relative
in float64; the float32 rounding of the result otherwise).

Arguments are checked here with the same checks the scheduler classes use,
and bad ones raise ``ValueError`` naming the argument and the value.

MultiplicativeLR, ChainedScheduler and ReduceLROnPlateau have no twin: the
first two are recursive (a product of per-step factors), the last depends on
the metrics it is fed.

Example:
  >>> import jax, jax.numpy as jnp
  >>> import lucid_fx as fx
  >>> schedule = fx.schedules.cosine_annealing_lr(0.1, T_max=10)
  >>> [round(float(schedule(t)), 4) for t in (0, 5, 10)]
  [0.1, 0.05, 0.0]
  >>> tx = fx.rmsprop(lr=schedule)        # the count is the transform's step count
  >>> params = {"w": jnp.ones(2)}
  >>> state = tx.init(params)
  >>> updates, state = jax.jit(tx.update)({"w": jnp.ones(2)}, state, params)
"""

from lucid_fx._src.core.publishing import publish
from lucid_fx._src.schedules.schedules import (
    constant_lr,
    cosine_annealing_lr,
    cosine_annealing_warm_restarts,
    cyclic_lr,
    exponential_lr,
    lambda_lr,
    linear_lr,
    multi_step_lr,
    noam_scheduler,
    one_cycle_lr,
    polynomial_lr,
    sequential_lr,
    step_lr,
    swalr,
)

__all__ = [
    "constant_lr",
    "cosine_annealing_lr",
    "cosine_annealing_warm_restarts",
    "cyclic_lr",
    "exponential_lr",
    "lambda_lr",
    "linear_lr",
    "multi_step_lr",
    "noam_scheduler",
    "one_cycle_lr",
    "polynomial_lr",
    "sequential_lr",
    "step_lr",
    "swalr",
]

publish(__name__, globals(), __all__)
del publish
