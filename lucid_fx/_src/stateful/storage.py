"""Packed storage: many parameters in one contiguous buffer.

On a model with many small tensors, an optimizer step is bound by per-array
dispatch at the jit boundary (about 2 µs per array in or out), not by math.
Keeping same-dtype parameters of a group in one flat buffer makes a step a
handful of arrays, whatever the number of parameters; slicing happens inside
compiled code, where it is free.

:class:`PackLayout` is the static description (shapes, offsets) and
:func:`pack` / :func:`unpack` convert between a list of arrays and the buffer.
:class:`ParamPack` is the stateful storage that ``fx.Optimizer`` gives its
Parameters: ``Parameter.value`` and ``.grad`` read through it lazily. A pack
adopts its Parameters when it is made and gives one back with
:meth:`ParamPack.release` (the protocol of :mod:`lucid_fx._src.stateful.parameter`).
:func:`make_packs` is the policy: which Parameters share a buffer.

Example:
  >>> import jax.numpy as jnp
  >>> from lucid_fx._src.stateful.storage import PackLayout, pack, unpack
  >>> arrays = [jnp.ones((2, 2)), jnp.zeros(3)]
  >>> layout = PackLayout.of(arrays)
  >>> buffer = pack(arrays, layout)
  >>> buffer.shape, [a.shape for a in unpack(buffer, layout)]
  ((7,), [(2, 2), (3,)])
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
    from lucid_fx._src.stateful.parameter import Parameter

# Parameters up to this many elements share packed buffers; larger ones keep
# their own array, so reading their ``.value`` never copies.
PACK_MAX_ELEMENTS = 1 << 16


class PackLayout:
    """Where each array lives in a packed buffer: shapes, offsets, one dtype.

    Hashable and compared by value (with an identity fast path), so it can be a
    static argument of ``jax.jit`` without re-hashing a long tuple every call.
    ``flat`` is False for a single array kept in its own shape (no copy, its
    sharding preserved); then the "buffer" is the array itself.
    """

    __slots__ = ("_hash", "dtype", "flat", "offsets", "shapes", "sizes", "total")

    def __init__(self, shapes: Sequence[tuple[int, ...]], dtype: Any, *, flat: bool = True):
        if not flat and len(shapes) != 1:
            raise ValueError("an unflattened layout holds exactly one array")
        self.shapes = tuple(tuple(s) for s in shapes)
        self.dtype = np.dtype(dtype)
        self.sizes = tuple(math.prod(s) for s in self.shapes)
        self.offsets = tuple(int(o) for o in np.cumsum((0,) + self.sizes)[:-1])
        self.total = sum(self.sizes)
        self.flat = flat
        self._hash = hash((self.shapes, self.dtype, self.flat))

    @classmethod
    def of(cls, arrays: Sequence[Any], *, flat: bool = True) -> PackLayout:
        """The layout of ``arrays`` (all of one dtype), in order."""
        dtypes = {jnp.result_type(a) for a in arrays}
        if len(dtypes) != 1:
            raise ValueError(f"a pack holds one dtype, got {sorted(map(str, dtypes))}")
        return cls([np.shape(a) for a in arrays], dtypes.pop(), flat=flat)

    @property
    def buffer_shape(self) -> tuple[int, ...]:
        return (self.total,) if self.flat else self.shapes[0]

    def __len__(self) -> int:
        return len(self.shapes)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (
            isinstance(other, PackLayout)
            and self._hash == other._hash
            and (self.shapes, self.dtype, self.flat) == (other.shapes, other.dtype, other.flat)
        )

    def __repr__(self) -> str:
        return f"PackLayout({len(self)} arrays, {self.total} x {self.dtype}, flat={self.flat})"


def pack(arrays: Sequence[jax.Array], layout: PackLayout) -> jax.Array:
    """The arrays as one buffer of ``layout.buffer_shape`` (traceable)."""
    if not layout.flat:
        return jnp.asarray(arrays[0])
    if not arrays:
        return jnp.zeros((0,), layout.dtype)
    return jnp.concatenate([jnp.ravel(a).astype(layout.dtype) for a in arrays])


def unpack(
    buffer: jax.Array, layout: PackLayout, starts: Sequence[jax.Array] | None = None
) -> list[jax.Array]:
    """The arrays of a buffer, in order (traceable; free inside compiled code).

    ``starts``, the offsets as traced int32 scalars (:func:`traced_offsets`), make
    the slices of one shape a single computation up to their operands. XLA:CPU
    compiles each distinct fused loop on its own, and a slice fuses into the
    code that reads it, offset included: with constant offsets, a loss over 1000
    slots compiles 1000 kernels (23 s for ``fx.backward``'s first call), with
    traced ones one kernel per shape (8.9 s; ``jax.jit`` over a list: 7.9 s).
    """
    if not layout.flat:
        return [buffer]
    if starts is None:
        return [
            jax.lax.slice(buffer, (o,), (o + n,)).reshape(s)
            for o, n, s in zip(layout.offsets, layout.sizes, layout.shapes)
        ]
    return [
        jax.lax.dynamic_slice(buffer, (start,), (n,)).reshape(s)
        for start, n, s in zip(starts, layout.sizes, layout.shapes)
    ]


@functools.lru_cache(maxsize=64)
def traced_offsets(
    layout: PackLayout, device: jax.Device, committed: bool
) -> tuple[jax.Array, ...]:
    """``layout``'s offsets as int32 scalars on ``device``, for :func:`unpack`'s ``starts``;
    ``committed`` to it as the buffer they cut is (see :func:`lucid_fx._src.core.placement.put_like`).

    Made once per layout and device: each call's cost is then only passing them.
    """
    if not committed:
        return tuple(jnp.asarray(np.int32(o)) for o in layout.offsets)
    return tuple(jax.device_put(np.int32(o), device) for o in layout.offsets)


def per_element(values: jax.Array, layout: PackLayout) -> jax.Array:
    """One value per array (a vector) -> that value at every element of its array.

    The per-parameter scalars of a packed buffer (a step count, a mask) become
    an array the buffer's element-wise math broadcasts against; for a buffer of
    one array, the scalar itself.
    """
    if len(layout) == 1:
        return values.reshape(())
    # A gather by each element's array index, made here with NumPy: jnp.repeat would
    # build the same index with a cumulative sum that XLA then folds at compile time,
    # element by element (10 s for a ResNet-50's small parameters).
    # Not cached: as large as the buffer, and needed only to trace a step or start new slots.
    return values[np.repeat(np.arange(len(layout), dtype=np.int32), layout.sizes)]


def per_array(values: jax.Array, layout: PackLayout) -> jax.Array:
    """The inverse of :func:`per_element`: each array's value, read at its first element."""
    if len(layout) == 1:
        return jnp.reshape(values, (1,))
    return jnp.broadcast_to(values, layout.buffer_shape)[np.asarray(layout.offsets)]


def slot_mask(mask: jax.Array, layout: PackLayout) -> jax.Array:
    """Per-element booleans of ``layout``'s buffer from per-array booleans ``mask``."""
    return jnp.broadcast_to(per_element(mask, layout), layout.buffer_shape)


def check_grad(p: Parameter, g: Any, layout: PackLayout, slot: int, *, caller: str = "") -> None:
    """Raises unless ``g`` is a jax.Array of slot ``slot``'s shape and dtype in ``layout``.

    ``caller`` prefixes the message (``"clip_grad_norm_: "``).
    """
    shape, dtype = layout.shapes[slot], layout.dtype
    if not isinstance(g, jax.Array):
        raise TypeError(f"{caller}{p!r} has a .grad of type {type(g).__name__}; expected a jax.Array")
    if g.shape != shape:
        raise ValueError(f"{caller}{p!r} has a gradient of shape {tuple(g.shape)}; expected {shape}")
    if g.dtype != dtype:
        raise ValueError(
            f"{caller}{p!r} has a gradient of dtype {g.dtype}; expected {dtype} "
            f"(cast the gradient, or the loss inputs, to the parameter's dtype)"
        )


_pack_jit = jax.jit(pack, static_argnums=1)


@jax.jit(static_argnums=(2,))
def _read_slot(buffer: jax.Array, start: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    # The offset is data, not a constant: one compilation serves every slot of a shape.
    return jax.lax.dynamic_slice(buffer, (start,), (math.prod(shape),)).reshape(shape)


@jax.jit(static_argnums=1, donate_argnums=0)
def _write_slots(buffer: jax.Array, layout: PackLayout, writes: dict[int, jax.Array]) -> jax.Array:
    for slot, array in writes.items():
        start = layout.offsets[slot]
        buffer = jax.lax.dynamic_update_slice(
            buffer, jnp.ravel(array).astype(buffer.dtype), (start,)
        )
    return buffer


class ParamPack:
    """Stateful packed storage for the Parameters of one optimizer group and dtype.

    Holds the value buffer, an accumulated gradient buffer (or ``None``), which
    slots currently have a gradient, and gradients assigned by hand
    (``p.grad = g``) until they are folded into the buffer. Reads are lazy: all
    view is cut on first read and cached until its buffer changes.
    """

    MAX_ELEMENTS = 2**31 - 1  # offsets are int32

    def __init__(self, params: Sequence[Parameter], *, flat: bool = True) -> None:
        """Takes ``params`` over: their values (and gradients) move into this pack.

        A Parameter that another pack holds is released from it first, which
        retires that pack (see :meth:`release`).
        """
        for p in params:
            if p.storage is not None:
                p.storage.pack.release(p)
        values = [p.value for p in params]
        if flat and sum(v.size for v in values) > self.MAX_ELEMENTS:
            raise ValueError(f"a flat pack holds at most {self.MAX_ELEMENTS} elements")
        self.layout = PackLayout.of(values, flat=flat)
        self.params = list(params)
        self.buffer: jax.Array = pack(values, self.layout) if flat else values[0]
        self.grad: jax.Array | None = None
        self.has_grad = np.zeros(len(params), bool)
        self.grad_overrides: dict[int, jax.Array] = {}
        self._views: dict[int, jax.Array] = {}
        self._grad_views: dict[int, jax.Array] = {}
        self.retired = False  # set when a newer optimizer takes one of these Parameters
        for slot, p in enumerate(self.params):
            p._move_into(self, slot)

    def release(self, p: Parameter) -> None:
        """Gives ``p`` its value and gradient back as its own arrays; retires this pack.

        Called when a newer optimizer takes ``p`` over (re-running ``opt =
        RMSprop(...)`` is common): the optimizer that made this pack no longer
        holds all of its Parameters, so it must not step them. The pack's other
        Parameters still read through it.
        """
        self.retired = True
        p._move_out()

    # values
    def value_of(self, slot: int) -> jax.Array:
        if not self.layout.flat:
            return self.buffer
        if slot not in self._views:
            self._views[slot] = self._cut(self.buffer, slot)
        return self._views[slot]

    def _cut(self, buffer: jax.Array, slot: int) -> jax.Array:
        return _read_slot(buffer, np.int32(self.layout.offsets[slot]), self.layout.shapes[slot])

    def set_buffer(self, buffer: jax.Array) -> None:
        self.buffer = buffer
        self._views = {}

    def set_value(self, slot: int, value: Any) -> None:
        value = jnp.asarray(value)
        shape, dtype = self.layout.shapes[slot], self.layout.dtype
        if value.shape != shape or value.dtype != dtype:
            raise ValueError(
                f"a Parameter held by an optimizer keeps its shape and dtype: expected "
                f"{shape} {dtype}, got {value.shape} {value.dtype}"
            )
        if self.layout.flat:
            self.set_buffer(_write_slots(self.buffer, self.layout, {slot: value}))
        else:
            self.set_buffer(jnp.array(value, copy=True))

    # gradients
    def grad_of(self, slot: int) -> jax.Array | None:
        if not self.has_grad[slot]:
            return None
        if slot in self.grad_overrides:
            return self.grad_overrides[slot]
        if not self.layout.flat or self.grad is None:
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
        """The slots' offsets as traced scalars on the buffer's device, for :func:`unpack`.

        Empty for an unflattened pack, whose one array needs no cutting (and may span
        devices); a flat pack lives on one device (:func:`packable`).
        """
        if not self.layout.flat:
            return ()
        return traced_offsets(self.layout, next(iter(self.buffer.sharding.device_set)),
                              self.buffer.committed)

    def check_grads(self, caller: str = "") -> None:
        """Raises unless every gradient assigned by hand fits its slot (:func:`check_grad`).

        Runs before a step and before clipping, over every hand-assigned gradient:
        the common case costs one type and one aval check each.
        """
        shapes, dtype = self.layout.shapes, self.layout.dtype
        for slot, g in self.grad_overrides.items():
            aval = g.aval if isinstance(g, jax.Array) else None
            if aval is None or aval.shape != shapes[slot] or aval.dtype != dtype:
                check_grad(self.params[slot], g, self.layout, slot, caller=caller)

    def folded_grad(self) -> jax.Array | None:
        """The gradient buffer with hand-assigned gradients written in (cached)."""
        if self.grad_overrides:
            if not self.layout.flat:
                self.grad = self.grad_overrides[0]
            elif len(self.grad_overrides) == len(self.layout):
                # Every slot assigned by hand: one concatenation, which compiles fast.
                overrides = self.grad_overrides
                self.grad = _pack_jit([overrides[i] for i in range(len(self.layout))], self.layout)
            else:
                base = self.grad if self.grad is not None else jnp.zeros(
                    self.layout.buffer_shape, self.layout.dtype)
                self.grad = _write_slots(base, self.layout, dict(self.grad_overrides))
            self.grad_overrides.clear()
            self._grad_views = {}
        return self.grad


# ----------------------------------------------------------------- the packing policy


def packable(p: Parameter) -> bool:
    """Whether ``p`` may share a flat buffer: small, non-empty, on one device."""
    value = p.value
    # An empty array has no element to carry its per-parameter counts in a buffer.
    return 0 < value.size <= PACK_MAX_ELEMENTS and len(value.sharding.device_set) == 1


def make_packs(params: Sequence[Parameter]) -> list[ParamPack]:
    """Moves ``params`` into packed storage: small ones share a buffer per dtype.

    Parameters that are not :func:`packable` get a pack of their own, in their
    own shape (no copy, their sharding kept). The small ones are packed in
    order, a new buffer being started when one would pass ``ParamPack.MAX_ELEMENTS``.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> from lucid_fx._src.stateful.storage import make_packs
      >>> params = [fx.Parameter(jnp.ones(3)), fx.Parameter(jnp.ones(2, jnp.bfloat16)),
      ...           fx.Parameter(jnp.ones((2, 2)))]
      >>> [(len(pack.params), pack.layout.total, str(pack.layout.dtype)) for pack in make_packs(params)]
      [(2, 7, 'float32'), (1, 2, 'bfloat16')]
      >>> params[2].storage.slot
      1
    """
    by_dtype: dict[np.dtype, list[Parameter]] = {}
    packs = []
    for p in params:
        if packable(p):
            by_dtype.setdefault(p.dtype, []).append(p)
        else:
            packs.append(ParamPack([p], flat=False))
    for members in by_dtype.values():
        start, total = 0, 0
        for end, member in enumerate([*members, None]):
            if member is None or total + member.value.size > ParamPack.MAX_ELEMENTS:
                packs.append(ParamPack(members[start:end]))
                start, total = end, 0
            if member is not None:
                total += member.value.size
    return packs
