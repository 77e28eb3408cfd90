"""A model's weights out and back in: the pytree counterpart of ``state_dict``.

The public face is :mod:`lucid_fx.weights`, which documents it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.tree_util import keystr

from lucid_fx._src.core.base import PyTree
from lucid_fx._src.core.naming import KeyPath, dotted_name
from lucid_fx._src.core.placement import copy_array, put_like, to_host
from lucid_fx._src.interop.host import from_torch, host_array
from lucid_fx._src.stateful.autodiff import Parameter
from lucid_fx._src.stateful.storage import ParamPack, held_by, read_host_values

__all__ = ["load_state_dict", "load_values", "state_dict", "values"]


def _is_parameter(x: Any) -> bool:
    return isinstance(x, Parameter)


def _where(path: KeyPath) -> str:
    return keystr(path) or "the root"


def _parameters_with_paths(tree: PyTree) -> list[tuple[KeyPath, Parameter]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_parameter)[0]
    return [(tuple(path), leaf) for path, leaf in leaves if isinstance(leaf, Parameter)]


def _snapshot(p: Parameter) -> jax.Array:
    # A copy (same sharding, committed or not): an optimizer donates the buffers it
    # holds, which would delete an array returned by reference.
    return copy_array(p.value)


def values(tree: PyTree) -> PyTree:
    """``tree`` with every Parameter replaced by a copy of its current array.

    Other leaves are returned as they are. The arrays are ``jax.Array`` copies
    with the Parameters' shardings, so they stay valid while an optimizer keeps
    stepping. The result is a plain pytree of arrays: save it with
    ``orbax.checkpoint`` (``StandardCheckpointer``, ``PyTreeCheckpointer``), or
    pickle ``jax.tree.map(np.asarray, values(tree))``; :func:`load_values`
    writes it back.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> model = {"fc": {"weight": fx.Parameter(jnp.ones((2, 2))), "bias": fx.Parameter(jnp.zeros(2))}}
      >>> fx.values(model)["fc"]["bias"]
      Array([0., 0.], dtype=float32)
    """
    return jax.tree.map(lambda x: _snapshot(x) if isinstance(x, Parameter) else x,
                        tree, is_leaf=_is_parameter)


def checked_array(where: str, p: Parameter | jax.Array, value: Any) -> Any:
    """``value`` if it is an array of ``p``'s shape and dtype (``p`` a Parameter, or an array
    leaf); raises otherwise, naming the entry ``where``. A torch tensor becomes an array."""
    if isinstance(value, Parameter):
        raise TypeError(
            f"{where} is a Parameter; expected an array: pass values(tree) rather than the tree"
        )
    value = from_torch(value)  # a torch module's state dict, or ours back from torch.load
    if not isinstance(value, (np.ndarray, np.generic, jax.Array)):
        raise TypeError(
            f"{where} is a {type(value).__name__}; expected a NumPy or JAX array or a torch tensor"
        )
    shape, dtype = tuple(np.shape(value)), np.dtype(value.dtype)
    if shape != p.shape or dtype != p.dtype:
        raise ValueError(
            f"{where}: expected shape {p.shape} and dtype {p.dtype}, got shape {shape} and "
            f"dtype {dtype}"
        )
    return value


def same_bits(a: Any, b: Any) -> bool:
    """Whether two arrays hold the same bytes (a Parameter given twice must get one value)."""
    return bool(to_host(a).tobytes() == to_host(b).tobytes())


def _write(pairs: Sequence[tuple[str, Parameter, Any]]) -> None:
    """Checks ``(where, Parameter, array)`` triples, then writes them; all or nothing."""
    checked: dict[int, tuple[str, Parameter, Any]] = {}
    for where, p, value in pairs:
        value = checked_array(where, p, value)
        first = checked.get(id(p))
        if first is None:
            checked[id(p)] = (where, p, value)
        elif first[2] is not value and not same_bits(first[2], value):
            raise ValueError(
                f"{first[0]} and {where} are the same Parameter but are given different arrays"
            )
    # Every copy is made before the first write, so a failing transfer changes nothing.
    by_pack: dict[int, tuple[ParamPack, dict[int, Any]]] = {}
    placed = []
    for _, p, value in checked.values():
        held = held_by(p)
        if held is None:
            placed.append((p, put_like(p.value, value)))
        else:  # written into its optimizer's buffer, all of a pack's slots at once
            by_pack.setdefault(id(held[0]), (held[0], {}))[1][held[1]] = to_host(value)
    for p, value in placed:
        p.value = value
    for pack, values in by_pack.values():
        pack.set_values(values)


def load_values(tree: PyTree, values: PyTree) -> None:
    """Writes the arrays of ``values`` into the Parameters of ``tree``, matched by key path.

    ``values`` has the structure of :func:`values`'s result: each Parameter's
    key path must lead to an array of that Parameter's shape and dtype (NumPy or
    JAX). The two trees match when they have the same leaf paths, so a tuple
    may come back as a list, as ``orbax.checkpoint`` restores it without a
    target. Entries at non-Parameter leaves are not read. A Parameter that
    appears at several paths must get equal arrays.

    Everything is checked before anything is written: a structure mismatch
    (``ValueError`` naming the first differing path), a wrong shape or dtype
    (``ValueError`` naming the path, expected and got), or a leaf that is not an
    array (``TypeError``) leaves every Parameter unchanged. Each Parameter gets
    a copy placed with its current sharding; one held by an optimizer is
    written in its packed storage, so the next step starts from the loaded values.

    Example:
      >>> import jax.numpy as jnp, numpy as np, lucid_fx as fx
      >>> model = [fx.Parameter(jnp.zeros(2)), {"b": fx.Parameter(jnp.zeros(()))}]
      >>> fx.load_values(model, [np.ones(2, np.float32), {"b": np.float32(5)}])
      >>> model[0].value.tolist(), float(model[1]["b"].value)
      ([1.0, 1.0], 5.0)
      >>> fx.load_values(model, [np.ones(3, np.float32), {"b": np.float32(5)}])
      Traceback (most recent call last):
      ValueError: [0]: expected shape (2,) and dtype float32, got shape (3,) and dtype float32
    """
    expected = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_parameter)[0]
    got = jax.tree_util.tree_flatten_with_path(values)[0]
    for (path, _), (other, _) in zip(expected, got):
        if tuple(path) != tuple(other):
            raise ValueError(
                f"values do not match the tree's structure: the tree has a leaf at "
                f"{_where(path)}, the values have {_where(other)} in its place"
            )
    if len(expected) != len(got):
        extra, owner = (got, "values have") if len(got) > len(expected) else (expected, "tree has")
        path = extra[min(len(expected), len(got))][0]
        raise ValueError(
            f"values do not match the tree's structure: only the {owner} a leaf at "
            f"{_where(path)} ({len(expected)} leaves in the tree, {len(got)} in the values)"
        )
    _write([
        (_where(path), leaf, value)
        for (path, leaf), (_, value) in zip(expected, got)
        if isinstance(leaf, Parameter)
    ])


def _named(tree: PyTree) -> list[tuple[str, Parameter]]:
    """(dotted name, Parameter) for every Parameter path; raises if two Parameters share a name."""
    named = [(dotted_name(path), p) for path, p in _parameters_with_paths(tree)]
    owner: dict[str, Parameter] = {}
    for name, p in named:
        if owner.setdefault(name, p) is not p:
            raise ValueError(
                f"two different Parameters of the tree are both named {name!r} (a key "
                f"with a dot in it?); names must be unique to pair by name"
            )
    return named


def state_dict(tree: PyTree) -> dict[str, np.ndarray]:
    """The Parameters of ``tree`` as ``{dotted name: NumPy array}``, torch's flat form.

    Names are :func:`lucid_fx._src.core.naming.dotted_name` of each Parameter's path
    (``{"fc1": {"weight": p}}`` gives ``"fc1.weight"``), in pytree order (dict
    keys sorted); a Parameter found at several paths is listed under each name,
    as torch lists tied weights. Values are host NumPy copies (gathered from
    every device: with several processes, every process must call this), so
    the dict pickles anywhere. Other leaves of the tree are not included.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> from lucid_fx._src.stateful.weights import state_dict
      >>> model = {"fc1": {"weight": fx.Parameter(jnp.ones((1, 2))), "bias": fx.Parameter(jnp.zeros(1))}}
      >>> state_dict(model)
      {'fc1.bias': array([0.], dtype=float32), 'fc1.weight': array([[1., 1.]], dtype=float32)}
    """
    named = _named(tree)
    values = read_host_values([p for _, p in named])
    return {name: host_array(value) for (name, _), value in zip(named, values)}


def load_state_dict(tree: PyTree, state_dict: Mapping[str, Any]) -> None:
    """Writes ``{dotted name: array}`` into the Parameters of ``tree``, paired by name.

    The counterpart of :func:`state_dict`, and of torch's
    ``module.load_state_dict`` (strict): the names must be exactly the tree's
    Parameter names (:func:`lucid_fx._src.core.naming.dotted_name`), whatever their order, so a dict
    tree (keys sorted) loads a torch module's state dict (registration order)
    by name. Missing or unexpected names raise one ``ValueError`` listing both;
    a wrong shape or dtype raises ``ValueError`` naming the entry; in every case
    no Parameter has changed. Values are NumPy or JAX arrays or torch tensors (a
    torch ``module.state_dict()``, with buffers such as batch-norm statistics left
    out, or this module's :func:`state_dict` back from ``torch.load``). Each
    Parameter gets a copy placed with its current sharding, also inside an
    optimizer's storage.

    Example:
      >>> import jax.numpy as jnp, numpy as np, lucid_fx as fx
      >>> from lucid_fx._src.stateful.weights import load_state_dict
      >>> model = {"v": fx.Parameter(jnp.zeros(2)), "w": fx.Parameter(jnp.zeros(2))}
      >>> load_state_dict(model, {"w": np.ones(2, np.float32), "v": np.full(2, 2, np.float32)})
      >>> model["w"].value.tolist(), model["v"].value.tolist()
      ([1.0, 1.0], [2.0, 2.0])
      >>> load_state_dict(model, {"w": np.ones(2, np.float32), "u": np.ones(2, np.float32)})
      Traceback (most recent call last):
      ValueError: state dict does not match the tree's Parameters: missing ['v'], unexpected ['u']
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"state_dict must be a mapping {{name: array}}, got {type(state_dict).__name__}"
        )
    named = _named(tree)
    names = {name for name, _ in named}
    missing = sorted(names - set(state_dict))
    unexpected = sorted(map(str, set(state_dict) - names))
    if missing or unexpected:
        raise ValueError(
            f"state dict does not match the tree's Parameters: missing {missing}, "
            f"unexpected {unexpected}"
        )
    _write([(repr(name), p, state_dict[name]) for name, p in named])
