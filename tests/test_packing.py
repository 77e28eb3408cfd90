"""lucid_fx.packing: layouts, the per-parameter scalars of a packed buffer, its ownership.

The expansions are checked against NumPy's own ``np.repeat`` over random layouts, and
the compiled expansion against what made a ResNet-50's first step take 10 s to compile:
an index built by a cumulative sum, which XLA folded element by element.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from lucid_fx.packing import PackLayout, per_array, per_element, slot_mask

shapes = st.lists(st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple),
                  min_size=1, max_size=12)


@given(shapes)
def test_per_element_and_per_array_are_repeat_and_its_inverse(layout_shapes: list[tuple[int, ...]]) -> None:
    layout = PackLayout(layout_shapes, np.float32)
    values = np.arange(1, len(layout) + 1, dtype=np.int32) * 10
    sizes = [int(np.prod(s)) for s in layout_shapes]
    spread = per_element(jnp.asarray(values), layout)
    if len(layout) == 1:
        assert spread.shape == () and int(spread) == values[0]
    else:
        np.testing.assert_array_equal(spread, np.repeat(values, sizes))
    np.testing.assert_array_equal(per_array(spread, layout), values)
    mask = values % 20 == 0
    np.testing.assert_array_equal(slot_mask(jnp.asarray(mask), layout),
                                  np.broadcast_to(np.repeat(mask, sizes), (layout.total,)))


def test_the_expansion_compiles_to_a_gather_without_a_cumulative_sum() -> None:
    layout = PackLayout([(64, 64)] * 100 + [(64,)] * 100, np.float32)
    # Before XLA's passes: after them, the folded index is a constant like any other.
    program = jax.jit(lambda v: per_element(v, layout)).lower(
        jnp.zeros(len(layout), jnp.int32)).as_text()
    assert "gather" in program
    assert "reduce_window" not in program and "cumsum" not in program
