"""A model's weights out and back in: the pytree counterpart of ``state_dict``.

Two forms, for two uses:

* :func:`values` / :func:`load_values` keep the tree's structure: every
  :class:`~lucid_fx.Parameter` becomes its array. That tree is what JAX
  checkpointing (``orbax.checkpoint``), ``jax.tree.map`` and pickle handle.
* :func:`state_dict` / :func:`load_state_dict` use torch's flat form,
  ``{"fc1.weight": np.ndarray, ...}``, and pair arrays with Parameters by name,
  so a torch ``module.state_dict()`` loads into an equivalent tree.

Names are :func:`lucid_fx._src.core.naming.dotted_name` of each Parameter's key path. Both loaders check
every entry before writing any: on error, no Parameter has changed. A loaded
value is a copy, placed with the Parameter's current sharding, and a Parameter
held by an optimizer (packed storage) is written in place, so the optimizer
continues from the loaded values.

Example:
  >>> import jax.numpy as jnp, lucid_fx as fx
  >>> model = {"w": fx.Parameter(jnp.ones(2)), "n": 3}
  >>> saved = fx.values(model)
  >>> model["w"].value = jnp.zeros(2)
  >>> fx.load_values(model, saved)
  >>> model["w"].value.tolist(), saved["n"]
  ([1.0, 1.0], 3)
"""

from lucid_fx._src.core.publishing import publish
from lucid_fx._src.stateful.weights import (
    load_state_dict,
    load_values,
    state_dict,
    values,
)

__all__ = [
    "load_state_dict",
    "load_values",
    "state_dict",
    "values",
]

publish(__name__, globals(), __all__)
del publish
