"""Where each of several arrays lives in one buffer: the one layout packing, flat trees and
LBFGS share.

On a model of many small arrays a step is bound by per-array dispatch at the jit
boundary (about 2 µs per array in or out), not by math: keeping them in one
buffer makes a step a handful of arrays, and cutting the buffer happens inside
compiled code, where it is free. A :class:`Layout` is the static description of
such a buffer, in one of three forms:

- ``flat``: every array raveled into one 1-D buffer, one after the other. For
  element-wise math (the math of one element does not depend on its neighbours),
  and for LBFGS's flat vector: the buffer may be of a wider dtype than its arrays,
  and a complex array enters a real buffer as (real, imaginary) pairs, as
  ``torch.view_as_real`` lays it out.
- ``stacked``: arrays of one shape stacked along a new first axis, each in its own
  shape, for math that needs the shape (a matrix's Newton–Schulz iteration).
- ``single``: one array kept as it is (no copy, its sharding preserved).

Layouts are hashable and compared by value, so they can be static arguments of
``jax.jit``.

Example:
  >>> import jax.numpy as jnp
  >>> from lucid_fx._src.core.layout import Layout
  >>> arrays = [jnp.ones((2, 2)), jnp.zeros(3)]
  >>> layout = Layout.of(arrays)
  >>> buffer = layout.pack(arrays)
  >>> buffer.shape, [a.shape for a in layout.unpack(buffer)]
  ((7,), [(2, 2), (3,)])
  >>> Layout.stacked((2, 2), jnp.float32, 3).buffer_shape
  (3, 2, 2)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

Kind = Literal["flat", "stacked", "single"]


def _is_complex(dtype: np.dtype) -> bool:
    return bool(jnp.issubdtype(dtype, jnp.complexfloating))


class Layout:
    """Where each array lives in one buffer (see the module): its kind, the arrays'
    shapes and dtypes, the buffer's dtype, and each array's offset and size in a flat
    buffer (elements of the buffer: a complex array in a real buffer takes two per
    element)."""

    __slots__ = ("_hash", "dtype", "dtypes", "kind", "offsets", "shapes", "sizes", "total")

    def __init__(self, kind: Kind, shapes: Sequence[tuple[int, ...]],
                 dtypes: Sequence[Any], dtype: Any) -> None:
        self.kind: Kind = kind
        self.shapes = tuple(tuple(int(n) for n in s) for s in shapes)
        self.dtypes = tuple(np.dtype(d) for d in dtypes)
        self.dtype = np.dtype(dtype)
        if len(self.dtypes) != len(self.shapes):
            raise ValueError("a layout needs one dtype per shape")
        if kind == "single" and len(self.shapes) != 1:
            raise ValueError("a single layout holds exactly one array")
        if kind == "stacked" and len(set(self.shapes)) > 1:
            raise ValueError(f"a stacked layout holds arrays of one shape, got {set(self.shapes)}")
        pairs = [2 if _is_complex(d) and not _is_complex(self.dtype) else 1 for d in self.dtypes]
        self.sizes = tuple(math.prod(s) * k for s, k in zip(self.shapes, pairs))
        self.offsets = tuple(int(o) for o in np.cumsum((0,) + self.sizes)[:-1])
        self.total = sum(self.sizes)
        self._hash = hash((kind, self.shapes, self.dtypes, self.dtype))

    # ----- construction

    @classmethod
    def flat(cls, shapes: Sequence[tuple[int, ...]], dtypes: Sequence[Any],
             dtype: Any | None = None) -> Layout:
        """A 1-D buffer of ``dtype`` (default: the arrays' one dtype) holding the arrays."""
        if dtype is None:
            if len(set(map(np.dtype, dtypes))) > 1:
                raise ValueError(f"a flat buffer of one dtype holds one dtype, got "
                                 f"{sorted(map(str, set(map(np.dtype, dtypes))))}")
            dtype = dtypes[0] if dtypes else np.float32
        return cls("flat", shapes, dtypes, dtype)

    @classmethod
    def stacked(cls, shape: tuple[int, ...], dtype: Any, count: int) -> Layout:
        """``count`` arrays of ``shape`` and ``dtype`` stacked along a new first axis."""
        return cls("stacked", [shape] * count, [dtype] * count, dtype)

    @classmethod
    def single(cls, shape: tuple[int, ...], dtype: Any) -> Layout:
        """One array, kept as it is."""
        return cls("single", [shape], [dtype], dtype)

    @classmethod
    def of(cls, arrays: Sequence[Any], kind: Kind = "flat") -> Layout:
        """The layout of ``kind`` for ``arrays`` (anything with a shape and dtype), in order."""
        shapes = [np.shape(a) for a in arrays]
        dtypes = [jnp.result_type(a) for a in arrays]
        if kind == "flat":
            return cls.flat(shapes, dtypes)
        if kind == "stacked":
            if len(set(map(np.dtype, dtypes))) > 1:
                raise ValueError("a stacked buffer holds one dtype")
            return cls.stacked(shapes[0], dtypes[0], len(arrays))
        return cls.single(shapes[0], dtypes[0])

    # ----- shape of the buffer

    @property
    def buffer_shape(self) -> tuple[int, ...]:
        if self.kind == "flat":
            return (self.total,)
        if self.kind == "stacked":
            return (len(self.shapes), *self.shapes[0])
        return self.shapes[0]

    def __len__(self) -> int:
        return len(self.shapes)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (
            isinstance(other, Layout) and self._hash == other._hash
            and (self.kind, self.shapes, self.dtypes, self.dtype)
            == (other.kind, other.shapes, other.dtypes, other.dtype))

    def __repr__(self) -> str:
        return f"Layout({self.kind}: {len(self)} arrays, {self.buffer_shape} x {self.dtype})"

    # ----- arrays in, arrays out (traceable)

    def pack(self, arrays: Sequence[Any]) -> jax.Array:
        """The arrays as one buffer of :attr:`buffer_shape`."""
        if self.kind == "single":
            return jnp.asarray(arrays[0])
        if self.kind == "stacked":
            return jnp.stack([jnp.asarray(a) for a in arrays]).astype(self.dtype)
        if not arrays:
            return jnp.zeros((0,), self.dtype)
        parts = []
        for a, dtype in zip(arrays, self.dtypes):
            a = jnp.asarray(a)
            if _is_complex(dtype) and not _is_complex(self.dtype):
                a = jnp.stack([a.real, a.imag], axis=-1)
            parts.append(jnp.ravel(a).astype(self.dtype))
        return jnp.concatenate(parts)

    def unpack(self, buffer: jax.Array, starts: Sequence[jax.Array] | None = None
               ) -> list[jax.Array]:
        """The arrays of a buffer, in order, each in its own shape (free inside compiled
        code), in the buffer's dtype: a state buffer unpacks as its parameters do, in its
        own dtype. A complex array that a real buffer holds as pairs comes back complex.

        For a flat buffer, ``starts`` (the offsets as traced int32 scalars) make
        the slices of one shape a single computation up to their operands. XLA:CPU
        compiles each distinct fused loop on its own, and a slice fuses into the
        code that reads it, offset included: with constant offsets, a loss over
        1000 slots compiles 1000 kernels (23 s for ``fx.backward``'s first call),
        with traced ones one kernel per shape (8.9 s; ``jax.jit`` over a list: 7.9 s).
        """
        if self.kind == "single":
            return [buffer]
        if self.kind == "stacked":
            return [buffer[i] for i in range(len(self))]
        pieces = []
        for i, (size, shape, dtype) in enumerate(zip(self.sizes, self.shapes, self.dtypes)):
            if starts is None:
                part = jax.lax.slice(buffer, (self.offsets[i],), (self.offsets[i] + size,))
            else:
                part = jax.lax.dynamic_slice(buffer, (starts[i],), (size,))
            if _is_complex(dtype) and not _is_complex(self.dtype):
                pairs = part.reshape(*shape, 2)
                pieces.append(jax.lax.complex(pairs[..., 0], pairs[..., 1]))
            else:
                pieces.append(part.reshape(shape))
        return pieces

    # ----- one value per array, spread over the buffer (traceable)

    def per_element(self, values: jax.Array) -> jax.Array:
        """One value per array (a vector) -> a value the buffer's math broadcasts against:
        at every element of its array (flat), along the stack (stacked), or the scalar
        itself (one array)."""
        if len(self) == 1:
            return values.reshape(())
        if self.kind == "stacked":
            return values.reshape((len(self),) + (1,) * len(self.shapes[0]))
        # A gather by each element's array index, made here with NumPy: jnp.repeat would
        # build the same index with a cumulative sum that XLA then folds at compile time,
        # element by element (10 s for a ResNet-50's small parameters).
        return values[np.repeat(np.arange(len(self), dtype=np.int32), self.sizes)]

    def per_array(self, values: jax.Array) -> jax.Array:
        """The inverse of :meth:`per_element`: each array's value, read at its first element."""
        if len(self) == 1:
            return jnp.reshape(values, (1,))
        if self.kind == "stacked":
            return jnp.broadcast_to(values, self.buffer_shape).reshape(len(self), -1)[:, 0]
        return jnp.broadcast_to(values, self.buffer_shape)[np.asarray(self.offsets)]

    def slot_mask(self, mask: jax.Array) -> jax.Array:
        """Per-element booleans of the buffer from per-array booleans ``mask``."""
        return jnp.broadcast_to(self.per_element(mask), self.buffer_shape)

    # ----- one array of a host buffer (NumPy; state dicts)

    def cut(self, buffer: np.ndarray, slot: int) -> np.ndarray:
        """Array ``slot`` of a host buffer of this layout, as a copy in its shape."""
        if self.kind == "single":
            return np.array(buffer)
        if self.kind == "stacked":
            return np.array(buffer[slot])
        start, size = self.offsets[slot], self.sizes[slot]
        return buffer.reshape(-1)[start:start + size].reshape(self.shapes[slot]).copy()

    def put(self, buffer: np.ndarray, slot: int, value: Any) -> None:
        """Writes ``value`` as array ``slot`` of a host buffer of this layout, in place."""
        if self.kind == "single":
            buffer[...] = value
        elif self.kind == "stacked":
            buffer[slot] = value
        else:
            value = np.asarray(value)
            if _is_complex(value.dtype) and not _is_complex(self.dtype):  # as (re, im) pairs
                value = np.stack([value.real, value.imag], axis=-1)
            start = self.offsets[slot]
            buffer.reshape(-1)[start:start + self.sizes[slot]] = np.reshape(value, -1)

    def gather_index(self, order: Sequence[int]) -> np.ndarray:
        """Indices that lay a flat buffer out with its arrays in ``order`` (indices of this
        layout's arrays): ``buffer[gather_index(order)]`` is the buffer in that order."""
        if not order:
            return np.zeros(0, np.int64)
        return np.concatenate([np.arange(self.offsets[i], self.offsets[i] + self.sizes[i])
                               for i in order])
