"""Where an array lives: helpers that place arrays as their parameters are placed.

Every module that makes or moves arrays for a parameter uses these (the
transforms' state, ``fx.backward``'s gradients, clipping, state dicts):
:func:`shard_like` ties a computed array (a gradient) to its parameter's
sharding, :func:`zeros_like_param` makes a state buffer laid out like its
parameter, :func:`put_like` places a copy of a host or device array as another
array is placed (a loaded value as its Parameter), :func:`to_host` gathers an
array that spans hosts, and
:func:`bytes_per_device` measures what each device holds. They are public as
``lucid_fx._src.scale.sharding.*``, next to the scale-out tools that build on them
(:mod:`lucid_fx._src.scale.sharding`); they live here so that the rest of the library
does not depend on those.

Example:
  >>> import jax.numpy as jnp
  >>> from lucid_fx._src.core.placement import zeros_like_param
  >>> w = jnp.ones(3)
  >>> zeros_like_param(w).sharding == w.sharding
  True
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.experimental.shard_alike import shard_alike

from lucid_fx._src.core.base import PyTree


def shard_like(param: Any, x: jax.Array) -> jax.Array:
    """``x``, an array of ``param``'s shape, placed with ``param``'s sharding.

    Under ``jax.jit`` the two are tied with ``shard_alike``, so the compiler
    gives them one sharding; without it, a result that does not depend on
    ``param`` element by element (zeros, a gradient) may be laid out whole on
    every device. Eagerly, ``x`` is moved to ``param.sharding`` if it differs.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.scale.sharding import shard_like
      >>> w = jnp.ones(3)
      >>> shard_like(w, jnp.zeros(3)).sharding == w.sharding
      True
    """
    if isinstance(param, jax.core.Tracer):
        return shard_alike(param, x)[1]
    if isinstance(x, jax.core.Tracer):  # param is a constant captured by a trace (eval_shape)
        return x
    if isinstance(param, jax.Array) and isinstance(x, jax.Array) and x.sharding != param.sharding:
        return jax.device_put(x, param.sharding)
    return x


def zeros_like_param(param: Any, dtype: Any | None = None) -> jax.Array:
    """Zeros of ``param``'s shape, in ``dtype``, placed with ``param``'s sharding.

    Eagerly the sharding is read from ``param.sharding``. Under ``jax.jit`` it is
    not known while tracing (unless the mesh axes are ``Explicit``), so the zeros
    are tied to ``param`` (:func:`shard_like`): the compiler then gives both the
    same sharding, whatever the caller's ``in_shardings``. Plain ``jnp.zeros``
    would be an unconstrained constant, which XLA places whole on one device.

    Args:
      param: the parameter (an array, or a tracer of one).
      dtype: the dtype of the zeros (default: ``param``'s). The shape is always
        ``param``'s, so a real buffer may follow a complex parameter.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from lucid_fx._src.scale.sharding import zeros_like_param
      >>> zeros_like_param(jnp.ones((2, 3)), jnp.bfloat16)
      Array([[0, 0, 0],
             [0, 0, 0]], dtype=bfloat16)
    """
    return shard_like(param, jnp.zeros_like(param, dtype=dtype))


def copy_array(value: Any) -> jax.Array:
    """A private device copy of ``value`` (a JAX or NumPy array, or Python numbers), placed
    as it is (sharding and committedness kept), compiling nothing.

    Private: nobody else holds its memory, so an optimizer may donate it, and a
    NumPy array the caller writes to later does not change it (``jnp.asarray`` may
    alias aligned host memory on CPU). ``jnp.array(x, copy=True)`` would compile a
    copy per shape; ``jax.device_put`` copies without compiling.

    Example:
      >>> import jax.numpy as jnp, numpy as np
      >>> from lucid_fx._src.core.placement import copy_array
      >>> host = np.zeros(2, np.float32)
      >>> device = copy_array(host)
      >>> host[0] = 1.0
      >>> device.tolist()
      [0.0, 0.0]
    """
    if isinstance(value, jax.Array):
        if not value.is_fully_addressable:  # spans several processes: a compiled copy
            return jnp.array(value, copy=True)
        return jax.device_put(value, may_alias=False)
    if isinstance(value, (np.ndarray, np.generic)):
        return jax.device_put(np.array(value))  # the host copy is ours alone
    return jnp.asarray(value)  # Python numbers: a new array, nothing to alias


def put_like(reference: jax.Array, value: Any) -> jax.Array:
    """A private copy of ``value`` placed as ``reference`` is: its sharding, committed or not.

    A copy, because the caller's array must not become a buffer that an optimizer
    donates (nor a NumPy array the caller may write to later). Committedness is
    kept too, for two reasons. An uncommitted array (on the default device) may
    share a computation with sharded ones, a committed single-device one may not.
    And ``jax.jit`` compiles anew when an argument's committedness changes: an
    array made for an uncommitted Parameter that came out committed would
    compile every step function that meets it twice.

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> from lucid_fx._src.core.placement import put_like
      >>> put_like(jnp.zeros(2), np.ones(2)).committed
      False
      >>> put_like(jax.device_put(jnp.zeros(2), jax.devices()[0]), np.ones(2)).committed
      True
    """
    if isinstance(value, jax.Array) and value.committed and not reference.committed:
        value = to_host(value)  # the only way to an uncommitted array
    # np.array first: device_put may alias aligned host memory even with may_alias=False,
    # so it gets a host copy of its own. A device_put copies without compiling anything
    # (jnp.array(x, copy=True) compiles a copy per shape).
    source = value if isinstance(value, jax.Array) else np.array(value)
    return jax.device_put(source, reference.sharding if reference.committed else None,
                          may_alias=False)


def commit_like(reference: jax.Array, value: jax.Array) -> jax.Array:
    """``value``, a small array made for ``reference`` (a count per parameter), committed to
    ``reference``'s one device when ``reference`` is committed there.

    An array made from nothing (``jnp.zeros``) is uncommitted; beside a committed
    buffer, a compiled step gives its successor back committed, and ``jax.jit``
    compiles once more for that (:func:`put_like`). Where ``reference`` spans
    several devices, ``value`` is returned as it is: the computation places it.
    """
    devices = reference.sharding.device_set
    if not reference.committed or value.committed or len(devices) != 1:
        return value
    return jax.device_put(value, next(iter(devices)))


def bytes_per_device(tree: PyTree) -> dict[jax.Device, int]:
    """How many bytes of ``tree``'s arrays each addressable device holds.

    Read from each array's sharding (shard shape times item size), so nothing is
    copied. A replicated array counts in full on every device that holds it.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from lucid_fx._src.scale.sharding import bytes_per_device
      >>> list(bytes_per_device({"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}).values())
      [60]
    """
    held: dict[jax.Device, int] = {}
    for leaf in jax.tree.leaves(tree):
        shard_bytes = math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
        for device in leaf.sharding.addressable_devices:
            held[device] = held.get(device, 0) + shard_bytes
    return held


def to_host(x: jax.Array) -> np.ndarray:
    """A NumPy copy of the whole of ``x``, on every process.

    When ``x`` spans several processes (a multi-host mesh), no process holds all
    of it, so the pieces are exchanged: that is a collective, and every process
    must call ``to_host`` on the same arrays in the same order (as for any other
    multi-host computation). Otherwise it is a copy of ``jax.device_get(x)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.scale.sharding import to_host
      >>> to_host(jnp.arange(3))
      array([0, 1, 2], dtype=int32)
    """
    # np.array copies: on CPU, np.asarray would be a view that keeps a device buffer
    # (a whole, replicated copy when gathered) alive as long as the result lives.
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.array(jax.device_get(x))
    return np.array(multihost_utils.process_allgather(x, tiled=True))
