"""The one layout (lucid_fx._src.core.layout) and the storage built on it.

A flat buffer's expansions and cuts are checked against NumPy's own ``np.repeat`` and
``np.split`` over random layouts, a stack's against indexing, a buffer of mixed dtypes
with complex pairs (LBFGS's vector) against ``view_as_real``'s layout, and the compiled
expansion against what made a ResNet-50's first step take 10 s to compile: an index
built by a cumulative sum, which XLA folded element by element.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import lucid_fx as fx
from lucid_fx._src.core.layout import Layout
from lucid_fx._src.stateful.storage import ParamPack, make_packs, traced_offsets

shapes = st.lists(st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple),
                  min_size=1, max_size=12)


@settings(max_examples=10)  # each layout compiles a program
@given(shapes)
def test_flat_expansions_and_cuts_agree_with_numpy(layout_shapes: list[tuple[int, ...]]) -> None:
    layout = Layout.flat(layout_shapes, [np.float32] * len(layout_shapes))
    sizes = [int(np.prod(s)) for s in layout_shapes]
    values = np.arange(1, len(layout) + 1, dtype=np.int32) * 10
    mask = values % 20 == 0
    buffer = np.arange(layout.total, dtype=np.float32)

    @jax.jit
    def expand(values: jax.Array, mask: jax.Array, buffer: jax.Array, starts: Any) -> Any:
        spread = layout.per_element(values)
        return (spread, layout.per_array(spread), layout.slot_mask(mask),
                layout.unpack(buffer), layout.unpack(buffer, starts))

    spread, back, spread_mask, cut, cut_at = expand(
        values, mask, buffer, traced_offsets(layout, jax.devices()[0], True))
    if len(layout) == 1:
        assert spread.shape == () and int(spread) == values[0]
    else:
        np.testing.assert_array_equal(spread, np.repeat(values, sizes))
    np.testing.assert_array_equal(back, values)
    np.testing.assert_array_equal(spread_mask, np.repeat(mask, sizes))
    pieces = np.split(buffer, np.cumsum(sizes)[:-1])
    for slot, (piece, a, b, shape) in enumerate(zip(pieces, cut, cut_at, layout_shapes)):
        np.testing.assert_array_equal(a, piece.reshape(shape))
        np.testing.assert_array_equal(b, piece.reshape(shape))
        np.testing.assert_array_equal(layout.cut(buffer, slot), piece.reshape(shape))
    rebuilt = np.zeros_like(buffer)
    for slot, piece in enumerate(pieces):
        layout.put(rebuilt, slot, piece)
    np.testing.assert_array_equal(rebuilt, buffer)
    np.testing.assert_array_equal(layout.pack([p.reshape(s) for p, s in zip(pieces, layout_shapes)]),
                                  buffer)


def test_a_stack_keeps_each_array_in_its_shape() -> None:
    arrays = [np.full((2, 3), i, np.float32) for i in range(4)]
    layout = Layout.of(arrays, "stacked")
    buffer = layout.pack(arrays)
    assert buffer.shape == layout.buffer_shape == (4, 2, 3)
    assert [a.tolist() for a in layout.unpack(buffer)] == [a.tolist() for a in arrays]
    values = jnp.array([1, 2, 3, 4])
    assert layout.per_element(values).shape == (4, 1, 1)
    assert layout.per_array(layout.per_element(values)).tolist() == [1, 2, 3, 4]
    assert layout.slot_mask(jnp.array([True, False, True, False])).shape == (4, 2, 3)
    host = np.asarray(buffer).copy()
    layout.put(host, 2, np.full((2, 3), 9, np.float32))
    assert layout.cut(host, 2).tolist() == [[9.0] * 3] * 2 and layout.cut(host, 1).max() == 1


def test_a_wider_real_buffer_holds_complex_arrays_as_pairs() -> None:
    """LBFGS's vector: torch.cat of view_as_real pieces, in the widest real dtype."""
    arrays = [np.array([1 + 2j, 3 - 4j], np.complex64), np.array([5.0], np.float16)]
    layout = Layout.flat([a.shape for a in arrays], [a.dtype for a in arrays], np.float32)
    assert layout.sizes == (4, 1) and layout.total == 5
    buffer = layout.pack([jnp.asarray(a) for a in arrays])
    assert buffer.dtype == np.float32 and buffer.tolist() == [1.0, 2.0, 3.0, -4.0, 5.0]
    back = layout.unpack(buffer)
    assert back[0].tolist() == [1 + 2j, 3 - 4j] and back[1].tolist() == [5.0]
    # gather_index lays the buffer out in another order: the float16 array first.
    assert buffer[layout.gather_index([1, 0])].tolist() == [5.0, 1.0, 2.0, 3.0, -4.0]


def test_the_expansion_compiles_to_a_gather_without_a_cumulative_sum() -> None:
    layout = Layout.flat([(64, 64)] * 100 + [(64,)] * 100, [np.float32] * 200)
    # Before XLA's passes: after them, the folded index is a constant like any other.
    program = jax.jit(lambda v: layout.per_element(v)).lower(
        jnp.zeros(len(layout), jnp.int32)).as_text()
    assert "gather" in program
    assert "reduce_window" not in program and "cumsum" not in program


def test_traced_offsets_are_made_once_per_layout_and_device() -> None:
    layout = Layout.flat([(2, 3), (4,), ()], [np.float32] * 3)
    device = jax.devices()[0]
    offsets = traced_offsets(layout, device, True)
    assert [int(o) for o in offsets] == [0, 6, 10]
    assert all(o.dtype == np.int32 and o.devices() == {device} and o.committed for o in offsets)
    assert traced_offsets(Layout.flat([(2, 3), (4,), ()], [np.float32] * 3), device,
                          True) is offsets
    # For an uncommitted buffer, uncommitted: a committed offset would commit every result
    # it meets, and the next call, given those, would compile again.
    assert not any(o.committed for o in traced_offsets(layout, device, False))


def test_a_pack_gives_its_offsets_on_its_own_device_and_none_unflattened() -> None:
    device = jax.devices()[-1]
    params = [fx.Parameter(jax.device_put(jnp.zeros(s), device)) for s in [(2, 3), (4,)]]
    [pack] = make_packs(params, elementwise=True)
    starts = pack.starts()
    assert [int(o) for o in starts] == [0, 6]
    assert all(o.devices() == {device} for o in starts)
    single = fx.Parameter(jnp.zeros(5))
    assert ParamPack([single], Layout.single((5,), np.float32)).starts() == ()


def test_the_policy_flattens_only_elementwise_math() -> None:
    """Element-wise: small Parameters share a flat buffer, a large one keeps its array.
    Shape-aware: same-shape Parameters share a stack, each in its shape, whatever their size;
    a shape of its own keeps its array."""
    small = [fx.Parameter(jnp.ones((16, 8))), fx.Parameter(jnp.ones(8))]
    large = fx.Parameter(jnp.ones((300, 300)))
    kinds = sorted((p.layout.kind, len(p.params))
                   for p in make_packs([*small, large], elementwise=True))
    assert kinds == [("flat", 2), ("single", 1)]
    matrices = [fx.Parameter(jnp.ones((300, 300))) for _ in range(3)]
    packs = make_packs([*matrices, fx.Parameter(jnp.ones((16, 8)))], elementwise=False)
    assert sorted((p.layout.kind, len(p.params)) for p in packs) == [("single", 1),
                                                                    ("stacked", 3)]
    assert matrices[1].value.shape == (300, 300)  # read back in its own shape
    matrices[1].value = jnp.full((300, 300), 2.0)
    assert float(matrices[1].value[0, 0]) == 2.0 and float(matrices[0].value[0, 0]) == 1.0
