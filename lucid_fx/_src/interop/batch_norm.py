r"""torch's ``swa_utils.update_bn`` for Flax NNX: batch-norm statistics recomputed for averaged weights.

An average of weights is a model no batch went through, so the running
statistics of its batch-norm layers belong to other weights. torch's answer is
one pass over the training data in training mode, with each running mean and
variance reset and then accumulated as a plain (cumulative) average of the
batches' statistics. :func:`update_bn` does that for the ``nnx.BatchNorm``
layers of a Flax NNX model: for batches b = 1, …, B::

    mean ← (1/B)·Σ_b mean_b,    var ← (1/B)·Σ_b var_b

with ``mean_b``, ``var_b`` what ``nnx.BatchNorm`` computes on batch b (its own
variance, the biased one: torch's running variance is unbiased, as its layer keeps it).

A tree of ``fx.Parameter`` has no layers: statistics kept there are array
leaves your own forward function computes, so there is nothing for a library
to find. Average them with the weights (``AveragedModel(..., use_buffers=True)``)
or recompute them with your forward over the data. Flax is not a dependency
of lucid_fx: it is imported when this function runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax

__all__ = ["update_bn"]


def update_bn(loader: Iterable[Any], model: Any, device: Any = None) -> None:
    r"""Recomputes the running statistics of every ``nnx.BatchNorm`` of ``model`` from ``loader``.

    torch's ``update_bn(loader, model, device=None)`` for a Flax NNX model, in
    place: the statistics become the plain average of the batches' statistics
    (the module says how), computed in training mode (``nnx.view`` with
    ``use_running_average=False`` and dropout on, as torch's ``model.train()``;
    ``model`` itself keeps its modes and momenta). Each element of ``loader`` is
    an array or a list/tuple whose first element is the input, as in torch;
    ``device`` (a ``jax.Device`` or ``Sharding``) places each input first. The
    forward pass is compiled once (``nnx.jit``) for all batches of one shape. A
    model without batch norm is left as it is; an empty loader changes nothing
    (torch's resets the statistics to 0 and 1 first).

    Raises ``TypeError`` for anything but an ``nnx.Module`` (with what to do
    for a tree of ``fx.Parameter``), and ``ImportError`` without Flax.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from lucid_fx.swa_utils import update_bn
      >>> model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)),
      ...                        nnx.BatchNorm(3, use_running_average=True, rngs=nnx.Rngs(0)))
      >>> batches = [jax.random.normal(jax.random.key(k), (8, 2)) for k in range(4)]
      >>> update_bn(batches, model)
      >>> means = [jnp.mean(model.layers[0](x), axis=0) for x in batches]
      >>> bool(jnp.allclose(model.layers[1].mean[...], sum(means) / 4, atol=1e-6))
      True
    """
    try:
        from flax import nnx
    except ImportError as error:  # pragma: no cover - flax is installed for the tests
        raise ImportError(
            "update_bn recomputes the statistics of Flax NNX BatchNorm layers and needs flax "
            "(pip install flax)"
        ) from error
    if not isinstance(model, nnx.Module):
        raise TypeError(
            f"update_bn takes a Flax NNX model (an nnx.Module with nnx.BatchNorm layers), got "
            f"{type(model).__name__}. A tree of fx.Parameter (or an AveragedModel of one) has "
            f"no layers: keep batch statistics as array leaves and average them with "
            f"AveragedModel(model, use_buffers=True), or recompute them with your own "
            f"forward pass over the data"
        )
    norms = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]
    if not norms:
        return
    # A view in training mode shares the model's variables; only the view's momenta
    # change: at 0 each batch leaves its own statistics, which are summed here.
    training = nnx.view(model, use_running_average=False, deterministic=False,
                        raise_if_not_found=False)
    views = [m for _, m in nnx.iter_modules(training) if isinstance(m, nnx.BatchNorm)]
    for view in views:
        view.momentum = 0.0
    forward = nnx.jit(lambda m, x: m(x))
    sums: list[list[jax.Array]] | None = None
    count = 0
    for batch in loader:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        if device is not None:
            x = jax.device_put(x, device)
        forward(training, x)
        stats = [[bn.mean[...], bn.var[...]] for bn in norms]
        sums = stats if sums is None else [[s + v for s, v in zip(old, new)]
                                           for old, new in zip(sums, stats)]
        count += 1
    if sums is None:
        return
    for bn, (mean, var) in zip(norms, sums):
        bn.mean[...] = (mean / count).astype(mean.dtype)
        bn.var[...] = (var / count).astype(var.dtype)
