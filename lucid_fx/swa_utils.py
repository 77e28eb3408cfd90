r"""Weight averaging (SWA and EMA): torch's ``torch.optim.swa_utils``, and its functional twin.

torch 2.13's names, signatures and semantics over pytrees of ``fx.Parameter``:

- :class:`AveragedModel` ``(model, device=None, avg_fn=None, multi_avg_fn=None,
  use_buffers=False)``: ``.module`` is the averaged model (new Parameters, usable
  as the model anywhere), ``update_parameters(model)`` averages the model in
  (the first call copies it), ``.n_averaged`` counts, and ``state_dict()`` /
  ``load_state_dict()`` have torch's layout (``n_averaged``, ``module.<name>``).
  An update over any number of Parameters is one compiled call on packed buffers.
- the averaging functions :func:`get_swa_avg_fn`, :func:`get_swa_multi_avg_fn`,
  :func:`get_ema_avg_fn` and :func:`get_ema_multi_avg_fn`, which **return** the
  new average where torch's multi form writes in place (JAX arrays are
  immutable); write a custom one the same way. A decay is data: changing it
  compiles nothing.
- :class:`SWALR` ``(optimizer, swa_lr, anneal_epochs=10, anneal_strategy="cos",
  last_epoch=-1)``, torch's lr sequence on any stateful fx optimizer.
- :func:`update_bn` ``(loader, model, device=None)`` for the ``nnx.BatchNorm``
  layers of a Flax NNX model.

The functional face: :func:`weight_average` (and its forms :func:`ema_average`,
:func:`swa_average`) is a pure ``init(params) -> state`` /
``update(params, state) -> state`` pair for a jitted training step; the stateful
``AveragedModel`` calls the same math. Unlike ``optax.ema``, which averages the
updates, these average the parameters. The math and a porting table are on the
docs' "Weight averaging" page.

The recipe is torch's::

    swa_model = swa_utils.AveragedModel(model)
    scheduler = fx.lr_scheduler.CosineAnnealingLR(optimizer, T_max=100)
    swa_scheduler = swa_utils.SWALR(optimizer, swa_lr=0.05)
    for epoch in range(100):
        train_one_epoch(model, optimizer)
        if epoch > swa_start:
            swa_model.update_parameters(model)
            swa_scheduler.step()
        else:
            scheduler.step()

Example:
  >>> import jax.numpy as jnp, lucid_fx as fx
  >>> from lucid_fx import swa_utils
  >>> model = {"w": fx.Parameter(jnp.zeros(2))}
  >>> ema = swa_utils.AveragedModel(model, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(0.9))
  >>> for w in (1.0, 0.0):
  ...     model["w"].value = jnp.full(2, w)
  ...     ema.update_parameters(model)
  >>> [round(v, 6) for v in ema.module["w"].value.tolist()], sorted(ema.state_dict())
  ([0.9, 0.9], ['module.w', 'n_averaged'])
"""

from lucid_fx._src.core.publishing import publish
from lucid_fx._src.interop.batch_norm import update_bn
from lucid_fx._src.schedules.lr_scheduler import SWALR
from lucid_fx._src.stateful.averaging import AveragedModel
from lucid_fx._src.transforms.averaging import (
    AveragingFunction,
    AveragingState,
    WeightAveraging,
    ema_average,
    get_ema_avg_fn,
    get_ema_multi_avg_fn,
    get_swa_avg_fn,
    get_swa_multi_avg_fn,
    swa_average,
    weight_average,
)

__all__ = [
    "SWALR",
    "AveragedModel",
    "AveragingFunction",
    "AveragingState",
    "WeightAveraging",
    "ema_average",
    "get_ema_avg_fn",
    "get_ema_multi_avg_fn",
    "get_swa_avg_fn",
    "get_swa_multi_avg_fn",
    "swa_average",
    "update_bn",
    "weight_average",
]

publish(__name__, globals(), __all__)
del publish
