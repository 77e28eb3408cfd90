r"""``AveragedModel``: torch's running average (SWA or EMA) of a model's Parameters.

The public face is :mod:`lucid_fx.swa_utils`, which documents it with the
recipe. The math is :mod:`lucid_fx._src.transforms.averaging`'s: every update
calls :func:`~lucid_fx._src.transforms.averaging.averaged_arrays`, the function
behind the functional twin ``weight_average(...).update``.

The averaged Parameters live in packed buffers, as an optimizer's do
(:func:`~lucid_fx._src.stateful.storage.make_packs`), so an update over many small
Parameters is one compiled, donated call whatever their number. The model's
values are read as their optimizer stores them: a buffer laid out as the
average's is used whole; otherwise its slots are cut and gathered inside the
compiled call. torch's own averaging functions are element-wise and run on the
buffers; a custom function sees each Parameter in its own shape, as torch
calls it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np

from lucid_fx._src.core.base import PyTree
from lucid_fx._src.core.layout import Layout
from lucid_fx._src.core.naming import dotted_name
from lucid_fx._src.core.placement import copy_array, put_like, to_host
from lucid_fx._src.core.validation import check_flag, check_same_structure
from lucid_fx._src.interop.host import from_torch, host_array
from lucid_fx._src.stateful.autodiff import Parameter
from lucid_fx._src.stateful.storage import ParamPack, held_by, make_packs, read_host_values
from lucid_fx._src.stateful.tracing import check_eager
from lucid_fx._src.stateful.weights import checked_array, same_bits
from lucid_fx._src.transforms.averaging import (
    AveragingFunction,
    AvgFn,
    MultiAvgFn,
    averaged_arrays,
    check_avg_fns,
)

__all__ = ["AveragedModel", "IncompatibleKeys"]

_ARRAYS = (jax.Array, np.ndarray, np.generic)
_FUNCTIONAL_HINT = (
    "to average a pytree of arrays (inside a jitted training step), use the functional "
    "twin: avg = swa_utils.ema_average(decay) (or swa_average()); state = avg.init(params); "
    "state = avg.update(params, state)"
)


def _is_parameter(x: Any) -> bool:
    return isinstance(x, Parameter)


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict(..., strict=False)`` left out, as torch returns it."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class _ByIdentity:
    """A custom averaging function as a static argument of ``jax.jit``: compared by identity,
    so any callable works (one compilation per function object)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __hash__(self) -> int:
        return id(self.fn)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ByIdentity) and other.fn is self.fn


def _split(fn: Any) -> tuple[_ByIdentity | None, AveragingFunction | None]:
    """(static part, traced part) of an averaging function: ours is data, yours is code."""
    if fn is None:
        return None, None
    return (None, fn) if isinstance(fn, AveragingFunction) else (_ByIdentity(fn), None)


# A pack of the average reads the model's values from:
#   ("whole", j)            the j-th model buffer, laid out exactly as the pack;
#   ("slots", (entry, ...)) one entry per slot: ("packed", j, slot) or ("plain", i).
Source = tuple[Any, ...]


class _Plan:
    """The static half of one update: the packs' layouts and where their model values are.

    Hashed once (a static argument of ``jax.jit`` is hashed at every call).
    """

    __slots__ = ("_hash", "elementwise", "layouts", "model_layouts", "sources")

    def __init__(self, layouts: tuple[Layout, ...], sources: tuple[Source, ...],
                 model_layouts: tuple[Layout, ...], elementwise: bool) -> None:
        self.layouts = layouts  # the average's packs
        self.sources = sources  # per pack of the average
        self.model_layouts = model_layouts  # the model's packs that are read
        self.elementwise = elementwise  # the averaging function may run on whole buffers
        self._hash = hash((layouts, sources, model_layouts, elementwise))

    def _key(self) -> tuple[Any, ...]:
        return (self.layouts, self.sources, self.model_layouts, self.elementwise)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (isinstance(other, _Plan) and self._hash == other._hash
                                 and self._key() == other._key())


class _Route:
    """Where the model's values are for one storage of its Parameters: the packs to read,
    the Parameters read one by one (``plain``, positions among the Parameters), and a plan
    per kind of averaging function. Kept while every Parameter stays where it was."""

    __slots__ = ("key", "packs", "plain", "plans", "sliced")

    def __init__(self, key: Any, packs: list[ParamPack], plain: tuple[int, ...],
                 plans: dict[bool, _Plan], sliced: frozenset[int]) -> None:
        self.key = key
        self.packs = packs
        self.plain = plain
        self.plans = plans
        self.sliced = sliced  # the model packs whose slots are gathered one by one

    def starts(self, packs: Sequence[ParamPack], cut: Any) -> list[tuple[jax.Array, ...]]:
        """The traced offsets of the ``packs`` that are cut (``cut(j)``), ``()`` for the others:
        each offset is an argument of the call, and costs its dispatch."""
        return [pack.starts() if cut(j) else () for j, pack in enumerate(packs)]


@partial(jax.jit, static_argnums=(0, 1), donate_argnums=(4,))
def _update(
    plan: _Plan,
    custom: tuple[_ByIdentity | None, _ByIdentity | None],
    builtin: tuple[AveragingFunction | None, AveragingFunction | None],
    n_averaged: jax.Array,
    averages: list[jax.Array],
    starts: list[tuple[jax.Array, ...]],
    model_buffers: list[jax.Array],
    model_starts: list[tuple[jax.Array, ...]],
    plain: list[jax.Array],
    buffers: list[jax.Array],
    their_buffers: list[jax.Array],
) -> tuple[list[jax.Array], list[jax.Array]]:
    """Every pack of the average, and the averaged buffers, in one compiled call.

    Compiled once per plan and averaging function: ``n_averaged``, the values
    and a decay of torch's factories are data. The average's packs are donated
    (updated in place); its buffers (array leaves) are not, as the caller may
    still hold the tree that has them.
    """
    avg_fn: Any = custom[0].fn if custom[0] is not None else builtin[0]
    multi_avg_fn: Any = custom[1].fn if custom[1] is not None else builtin[1]
    views: dict[int, list[jax.Array]] = {}

    def model_view(j: int) -> list[jax.Array]:
        if j not in views:
            views[j] = plan.model_layouts[j].unpack(model_buffers[j], model_starts[j])
        return views[j]

    def current(source: Source) -> list[jax.Array]:
        if source[0] == "whole":
            return model_view(source[1])
        return [model_view(e[1])[e[2]] if e[0] == "packed" else plain[e[1]] for e in source[1]]

    if plan.elementwise:
        # Whole buffers: one fused loop per pack, whatever the number of Parameters.
        currents = [model_buffers[s[1]] if s[0] == "whole" else layout.pack(current(s))
                    for layout, s in zip(plan.layouts, plan.sources)]
        new = averaged_arrays(avg_fn, multi_avg_fn, [*averages, *buffers],
                              [*currents, *their_buffers], n_averaged)
        return new[:len(averages)], new[len(averages):]
    # A custom function sees each Parameter in its own shape, as torch calls it.
    mine = [layout.unpack(a, s) for layout, a, s in zip(plan.layouts, averages, starts)]
    theirs = [current(s) for s in plan.sources]
    flat = averaged_arrays(avg_fn, multi_avg_fn, [*(x for m in mine for x in m), *buffers],
                           [*(x for t in theirs for x in t), *their_buffers], n_averaged)
    packed, k = [], 0
    for layout in plan.layouts:
        packed.append(layout.pack(flat[k:k + len(layout)]))
        k += len(layout)
    return packed, flat[k:]


def _placement(device: Any) -> Any:
    """``device`` as a JAX placement: ``None``, a Device or Sharding, or a platform name or
    device index as torch takes them (``"cpu"``, ``"cuda"``/``"gpu"``, ``0``)."""
    if device is None or isinstance(device, (jax.Device, jax.sharding.Sharding)):
        return device
    if isinstance(device, (int, np.integer)) and not isinstance(device, bool):
        devices = jax.devices()
        if not 0 <= device < len(devices):
            raise ValueError(f"Invalid device value: {device!r} (this process has "
                             f"{len(devices)} device(s))")
        return devices[int(device)]
    if isinstance(device, str):
        platform, _, index = device.partition(":")
        platform = {"cuda": "gpu"}.get(platform, platform)
        try:
            return jax.devices(platform)[int(index or 0)]
        except (RuntimeError, ValueError, IndexError) as error:
            raise ValueError(f"Invalid device value: {device!r} ({error})") from None
    raise TypeError(
        f"Invalid device value: {device!r} (expected None, a jax.Device, a Sharding, a "
        f"platform name such as 'cpu', or a device index)"
    )


class AveragedModel:
    r"""A running average of a model's Parameters: torch's ``swa_utils.AveragedModel``.

    ``AveragedModel(model, device=None, avg_fn=None, multi_avg_fn=None,
    use_buffers=False)``. ``model`` is any pytree holding :class:`fx.Parameter
    <lucid_fx.Parameter>` objects. ``.module`` is a copy of it with new
    Parameters (tied ones stay tied) that hold the average; use it as the model
    anywhere (``fx.backward``, ``fx.values``, an evaluation). Each
    :meth:`update_parameters` call averages the model's current values in; the
    first one copies them, as torch's does::

        n = 0:  W̄ ← W;   n > 0:  W̄ ← avg_fn(W̄, W, n);   then n ← n + 1

    ``avg_fn`` (one array) or ``multi_avg_fn`` (lists, one per dtype) is torch's
    factories' (``get_ema_multi_avg_fn(decay)``, ...) or your own written against
    them, returning the new average; by default SWA, the arithmetic mean of
    every model averaged in. ``.n_averaged`` counts the updates. A decay of
    torch's factories is data: assigning ``swa.multi_avg_fn =
    get_ema_multi_avg_fn(0.99)`` mid-run does not compile again.

    Array leaves of the model (batch-norm statistics kept as plain arrays) are
    its buffers: with ``use_buffers=False`` each update copies them from the
    model, as torch keeps buffers in sync; with ``use_buffers=True`` the
    floating-point ones are averaged too (integer ones are copied: torch would
    average a count). Arrays are immutable, so an update that writes buffers
    replaces ``.module`` by a new tree holding the same Parameters: read
    ``swa.module`` after updating.

    ``device`` (a ``jax.Device``, a ``Sharding``, or torch's ``"cpu"``/``"cuda"``/index)
    places the average there, for instance in host memory; by default each
    averaged Parameter is placed as its model Parameter is.

    ``state_dict()``/``load_state_dict()`` have torch's layout: ``n_averaged``
    and ``module.<name>`` for each Parameter and buffer (names dotted as
    ``fx.named_parameters`` writes them), so a torch ``AveragedModel``'s state
    dict loads by name, and ours loads into torch's through ``torch.save``.

    Raises ``TypeError`` for a model without Parameters (with what to do
    instead), a non-callable function or a non-float Parameter; ``ValueError``
    for both functions at once (torch: ``AssertionError``), a bad
    ``use_buffers`` or ``device``; ``RuntimeError`` under a JAX transformation.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> from lucid_fx.swa_utils import AveragedModel, get_ema_multi_avg_fn
      >>> model = {"w": fx.Parameter(jnp.zeros(2))}
      >>> swa, ema = AveragedModel(model), AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.5))
      >>> for w in (1.0, 2.0, 6.0):
      ...     model["w"].value = jnp.full(2, w)
      ...     swa.update_parameters(model)
      ...     ema.update_parameters(model)
      >>> swa.module["w"].value.tolist(), ema.module["w"].value.tolist(), int(swa.n_averaged)
      ([3.0, 3.0], [3.75, 3.75], 3)
    """

    def __init__(
        self,
        model: PyTree,
        device: Any = None,
        avg_fn: AvgFn | None = None,
        multi_avg_fn: MultiAvgFn | None = None,
        use_buffers: bool = False,
    ) -> None:
        check_eager("AveragedModel(...)")
        check_avg_fns("AveragedModel", avg_fn, multi_avg_fn)
        check_flag("use_buffers", use_buffers)
        placement = _placement(device)
        flat, treedef = jax.tree_util.tree_flatten_with_path(model, is_leaf=_is_parameter)
        self._paths = tuple(path for path, _ in flat)
        leaves = [leaf for _, leaf in flat]
        first: dict[int, int] = {}  # id(Parameter) -> its position among the distinct ones
        positions: list[int] = []  # leaf index of each distinct Parameter
        for i, leaf in enumerate(leaves):
            if isinstance(leaf, Parameter) and first.setdefault(id(leaf), len(positions)) == len(
                    positions):
                positions.append(i)
        if not positions:
            arrays = sum(isinstance(leaf, _ARRAYS) for leaf in leaves)
            raise TypeError(
                f"AveragedModel averages fx.Parameter objects, but the model (a "
                f"{type(model).__name__} with {arrays} array leaves) holds none: pass the "
                f"tree of Parameters your optimizer trains (fx.Parameter(array) wraps an "
                f"array); {_FUNCTIONAL_HINT}"
            )
        for i in positions:
            if not jnp.issubdtype(leaves[i].dtype, jnp.inexact):
                raise TypeError(
                    f"AveragedModel averages floating-point Parameters, but "
                    f"{self._where(i)} has dtype {leaves[i].dtype}: cast it or "
                    f"leave it out of the model"
                )

        def placed(value: Any) -> Any:
            return value if placement is None else jax.device_put(value, placement)

        def copy(value: Any) -> jax.Array:
            return copy_array(placed(value))

        clones = [Parameter(placed(leaves[i].value)) for i in positions]  # Parameter copies
        self._kinds = tuple(
            "param" if isinstance(leaf, Parameter) else "buffer" if isinstance(leaf, _ARRAYS)
            else "static" for leaf in leaves)
        self._treedef = treedef
        self._positions = tuple(positions)
        self._params = clones
        self._leaves = [clones[first[id(leaf)]] if kind == "param" else
                        copy(leaf) if kind == "buffer" else leaf
                        for leaf, kind in zip(leaves, self._kinds)]
        self.module: PyTree = jax.tree.unflatten(treedef, self._leaves)
        self._packs = make_packs(clones, elementwise=True)
        index = {id(p): k for k, p in enumerate(clones)}
        self._members = [tuple(index[id(p)] for p in pack.params) for pack in self._packs]
        self._buffer_leaves = tuple(i for i, kind in enumerate(self._kinds) if kind == "buffer")
        self._cached_route: _Route | None = None
        self._placement = placement
        self._n = 0
        self.avg_fn = avg_fn
        self.multi_avg_fn = multi_avg_fn
        self.use_buffers = use_buffers

    # ----- reading

    @property
    def n_averaged(self) -> np.int64:
        """How many models have been averaged in (torch's ``n_averaged`` buffer)."""
        return np.int64(self._n)

    def __repr__(self) -> str:
        fn = self.avg_fn if self.avg_fn is not None else self.multi_avg_fn
        return (f"AveragedModel(n_averaged={self._n}, parameters={len(self._params)}, "
                f"averaging={fn if fn is not None else 'SWA'}, use_buffers={self.use_buffers})")

    def _where(self, leaf: int) -> str:
        """The model's leaf ``leaf`` as its key path: ``model['fc']['w']``."""
        return f"model{jax.tree_util.keystr(self._paths[leaf])}"

    # ----- updating

    def _check_model(self, leaves: list[Any], treedef: Any, model: PyTree) -> None:
        """Raises unless the model's leaves match the average's structure, kinds, shapes, dtypes."""
        if cast(Any, treedef) != self._treedef:
            check_same_structure(self.module, model, what="the model's Parameters",
                                 against="the averaged model's (update_parameters takes the "
                                 "model it was built from)")
            raise ValueError(f"the model's tree structure differs from the averaged model's: "
                             f"{treedef} vs {self._treedef}")
        for i, (leaf, kind) in enumerate(zip(leaves, self._kinds)):
            if kind == "param" and not isinstance(leaf, Parameter):
                raise TypeError(
                    f"update_parameters: {self._where(i)} is a {type(leaf).__name__} "
                    f"where the averaged model has an fx.Parameter: pass the tree of Parameters "
                    f"it was built from; {_FUNCTIONAL_HINT}"
                )
            if kind == "buffer" and not isinstance(leaf, _ARRAYS):
                raise TypeError(f"update_parameters: {self._where(i)} is a "
                                f"{type(leaf).__name__} where the averaged model has an array")
        for k, i in enumerate(self._positions):
            mine, theirs = self._params[k], leaves[i]
            if (theirs.shape, theirs.dtype) != (mine.shape, mine.dtype):
                raise ValueError(
                    f"update_parameters: {self._where(i)} has shape {theirs.shape} and "
                    f"dtype {theirs.dtype}; the averaged model's has {mine.shape} and {mine.dtype}"
                )

    def _route(self, leaves: list[Any], treedef: Any, model: PyTree) -> _Route:
        """Where each pack of the average finds its model values (checked; cached while the
        model's Parameters stay in the same storage, whose layouts fix their shapes)."""
        if cast(Any, treedef) != self._treedef:
            self._check_model(leaves, treedef, model)  # raises, naming the difference
        params = [leaves[i] for i in self._positions]
        try:
            key = tuple([p.storage for p in params])
        except AttributeError:  # a leaf that is not a Parameter: the check says which
            key = None
        cached = self._cached_route
        if key is not None and cached is not None and cached.key == key:
            return cached
        self._check_model(leaves, treedef, model)
        packs: list[ParamPack] = []
        pack_index: dict[int, int] = {}
        plain: list[int] = []
        sources: list[Source] = []
        for mine, members in zip(self._packs, self._members):
            entries: list[tuple[Any, ...]] = []
            for k in members:
                held = held_by(params[k])
                if held is None:
                    entries.append(("plain", len(plain)))
                    plain.append(k)
                    continue
                pack, slot = held
                if any(pack is ours for ours in self._packs):
                    raise ValueError(
                        f"update_parameters: {self._where(self._positions[k])} is a Parameter "
                        f"of the averaged model itself (swa.module): pass the model you train"
                    )
                j = pack_index.setdefault(id(pack), len(packs))
                if j == len(packs):
                    packs.append(pack)
                entries.append(("packed", j, slot))
            j = entries[0][1] if entries[0][0] == "packed" else -1
            if j >= 0 and packs[j].layout == mine.layout and all(
                    e == ("packed", j, s) for s, e in enumerate(entries)):
                sources.append(("whole", j))
            else:
                sources.append(("slots", tuple(entries)))
        layouts = tuple(pack.layout for pack in self._packs)
        model_layouts = tuple(pack.layout for pack in packs)
        sliced = frozenset(e[1] for source in sources if source[0] == "slots"
                           for e in source[1] if e[0] == "packed")
        route = _Route(key, packs, tuple(plain), {
            elementwise: _Plan(layouts, tuple(sources), model_layouts, elementwise)
            for elementwise in (True, False)}, sliced)
        # A Parameter outside any pack may change shape: such a model is checked every time.
        self._cached_route = route if not plain else None
        return route

    def update_parameters(self, model: PyTree) -> None:
        r"""Averages ``model``'s current values in: one compiled call, then ``n_averaged += 1``.

        ``model`` must have the structure, Parameter shapes and dtypes of the model
        this average was built from (``ValueError``/``TypeError`` naming the first
        difference otherwise; nothing changes then). The first call copies; later
        calls apply ``avg_fn``/``multi_avg_fn`` (SWA by default). Buffers are copied
        or, with ``use_buffers=True``, averaged too.
        """
        check_eager("AveragedModel.update_parameters()")
        if any(pack.retired for pack in self._packs):
            raise RuntimeError(
                "the averaged model's Parameters were taken over by an optimizer created "
                "later: AveragedModel keeps averaging into its own storage. Train a copy "
                "instead: jax.tree.map(fx.Parameter, fx.values(swa.module))"
            )
        check_avg_fns("AveragedModel", self.avg_fn, self.multi_avg_fn)
        # A Parameter is a leaf to JAX (no pytree node): no is_leaf, which costs a Python
        # call per node.
        leaves, treedef = jax.tree.flatten(model)
        route = self._route(leaves, treedef, model)
        for i in self._buffer_leaves:
            if not isinstance(leaves[i], _ARRAYS):
                self._check_model(leaves, treedef, model)
        averaged_buffers = [i for i in self._buffer_leaves if self.use_buffers
                            and jnp.issubdtype(jnp.result_type(leaves[i]), jnp.inexact)]
        custom_avg, builtin_avg = _split(self.avg_fn)
        custom_multi, builtin_multi = _split(self.multi_avg_fn)
        elementwise = custom_avg is None and custom_multi is None
        plan = route.plans[elementwise]
        model_buffers = [pack.buffer for pack in route.packs]
        # Whole buffers need no offsets; a custom function cuts every buffer.
        model_starts = route.starts(route.packs, lambda j: not elementwise or j in route.sliced)
        starts = route.starts(self._packs, lambda j: not elementwise)
        plain = [leaves[self._positions[k]].value for k in route.plain]
        theirs = [jnp.asarray(leaves[i]) for i in averaged_buffers]
        if self._placement is not None:
            model_buffers, model_starts, plain, theirs = jax.device_put(
                (model_buffers, model_starts, plain, theirs), self._placement)
        new_packs, new_buffers = _update(
            plan, (custom_avg, custom_multi), (builtin_avg, builtin_multi),
            np.int32(self._n), [pack.buffer for pack in self._packs], starts,
            model_buffers, model_starts, plain,
            [self._leaves[i] for i in averaged_buffers], theirs)
        for pack, buffer in zip(self._packs, new_packs):
            pack.set_buffer(buffer)
        if self._buffer_leaves:
            averaged = dict(zip(averaged_buffers, new_buffers))
            for i in self._buffer_leaves:
                self._leaves[i] = averaged[i] if i in averaged else put_like(
                    cast(jax.Array, self._leaves[i]), leaves[i])
            self.module = jax.tree.unflatten(self._treedef, self._leaves)
        self._n += 1

    # ----- state dicts

    def _named(self) -> list[tuple[str, int]]:
        """(dotted name, leaf index) for every Parameter and buffer leaf, in pytree order."""
        named: list[tuple[str, int]] = []
        owner: dict[str, Any] = {}
        for i, path in enumerate(self._paths):
            if self._kinds[i] == "static":
                continue
            name = dotted_name(path)
            leaf = self._leaves[i]
            if owner.setdefault(name, leaf) is not leaf:
                raise ValueError(f"two different leaves of the model are both named {name!r} "
                                 f"(a key with a dot in it?); state dicts need unique names")
            named.append((name, i))
        return named

    def state_dict(self) -> dict[str, np.ndarray]:
        """torch's layout: ``{"n_averaged": int64, "module.<name>": array, ...}``.

        Values are host NumPy copies (one transfer per packed buffer) that
        ``torch.save`` writes as tensors, so ``torch.load``'s default reads the
        file and a torch ``AveragedModel`` loads it. A tied Parameter is listed
        under each of its names, as torch lists it.
        """
        check_eager("AveragedModel.state_dict()")
        out: dict[str, np.ndarray] = {"n_averaged": host_array(np.int64(self._n))}
        named = self._named()
        leaves = [self._leaves[i] for _, i in named]
        params = iter(read_host_values([x for x in leaves if isinstance(x, Parameter)]))
        for (name, _), leaf in zip(named, leaves):
            value = next(params) if isinstance(leaf, Parameter) else to_host(leaf)
            out[f"module.{name}"] = host_array(value)
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any],
                        strict: bool = True) -> IncompatibleKeys:
        """Restores ``state_dict()`` (ours or a torch ``AveragedModel``'s), paired by name.

        Everything is checked before anything is written: with ``strict`` (the
        default) the keys must be exactly ours (``ValueError`` listing the missing
        and unexpected ones); every value must be an array or tensor of its
        Parameter's shape and dtype, ``n_averaged`` an integer >= 0 (``ValueError``
        naming the entry). Returns torch's ``(missing_keys, unexpected_keys)``.
        """
        check_eager("AveragedModel.load_state_dict()")
        check_flag("strict", strict)
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"Expected state_dict to be dict-like, got {type(state_dict).__name__}")
        named = {f"module.{name}": i for name, i in self._named()}
        expected = ["n_averaged", *named]
        missing = [k for k in expected if k not in state_dict]
        unexpected = sorted(map(str, set(state_dict) - set(expected)))
        if strict and (missing or unexpected):
            raise ValueError(f"state dict does not match the averaged model: missing {missing}, "
                             f"unexpected {unexpected}")
        n = self._n
        if "n_averaged" in state_dict:
            count = np.asarray(from_torch(state_dict["n_averaged"]))
            if count.shape != () or not np.issubdtype(count.dtype, np.integer) or count < 0:
                raise ValueError(f"'n_averaged': expected an integer >= 0, got "
                                 f"{state_dict['n_averaged']!r:.60}")
            n = int(count)
        values: dict[int, Any] = {}  # leaf index -> checked value
        given: dict[int, tuple[str, Any]] = {}  # id(leaf) -> its first (key, value): ties agree
        for key, i in named.items():
            if key not in state_dict:
                continue
            leaf = self._leaves[i]
            value = checked_array(repr(key), leaf, state_dict[key])
            first = given.setdefault(id(leaf), (key, value))
            if first[1] is not value and not same_bits(first[1], value):
                raise ValueError(f"{first[0]!r} and {key!r} are the same Parameter but are "
                                 f"given different arrays")
            values[i] = value
        # Checked: now write, one host buffer and one transfer per pack.
        writes: dict[int, tuple[ParamPack, dict[int, Any]]] = {}
        for i, value in values.items():
            leaf = self._leaves[i]
            if not isinstance(leaf, Parameter):  # a buffer
                self._leaves[i] = put_like(cast(jax.Array, leaf), value)
                continue
            held = held_by(leaf)
            if held is None:
                leaf.value = value
                continue
            writes.setdefault(id(held[0]), (held[0], {}))[1][held[1]] = value
        for pack, slots in writes.values():
            pack.set_values(slots)
        self.module = jax.tree.unflatten(self._treedef, self._leaves)
        self._n = n
        return IncompatibleKeys(missing, unexpected)
