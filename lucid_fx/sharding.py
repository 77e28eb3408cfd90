"""Optimizer state on many devices and hosts: it follows its parameters, or ZeRO-1 splits it.

Two facts let lucid_fx transforms run unchanged on a ``jax.sharding.Mesh`` that
spans devices and hosts:

1. Every state buffer is made by :func:`zeros_like_param`, which gives it its
   parameter's sharding both eagerly and under ``jax.jit(tx.init)``. A jitted
   init therefore never builds a whole copy of the state on one device.
2. The RMSprop update is element-wise. When a parameter, its gradient and its
   state share one sharding, each device updates its own shard and the compiled
   update contains no collective at all. The one exception is
   ``skip_nonfinite=True``: "is every gradient finite?" is a global question,
   answered with one all-reduce of a boolean per step.

For data-parallel training, where every device holds all the parameters,
:func:`zero1` splits the state over a mesh axis instead (ZeRO stage 1): each of
the N devices keeps 1/N of v, ḡ and b, updates only its slice, and the new
updates are all-gathered. :func:`split_sharding` and :func:`split_across` are
its building blocks, and also a simple FSDP placement for parameters.
:func:`bytes_per_device` measures what each device holds; :func:`to_host`
gathers an array that spans hosts; :func:`shard_like` ties a computed array
(a gradient) to its parameter's sharding. These four are defined in
:mod:`lucid_fx._src.core.placement`, which the rest of the library imports, and
re-exported here.

Example:
  >>> import jax, jax.numpy as jnp, lucid_fx as fx
  >>> from jax.sharding import NamedSharding, PartitionSpec as P
  >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
  >>> w = jax.device_put(jnp.ones((8, 4)), NamedSharding(mesh, P("data")))
  >>> state = jax.jit(fx.rmsprop().init)({"w": w})
  >>> state.square_avg["w"].sharding.is_equivalent_to(w.sharding, w.ndim)
  True
"""

from lucid_fx._src.core.publishing import publish
from lucid_fx._src.scale.sharding import (
    bytes_per_device,
    shard_like,
    split_across,
    split_sharding,
    to_host,
    zero1,
    zeros_like_param,
)

__all__ = [
    "bytes_per_device",
    "shard_like",
    "split_across",
    "split_sharding",
    "to_host",
    "zero1",
    "zeros_like_param",
]

publish(__name__, globals(), __all__)
del publish
