"""lucid_fx._src.stateful.storage: the per-parameter scalars of a packed buffer, and its slots.

The expansions are checked against NumPy's own ``np.repeat`` over random layouts, and
the compiled expansion against what made a ResNet-50's first step take 10 s to compile:
an index built by a cumulative sum, which XLA folded element by element.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import lucid_fx as fx
from lucid_fx._src.stateful.storage import (
    PackLayout,
    ParamPack,
    per_array,
    per_element,
    slot_mask,
    traced_offsets,
    unpack,
)

shapes = st.lists(st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple),
                  min_size=1, max_size=12)


@settings(max_examples=10)  # each layout compiles a program
@given(shapes)
def test_per_element_per_array_and_unpack_agree_with_numpy(
    layout_shapes: list[tuple[int, ...]],
) -> None:
    layout = PackLayout(layout_shapes, np.float32)
    sizes = [int(np.prod(s)) for s in layout_shapes]
    values = np.arange(1, len(layout) + 1, dtype=np.int32) * 10
    mask = values % 20 == 0
    buffer = np.arange(layout.total, dtype=np.float32)

    @jax.jit
    def expand(values: jax.Array, mask: jax.Array, buffer: jax.Array, starts: Any) -> Any:
        spread = per_element(values, layout)
        return (spread, per_array(spread, layout), slot_mask(mask, layout),
                unpack(buffer, layout), unpack(buffer, layout, starts))

    spread, back, spread_mask, cut, cut_at = expand(
        values, mask, buffer, traced_offsets(layout, jax.devices()[0], True))
    if len(layout) == 1:
        assert spread.shape == () and int(spread) == values[0]
    else:
        np.testing.assert_array_equal(spread, np.repeat(values, sizes))
    np.testing.assert_array_equal(back, values)
    np.testing.assert_array_equal(spread_mask, np.repeat(mask, sizes))
    pieces = np.split(buffer, np.cumsum(sizes)[:-1])
    for piece, a, b, shape in zip(pieces, cut, cut_at, layout_shapes):
        np.testing.assert_array_equal(a, piece.reshape(shape))
        np.testing.assert_array_equal(b, piece.reshape(shape))


def test_the_expansion_compiles_to_a_gather_without_a_cumulative_sum() -> None:
    layout = PackLayout([(64, 64)] * 100 + [(64,)] * 100, np.float32)
    # Before XLA's passes: after them, the folded index is a constant like any other.
    program = jax.jit(lambda v: per_element(v, layout)).lower(
        jnp.zeros(len(layout), jnp.int32)).as_text()
    assert "gather" in program
    assert "reduce_window" not in program and "cumsum" not in program


def test_traced_offsets_are_made_once_per_layout_and_device() -> None:
    layout = PackLayout([(2, 3), (4,), ()], np.float32)
    device = jax.devices()[0]
    offsets = traced_offsets(layout, device, True)
    assert [int(o) for o in offsets] == [0, 6, 10]
    assert all(o.dtype == np.int32 and o.devices() == {device} and o.committed for o in offsets)
    assert traced_offsets(PackLayout([(2, 3), (4,), ()], np.float32), device, True) is offsets
    # For an uncommitted buffer, uncommitted: a committed offset would commit every result
    # it meets, and the next call, given those, would compile again.
    assert not any(o.committed for o in traced_offsets(layout, device, False))


def test_a_pack_gives_its_offsets_on_its_own_device_and_none_unflattened() -> None:
    device = jax.devices()[-1]
    params = [fx.Parameter(jax.device_put(jnp.zeros(s), device)) for s in [(2, 3), (4,)]]
    starts = ParamPack(params).starts()
    assert [int(o) for o in starts] == [0, 6]
    assert all(o.devices() == {device} for o in starts)
    assert ParamPack([fx.Parameter(jnp.zeros(5))], flat=False).starts() == ()
