"""Parameter storage: the Parameters of an optimizer group in a few buffers.

:class:`ParamPack` is the storage an optimizer gives its Parameters
(:class:`~lucid_fx._src.stateful.parameter.Storage`): a buffer laid out by a
:class:`~lucid_fx._src.core.layout.Layout`, the accumulated gradient buffer
beside it, and the gradients assigned by hand until they are folded in.
``Parameter.value`` and ``.grad`` read through it lazily. A pack adopts its
Parameters when it is made and gives one back with :meth:`ParamPack.release`.

:func:`make_packs` is the policy, which the optimizer's math decides:

- element-wise math (every optimizer of torch's family but Muon and Adafactor):
  the small Parameters of one dtype share one flat buffer;
- math that needs each array's shape: Parameters of one shape and dtype share
  one stack, each in its own shape (same-shape matrices then run as one batch);
- anything else (a large Parameter under element-wise math, one spread over
  several devices, or the only one of its shape): its own array, as it is.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lucid_fx._src.core.layout import Layout
from lucid_fx._src.core.placement import put_like, to_host
from lucid_fx._src.stateful.parameter import Parameter

# Parameters up to this many elements share flat buffers; larger ones keep their own
# array, so reading their ``.value`` never copies.
PACK_MAX_ELEMENTS = 1 << 16
# A flat buffer's offsets are int32.
FLAT_MAX_ELEMENTS = 2**31 - 1


@functools.lru_cache(maxsize=64)
def traced_offsets(layout: Layout, device: jax.Device, committed: bool) -> tuple[jax.Array, ...]:
    """``layout``'s offsets as int32 scalars on ``device``, for ``Layout.unpack``'s ``starts``;
    ``committed`` to it as the buffer they cut is (see :func:`lucid_fx._src.core.placement.put_like`).

    Made once per layout and device: each call's cost is then only passing them.
    """
    if not committed:
        return tuple(jnp.asarray(np.int32(o)) for o in layout.offsets)
    return tuple(jax.device_put(np.int32(o), device) for o in layout.offsets)


def check_grad(p: Parameter, g: Any, layout: Layout, slot: int, *, caller: str = "") -> None:
    """Raises unless ``g`` is a jax.Array of slot ``slot``'s shape and dtype in ``layout``.

    ``caller`` prefixes the message (``"clip_grad_norm_: "``).
    """
    shape, dtype = layout.shapes[slot], layout.dtypes[slot]
    if not isinstance(g, jax.Array):
        raise TypeError(f"{caller}{p!r} has a .grad of type {type(g).__name__}; expected a jax.Array")
    if g.shape != shape:
        raise ValueError(f"{caller}{p!r} has a gradient of shape {tuple(g.shape)}; expected {shape}")
    if g.dtype != dtype:
        raise ValueError(
            f"{caller}{p!r} has a gradient of dtype {g.dtype}; expected {dtype} "
            f"(cast the gradient, or the loss inputs, to the parameter's dtype)"
        )


@jax.jit(static_argnums=1)
def _pack(arrays: list[jax.Array], layout: Layout) -> jax.Array:
    return layout.pack(arrays)


@jax.jit(static_argnums=(2, 3))
def _read_slot(buffer: jax.Array, index: jax.Array, shape: tuple[int, ...],
               stacked: bool) -> jax.Array:
    # The offset (or stack index) is data, not a constant: one compilation serves every
    # slot of a shape.
    if stacked:
        return jax.lax.dynamic_index_in_dim(buffer, index, keepdims=False)
    return jax.lax.dynamic_slice(buffer, (index,), (math.prod(shape),)).reshape(shape)


@jax.jit(static_argnums=1, donate_argnums=0)
def _write_slots(buffer: jax.Array, layout: Layout, writes: dict[int, jax.Array]) -> jax.Array:
    for slot, array in writes.items():
        array = jnp.asarray(array).astype(buffer.dtype)
        if layout.kind == "stacked":
            buffer = jax.lax.dynamic_update_index_in_dim(buffer, array, slot, 0)
        else:
            buffer = jax.lax.dynamic_update_slice(
                buffer, jnp.ravel(array), (layout.offsets[slot],))
    return buffer


class ParamPack:
    """Stateful storage for Parameters of one optimizer group: one buffer, its layout.

    Holds the value buffer, an accumulated gradient buffer (or ``None``), which
    slots currently have a gradient, and gradients assigned by hand
    (``p.grad = g``) until they are folded into the buffer. Reads are lazy: a
    slot's view is cut on first read and cached until its buffer changes.
    """

    def __init__(self, params: Sequence[Parameter], layout: Layout) -> None:
        """Takes ``params`` over, laid out by ``layout``: their values (and gradients) move in.

        A Parameter that another pack holds is released from it first, which
        retires that pack (see :meth:`release`).
        """
        for p in params:
            if p.storage is not None:
                p.storage.pack.release(p)
        values = [p.value for p in params]
        if layout.kind == "flat" and layout.total > FLAT_MAX_ELEMENTS:
            raise ValueError(f"a flat buffer holds at most {FLAT_MAX_ELEMENTS} elements")
        self.layout = layout
        self.params = list(params)
        # One compiled pack per layout: packed eagerly, each Parameter's ravel would
        # compile once per shape (9 ms each: 0.9 s for a hundred shapes).
        self.buffer: jax.Array = values[0] if layout.kind == "single" else _pack(values, layout)
        self.grad: jax.Array | None = None
        self.has_grad = np.zeros(len(params), bool)
        self.grad_overrides: dict[int, jax.Array] = {}
        self._views: dict[int, jax.Array] = {}
        self._grad_views: dict[int, jax.Array] = {}
        self.retired = False  # set when a newer optimizer takes one of these Parameters
        for slot, p in enumerate(self.params):
            p.move_into(self, slot)

    def release(self, p: Parameter) -> None:
        """Gives ``p`` its value and gradient back as its own arrays; retires this pack.

        Called when a newer optimizer takes ``p`` over (re-running ``opt =
        RMSprop(...)`` is common): the optimizer that made this pack no longer
        holds all of its Parameters, so it must not step them. The pack's other
        Parameters still read through it.
        """
        self.retired = True
        p.move_out()

    # shapes
    def shape_of(self, slot: int) -> tuple[int, ...]:
        return self.layout.shapes[slot]

    def dtype_of(self, slot: int) -> np.dtype:
        return self.layout.dtypes[slot]

    # values
    def value_of(self, slot: int) -> jax.Array:
        if self.layout.kind == "single":
            return self.buffer
        if slot not in self._views:
            self._views[slot] = self._cut(self.buffer, slot)
        return self._views[slot]

    def host_values(self, slots: Sequence[int]) -> list[np.ndarray]:
        """Slots' values on the host. Two or more cross together: the buffer crosses once
        and is cut on the host, where slot by slot each slot's view is cut on the device
        first (a thousand slots of a flat buffer: 28 ms -> 3 ms)."""
        layout = self.layout
        if len(slots) < 2 or any(layout.dtypes[slot] != layout.dtype for slot in slots):
            return [to_host(self.value_of(slot)) for slot in slots]
        host = to_host(self.buffer)
        return [layout.cut(host, slot) for slot in slots]

    def _cut(self, buffer: jax.Array, slot: int) -> jax.Array:
        stacked = self.layout.kind == "stacked"
        index = slot if stacked else self.layout.offsets[slot]
        return _read_slot(buffer, np.int32(index), self.layout.shapes[slot], stacked)

    def set_buffer(self, buffer: jax.Array) -> None:
        self.buffer = buffer
        self._views = {}

    def set_value(self, slot: int, value: Any) -> None:
        value = jnp.asarray(value)
        shape, dtype = self.layout.shapes[slot], self.layout.dtypes[slot]
        if value.shape != shape or value.dtype != dtype:
            raise ValueError(
                f"a Parameter held by an optimizer keeps its shape and dtype: expected "
                f"{shape} {dtype}, got {value.shape} {value.dtype}"
            )
        if self.layout.kind == "single":
            self.set_buffer(put_like(self.buffer, value))
        else:
            self.set_buffer(_write_slots(self.buffer, self.layout, {slot: value}))

    def set_values(self, values: Mapping[int, Any]) -> None:
        """Writes several slots' values at once: on the host, then one transfer, so a load of
        a hundred Parameters of a hundred shapes compiles nothing (a slot written on the
        device compiles an update per shape). Values are checked by the caller."""
        if len(values) == 1 and self.layout.kind != "single":
            ((slot, value),) = values.items()
            self.set_value(slot, value)  # one update on the device: no download
            return
        whole = len(values) == len(self.layout)
        host = (np.empty(self.layout.buffer_shape, np.dtype(self.buffer.dtype)) if whole
                else to_host(self.buffer))
        for slot, value in values.items():
            self.layout.put(host, slot, to_host(value))
        self.set_buffer(put_like(self.buffer, host))

    # gradients
    def grad_of(self, slot: int) -> jax.Array | None:
        if not self.has_grad[slot]:
            return None
        if slot in self.grad_overrides:
            return self.grad_overrides[slot]
        if self.layout.kind == "single" or self.grad is None:
            return self.grad
        if slot not in self._grad_views:
            self._grad_views[slot] = self._cut(self.grad, slot)
        return self._grad_views[slot]

    def set_grad(self, slot: int, grad: jax.Array | None) -> None:
        if grad is not None:
            self.grad_overrides[slot] = grad
            self.has_grad[slot] = True
            return
        self.has_grad[slot] = False
        if not self.has_grad.any():
            self.clear_grad()
        elif self.grad is not None:
            # The slot's stale entries must read as 0 if backward adds into it later.
            self.grad_overrides[slot] = jnp.zeros(self.layout.shapes[slot], self.layout.dtype)
        else:
            self.grad_overrides.pop(slot, None)

    def set_grad_buffer(self, grad: jax.Array | None, slots: np.ndarray | None = None) -> None:
        """Installs an accumulated gradient buffer; ``slots`` (bools) gain a gradient."""
        self.grad = grad
        self.grad_overrides.clear()
        self._grad_views = {}
        if slots is not None:
            self.has_grad |= slots

    def clear_grad(self) -> None:
        self.grad = None
        self.grad_overrides.clear()
        self.has_grad[:] = False
        self._grad_views = {}

    def zero_grad_in_place(self) -> None:
        """``zero_grad(set_to_none=False)``: gradients that exist become zeros."""
        if self.has_grad.any():
            self.set_grad_buffer(jnp.zeros(self.layout.buffer_shape, self.layout.dtype))

    def starts(self) -> tuple[jax.Array, ...]:
        """A flat buffer's offsets as traced scalars on its device, for ``Layout.unpack``.

        Empty for other layouts, which are cut by index or not at all (a single
        array may span devices); a flat pack lives on one device (:func:`make_packs`).
        """
        if self.layout.kind != "flat":
            return ()
        return traced_offsets(self.layout, next(iter(self.buffer.sharding.device_set)),
                              self.buffer.committed)

    def check_grads(self, caller: str = "") -> None:
        """Raises unless every gradient assigned by hand fits its slot (:func:`check_grad`).

        Runs before a step and before clipping, over every hand-assigned gradient:
        the common case costs one type and one aval check each.
        """
        shapes, dtypes = self.layout.shapes, self.layout.dtypes
        for slot, g in self.grad_overrides.items():
            aval = g.aval if isinstance(g, jax.Array) else None
            if aval is None or aval.shape != shapes[slot] or aval.dtype != dtypes[slot]:
                check_grad(self.params[slot], g, self.layout, slot, caller=caller)

    def folded_grad(self) -> jax.Array | None:
        """The gradient buffer with hand-assigned gradients written in (cached)."""
        if self.grad_overrides:
            if self.layout.kind == "single":
                self.grad = self.grad_overrides[0]
            elif len(self.grad_overrides) == len(self.layout):
                # Every slot assigned by hand: one concatenation, which compiles fast.
                overrides = self.grad_overrides
                self.grad = _pack([overrides[i] for i in range(len(self.layout))], self.layout)
            else:
                base = self.grad if self.grad is not None else jnp.zeros(
                    self.layout.buffer_shape, self.layout.dtype)
                self.grad = _write_slots(base, self.layout, dict(self.grad_overrides))
            self.grad_overrides.clear()
            self._grad_views = {}
        return self.grad


def read_host_values(params: Sequence[Parameter]) -> list[np.ndarray]:
    """The values of ``params`` on the host, each pack's buffer crossing once
    (:meth:`ParamPack.host_values`)."""
    out: list[Any] = [None] * len(params)
    packs: dict[int, tuple[ParamPack, list[tuple[int, int]]]] = {}  # (index, slot) per pack
    for i, p in enumerate(params):
        held = held_by(p)
        if held is None:
            out[i] = to_host(p.value)
        else:
            packs.setdefault(id(held[0]), (held[0], []))[1].append((i, held[1]))
    for pack, entries in packs.values():
        for (i, _), value in zip(entries, pack.host_values([slot for _, slot in entries])):
            out[i] = value
    return out


def held_by(p: Parameter) -> tuple[ParamPack, int] | None:
    """The pack and slot that hold ``p``, or ``None`` while it holds its own arrays."""
    storage = p.storage
    if storage is None:
        return None
    if not isinstance(storage.pack, ParamPack):
        raise TypeError(f"{p!r} is held by a {type(storage.pack).__name__}, not an optimizer's "
                        f"packed storage")
    return storage.pack, storage.slot


# ----------------------------------------------------------------- the policy


def _one_device(p: Parameter) -> bool:
    return len(p.value.sharding.device_set) == 1


def make_packs(params: Sequence[Parameter], *, elementwise: bool) -> list[ParamPack]:
    """Moves ``params`` into packed storage, as the module's policy says.

    ``elementwise``: the math is element by element, so small Parameters of one
    dtype may share a flat buffer; otherwise Parameters of one shape and dtype
    share a stack. A flat buffer is started anew when one would pass
    :data:`FLAT_MAX_ELEMENTS`. Empty Parameters and those on several devices keep
    their own array.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> from lucid_fx._src.stateful.storage import make_packs
      >>> params = [fx.Parameter(jnp.ones(3)), fx.Parameter(jnp.ones(2, jnp.bfloat16)),
      ...           fx.Parameter(jnp.ones((2, 2)))]
      >>> [(p.layout.kind, len(p.params)) for p in make_packs(params, elementwise=True)]
      [('flat', 2), ('flat', 1)]
      >>> [(p.layout.kind, len(p.params)) for p in make_packs(
      ...     [fx.Parameter(jnp.ones((2, 2))) for _ in range(3)], elementwise=False)]
      [('stacked', 3)]
    """
    singles: list[Parameter] = []
    groups: dict[Any, list[Parameter]] = {}
    for p in params:
        value = p.value
        shareable = value.size > 0 and _one_device(p)
        if elementwise and shareable and value.size <= PACK_MAX_ELEMENTS:
            groups.setdefault(("flat", p.dtype), []).append(p)
        elif not elementwise and shareable:
            groups.setdefault(("stacked", tuple(value.shape), p.dtype), []).append(p)
        else:
            singles.append(p)
    packs = [ParamPack([p], Layout.single(p.shape, p.dtype)) for p in singles]
    for (kind, *_), members in groups.items():
        if kind == "stacked":
            if len(members) == 1:
                packs.append(ParamPack(members, Layout.single(members[0].shape, members[0].dtype)))
            else:
                packs.append(ParamPack(members, Layout.of([m.value for m in members], "stacked")))
            continue
        start, total = 0, 0
        for end, member in enumerate([*members, None]):
            if member is None or total + member.value.size > FLAT_MAX_ELEMENTS:
                chunk = members[start:end]
                packs.append(ParamPack(chunk, Layout.of([m.value for m in chunk])))
                start, total = end, 0
            if member is not None:
                total += member.value.size
    return packs
