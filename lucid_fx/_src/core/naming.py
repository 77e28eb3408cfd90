"""torch-style dotted names for the leaves of a pytree.

torch names a parameter by its path through the modules: ``fc1.weight``,
``layers.0.bias``. A pytree path names a leaf the same way, so a state dict
can pair a lucid_fx Parameter with a torch tensor by name rather than by
position (which differs: a dict lists its keys sorted, a torch module in the
order they were registered).
"""

from __future__ import annotations

from typing import Any, TypeAlias

from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey

KeyPath: TypeAlias = tuple[Any, ...]


def dotted_name(path: KeyPath) -> str:
    """The torch-style name of a JAX key path: its keys joined by dots.

    A dict key gives ``str(key)``, a list or tuple index (or a flattened index)
    the number, an attribute (an Equinox module's field) its name. So
    ``{"fc1": {"weight": p}}`` names ``p`` ``"fc1.weight"`` and
    ``[{"weight": p}]`` names it ``"0.weight"``, as ``torch.nn.Module`` does.
    The empty path (the tree is a single leaf) is ``""``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from lucid_fx._src.core.naming import dotted_name
      >>> tree = {"fc1": {"weight": jnp.ones(2)}, "blocks": [jnp.zeros(1)]}
      >>> [dotted_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
      ['blocks.0', 'fc1.weight']
    """
    parts = []
    for key in path:
        if isinstance(key, DictKey):
            parts.append(str(key.key))
        elif isinstance(key, SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, FlattenedIndexKey):
            parts.append(str(key.key))
        elif isinstance(key, GetAttrKey):
            parts.append(key.name)
        else:
            parts.append(str(key))
    return ".".join(parts)
