"""Tests of ``lucid_fx._src.stateful.clip_grad``: torch's in-place ``clip_grad_norm_`` / ``clip_grad_value_``.

Three kinds of storage are covered, because the functions read and write
gradients where the optimizer keeps them: "packed" (an ``fx.RMSprop`` holds the
Parameters, small ones share one buffer, a large one has its own), "unpacked" (no
optimizer: each ``.grad`` is its own array) and "mixed". Results are compared with
``torch.nn.utils`` on equal tensors and with an independent float64 NumPy
reference; every failing call is checked to leave every gradient bit for bit as
it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from optimizers_under_test import CompileCounter
from reference import max_rel_error

import lucid_fx as fx
from lucid_fx._src.stateful.clip_grad import clip_grad_norm_, clip_grad_value_

# float32: torch's CPU norm accumulates in float32 and drifts with the size (measured
# against float64: 3.4e-6 for the 1-norm of 90000 entries, where XLA's sum is at 3e-8);
# the clipped gradients inherit that through the coefficient.
RTOL_TORCH_F32 = 1e-5
RTOL_REF_F32 = 2e-6  # float32 result against float64 arithmetic
RTOL_F64 = 1e-12

NORM_TYPES = [1.0, 2.0, 3.5, math.inf]
NORM_IDS = ["1", "2", "3.5", "inf"]

# Small shapes share a pack; (300, 300) is above PACK_MAX_ELEMENTS and keeps its own array.
SHAPES: list[tuple[int, ...]] = [(3, 4), (5,), (), (2, 3, 2), (0,), (300, 300), (7,)]
NO_GRAD = {2, 6}  # indices of SHAPES whose .grad stays None


def _torch() -> Any:
    return pytest.importorskip(
        "torch", reason="torch is not installed; it is in the test extra: pip install -e '.[test]'"
    )


# ------------------------------------------------------------------ helpers


def make_params(shapes: Sequence[tuple[int, ...]], seed: int = 0, dtype: Any = np.float32
                ) -> list[fx.Parameter]:
    rng = np.random.default_rng(seed)
    return [fx.Parameter(rng.standard_normal(s).astype(dtype)) for s in shapes]


def random_grads(shapes: Sequence[tuple[int, ...]], seed: int, scale: float = 1.0,
                 dtype: Any = np.float32) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    grads = []
    for s in shapes:
        g = scale * rng.standard_normal(s)
        if np.issubdtype(dtype, np.complexfloating):
            g = g + 1j * scale * rng.standard_normal(s)
        grads.append(g.astype(dtype))
    return grads


def build(storage: str, shapes: Sequence[tuple[int, ...]] = SHAPES, seed: int = 0,
          scale: float = 1.0, no_grad: set[int] = NO_GRAD, dtype: Any = np.float32
          ) -> tuple[list[fx.Parameter], list[np.ndarray | None]]:
    """Parameters in ``storage`` with gradients (None at ``no_grad``), and those gradients."""
    params = make_params(shapes, seed, dtype)
    if storage == "packed":
        fx.RMSprop(params)
    elif storage == "mixed":
        fx.RMSprop(params[::2])  # the others stay unpacked
    else:
        assert storage == "unpacked"
    grads: list[np.ndarray | None] = list(random_grads(shapes, seed + 1, scale, dtype))
    for i, (p, g) in enumerate(zip(params, grads)):
        if i in no_grad:
            grads[i] = None
        else:
            p.grad = jnp.asarray(g)
    return params, grads


def grads_of(params: Sequence[fx.Parameter]) -> list[np.ndarray | None]:
    return [None if p.grad is None else np.array(p.grad) for p in params]


def assert_same_grads(actual: Sequence[np.ndarray | None], expected: Sequence[np.ndarray | None]
                      ) -> None:
    """Bitwise equality, dtypes included (nan equals nan)."""
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert (a is None) == (e is None), (a, e)
        if a is not None and e is not None:
            assert a.dtype == e.dtype and a.shape == e.shape, (a.dtype, e.dtype, a.shape, e.shape)
            np.testing.assert_array_equal(a, e)


def torch_twins(grads: Sequence[np.ndarray | None], shapes: Sequence[tuple[int, ...]]) -> list[Any]:
    """torch leaf tensors of ``shapes`` holding copies of ``grads`` as their ``.grad``."""
    torch = _torch()
    tensors = []
    for g, s in zip(grads, shapes):
        t = torch.zeros(s, dtype=torch.float32, requires_grad=True)
        if g is not None:
            t.grad = torch.from_numpy(np.array(g))
        tensors.append(t)
    return tensors


def reference_norm(grads: Sequence[np.ndarray | None], norm_type: float) -> float:
    """‖all gradients‖_p in float64 (complex: modulus), written from the definition."""
    flat = np.concatenate(
        [np.abs(np.asarray(g).astype(np.complex128)).ravel() for g in grads if g is not None]
        + [np.zeros(0)]
    )
    if norm_type == math.inf:
        return float(np.max(flat, initial=0.0))
    return float(np.sum(flat**norm_type) ** (1.0 / norm_type))


def reference_clip(grads: Sequence[np.ndarray | None], max_norm: float, norm_type: float
                   ) -> tuple[float, list[np.ndarray | None]]:
    norm = reference_norm(grads, norm_type)
    coef = min(1.0, max_norm / (norm + 1e-6))
    return norm, [None if g is None else np.asarray(g).astype(np.complex128) * coef for g in grads]


# ------------------------------------------------------------------ clip_grad_norm_: parity


@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=NORM_IDS)
@pytest.mark.parametrize("storage", ["packed", "unpacked", "mixed"])
@pytest.mark.parametrize("ratio", [2.0, 0.5], ids=["below", "above"])
def test_clip_grad_norm_matches_torch(norm_type: float, storage: str, ratio: float) -> None:
    """``ratio`` = max_norm / norm: 2 leaves the gradients as they are, 0.5 halves them."""
    torch = _torch()
    params, grads = build(storage)
    # torch refuses the inf-norm of an empty gradient ("no identity"); it adds nothing here.
    twins = torch_twins([None if g is not None and g.size == 0 and norm_type == math.inf else g
                         for g in grads], SHAPES)
    max_norm = ratio * reference_norm(grads, norm_type)
    expected = torch.nn.utils.clip_grad_norm_(twins, max_norm, norm_type)
    norm = clip_grad_norm_(params, max_norm, norm_type)
    assert isinstance(norm, jax.Array) and norm.shape == () and norm.dtype == jnp.float32
    np.testing.assert_allclose(float(norm), float(expected), rtol=RTOL_TORCH_F32)
    for p, t in zip(params, twins):
        if p.grad is not None and p.grad.size == 0:
            assert p.grad.dtype == jnp.float32 and p.grad.shape == tuple(t.shape)
        elif t.grad is None:
            assert p.grad is None
        else:
            assert p.grad.dtype == jnp.float32 and p.grad.shape == tuple(t.shape)
            np.testing.assert_allclose(np.asarray(p.grad), t.grad.numpy(), rtol=RTOL_TORCH_F32,
                                       atol=1e-30)


@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=NORM_IDS)
def test_gradients_from_backward_match_torch_and_step(norm_type: float) -> None:
    """Gradients that ``fx.backward`` left in a pack's buffer (not set by hand)."""
    torch = _torch()
    shapes = [(4, 3), (3,), (3, 2), (2,)]
    params = make_params(shapes, seed=3)
    model = {"w1": params[0], "b1": params[1], "w2": params[2], "b2": params[3]}
    opt = fx.RMSprop(params, lr=0.01)
    x = np.random.default_rng(4).standard_normal((8, 4)).astype(np.float32)

    def loss_fn(m: dict[str, jax.Array], x: jax.Array) -> jax.Array:
        h = jnp.tanh(x @ m["w1"] + m["b1"])
        return 10.0 * jnp.sum((h @ m["w2"] + m["b2"]) ** 2)

    fx.backward(loss_fn, model, x)
    before = grads_of(params)
    twins = torch_twins(before, shapes)
    expected = torch.nn.utils.clip_grad_norm_(twins, 0.5, norm_type)
    norm = clip_grad_norm_(fx.parameters(model), 0.5, norm_type)
    assert float(norm) > 0.5
    np.testing.assert_allclose(float(norm), float(expected), rtol=RTOL_TORCH_F32)
    for p, t in zip(params, twins):
        np.testing.assert_allclose(np.asarray(p.grad), t.grad.numpy(), rtol=RTOL_TORCH_F32)
    # The optimizer steps with the clipped gradients.
    clipped = grads_of(params)
    twin_params = make_params(shapes, seed=3)
    twin_opt = fx.RMSprop(twin_params, lr=0.01)
    for q, g in zip(twin_params, clipped):
        q.grad = jnp.asarray(g)
    opt.step()
    twin_opt.step()
    for p, q in zip(params, twin_params):
        np.testing.assert_array_equal(np.asarray(p.value), np.asarray(q.value))


def test_training_with_clipping_follows_torch() -> None:
    """A few steps of backward, clip, RMSprop step, in both libraries."""
    torch = _torch()
    rng = np.random.default_rng(5)
    w0 = rng.standard_normal((4, 2)).astype(np.float32)
    b0 = np.zeros(2, np.float32)
    x = rng.standard_normal((16, 4)).astype(np.float32)
    y = rng.standard_normal((16, 2)).astype(np.float32)
    model = {"w": fx.Parameter(w0), "b": fx.Parameter(b0)}
    opt = fx.RMSprop(fx.parameters(model), lr=0.05)
    tw = torch.tensor(w0, requires_grad=True)
    tb = torch.tensor(b0, requires_grad=True)
    topt = torch.optim.RMSprop([tw, tb], lr=0.05)

    def loss_fn(m: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
        return 5.0 * jnp.mean((x @ m["w"] + m["b"] - y) ** 2)

    for _ in range(5):
        opt.zero_grad()
        fx.backward(loss_fn, model, x, y)
        norm = clip_grad_norm_(fx.parameters(model), 0.3)
        opt.step()
        topt.zero_grad()
        (5.0 * torch.mean((torch.from_numpy(x) @ tw + tb - torch.from_numpy(y)) ** 2)).backward()
        tnorm = torch.nn.utils.clip_grad_norm_([tw, tb], 0.3)
        topt.step()
        np.testing.assert_allclose(float(norm), float(tnorm), rtol=5e-5)
    np.testing.assert_allclose(np.asarray(model["w"].value), tw.detach().numpy(), rtol=5e-5,
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(model["b"].value), tb.detach().numpy(), rtol=5e-5,
                               atol=1e-6)


@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=NORM_IDS)
def test_pack_neighbours_that_were_not_given_are_untouched(norm_type: float) -> None:
    torch = _torch()
    shapes = [(3,), (4,), (2, 2), (5,), (1,)]
    params, grads = build("packed", shapes, no_grad={4}, scale=10.0)
    assert len({id(p.storage.pack) for p in params}) == 1  # all in one buffer
    chosen = [0, 2, 4]  # 4 has no gradient; 1 and 3 are neighbours with gradients
    twins = torch_twins([grads[i] for i in chosen], [shapes[i] for i in chosen])
    expected = torch.nn.utils.clip_grad_norm_(twins, 1.0, norm_type)
    norm = clip_grad_norm_([params[i] for i in chosen], 1.0, norm_type)
    np.testing.assert_allclose(float(norm), float(expected), rtol=RTOL_TORCH_F32)
    after = grads_of(params)
    for i, t in zip(chosen, twins):
        if t.grad is None:
            assert after[i] is None
        else:
            np.testing.assert_allclose(after[i], t.grad.numpy(), rtol=RTOL_TORCH_F32)
    assert_same_grads([after[1], after[3]], [grads[1], grads[3]])


def test_mixed_float_dtypes_match_torch() -> None:
    torch = _torch()
    values = {"f16": np.array([1.0, 2.0], np.float16), "f32": np.array([3.0, -1.5], np.float32),
              "bf16": np.array([0.5, 4.0], np.float32)}
    params = [fx.Parameter(jnp.zeros(2, jnp.float16)), fx.Parameter(jnp.zeros(2)),
              fx.Parameter(jnp.zeros(2, jnp.bfloat16))]
    fx.RMSprop(params)
    params[0].grad = jnp.asarray(values["f16"])
    params[1].grad = jnp.asarray(values["f32"])
    params[2].grad = jnp.asarray(values["bf16"], jnp.bfloat16)
    twins = [torch.zeros(2, dtype=dt, requires_grad=True)
             for dt in (torch.float16, torch.float32, torch.bfloat16)]
    for t, v in zip(twins, values.values()):
        t.grad = torch.tensor(v.astype(np.float32)).to(t.dtype)
    expected = torch.nn.utils.clip_grad_norm_(twins, 1.0)
    norm = clip_grad_norm_(params, 1.0)
    assert norm.dtype == jnp.float32 and expected.dtype == torch.float32
    # torch rounds the float16 and bfloat16 per-parameter norms to their dtype first.
    np.testing.assert_allclose(float(norm), float(expected), rtol=1e-3)
    np.testing.assert_allclose(float(norm), reference_norm(list(values.values()), 2.0), rtol=1e-6)
    for p, t in zip(params, twins):
        assert p.grad.dtype == jnp.dtype(str(t.dtype).removeprefix("torch."))
        np.testing.assert_allclose(np.asarray(p.grad, np.float32), t.grad.float().numpy(),
                                   rtol=1e-2)


def test_bfloat16_gradients_return_a_bfloat16_norm_like_torch() -> None:
    torch = _torch()
    p = fx.Parameter(jnp.zeros(2, jnp.bfloat16))
    p.grad = jnp.array([1.0, 2.0], jnp.bfloat16)
    t = torch.zeros(2, dtype=torch.bfloat16, requires_grad=True)
    t.grad = torch.tensor([1.0, 2.0], dtype=torch.bfloat16)
    expected = torch.nn.utils.clip_grad_norm_([t], 1.0)
    norm = clip_grad_norm_(p, 1.0)
    assert norm.dtype == jnp.bfloat16 and p.grad.dtype == jnp.bfloat16
    assert float(norm) == float(expected)
    np.testing.assert_array_equal(np.asarray(p.grad, np.float32), t.grad.float().numpy())


@pytest.mark.parametrize("storage", ["packed", "unpacked"])
@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=NORM_IDS)
def test_complex_gradients_count_by_modulus_like_torch(storage: str, norm_type: float) -> None:
    torch = _torch()
    shapes = [(3,), (2, 2)]
    params, grads = build(storage, shapes, no_grad=set(), dtype=np.complex64)
    twins = []
    for g in grads:
        t = torch.zeros(g.shape, dtype=torch.complex64, requires_grad=True)
        t.grad = torch.from_numpy(np.array(g))
        twins.append(t)
    expected = torch.nn.utils.clip_grad_norm_(twins, 1.0, norm_type)
    norm = clip_grad_norm_(params, 1.0, norm_type)
    assert norm.dtype == jnp.float32
    np.testing.assert_allclose(float(norm), float(expected), rtol=RTOL_TORCH_F32)
    for p, t in zip(params, twins):
        assert p.grad.dtype == jnp.complex64
        np.testing.assert_allclose(np.asarray(p.grad), t.grad.numpy(), rtol=RTOL_TORCH_F32)


def test_float64_matches_torch() -> None:
    torch = _torch()
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(s) for s in [(3, 4), (5,), (200, 400)]]
    with jax.enable_x64(True):
        for norm_type in [1.0, 2.0, 3.5, float("inf")]:
            params = [fx.Parameter(jnp.zeros(g.shape, jnp.float64)) for g in grads]
            fx.RMSprop(params[:2])  # two packed, one loose
            twins = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
            for p, t, g in zip(params, twins, grads):
                p.grad, t.grad = jnp.asarray(g), torch.from_numpy(g.copy())
            norm = clip_grad_norm_(params, 1.0, norm_type)
            expected = torch.nn.utils.clip_grad_norm_(twins, 1.0, norm_type)
            assert norm.dtype == jnp.float64, norm_type
            assert abs(float(norm) / float(expected) - 1) <= RTOL_F64, norm_type
            for p, t in zip(params, twins):
                assert p.grad.dtype == jnp.float64, norm_type
                assert max_rel_error(np.asarray(p.grad), t.grad.numpy()) <= RTOL_F64, norm_type


# ------------------------------------------------------------------ clip_grad_norm_: reference


@pytest.mark.parametrize("norm_type", [*NORM_TYPES, 0.5, 7.0], ids=[*NORM_IDS, "0.5", "7"])
@pytest.mark.parametrize("storage", ["packed", "unpacked", "mixed"])
def test_clip_grad_norm_matches_float64_reference(norm_type: float, storage: str) -> None:
    params, grads = build(storage, seed=7, scale=3.0)
    norm = clip_grad_norm_(params, 1.5, norm_type)
    expected_norm, expected = reference_clip(grads, 1.5, norm_type)
    np.testing.assert_allclose(float(norm), expected_norm, rtol=RTOL_REF_F32)
    for actual, e in zip(grads_of(params), expected):
        assert (actual is None) == (e is None)
        if actual is not None:
            np.testing.assert_allclose(actual, e.real, rtol=RTOL_REF_F32, atol=1e-30)


@pytest.mark.parametrize("scale", [1e30, 1e-30], ids=["huge", "tiny"])
@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=NORM_IDS)
def test_norms_neither_overflow_nor_underflow(scale: float, norm_type: float) -> None:
    """Where torch's float32 sum of |g|^p gives inf (huge) or 0 (tiny), ours is the true norm."""
    params, grads = build("mixed", [(3,), (4,), (2, 2)], seed=8, scale=scale, no_grad=set())
    norm = clip_grad_norm_(params, 1.0, norm_type)
    expected_norm, expected = reference_clip(grads, 1.0, norm_type)
    assert math.isfinite(float(norm)) and float(norm) > 0
    np.testing.assert_allclose(float(norm), expected_norm, rtol=RTOL_REF_F32)
    for actual, e in zip(grads_of(params), expected):
        assert e is not None
        np.testing.assert_allclose(actual, e.real, rtol=RTOL_REF_F32, atol=0)


@given(
    data=st.data(),
    n=st.integers(1, 6),
    storage=st.sampled_from(["packed", "unpacked", "mixed"]),
    norm_type=st.sampled_from([1.0, 1.5, 2.0, 3.5, math.inf]),
    max_norm=st.floats(0.0, 10.0),
    log_scale=st.floats(-3.0, 3.0),
)
def test_clipping_bounds_the_norm_and_keeps_the_direction(
    data: st.DataObject, n: int, storage: str, norm_type: float, max_norm: float,
    log_scale: float,
) -> None:
    shapes = [tuple(data.draw(st.lists(st.integers(1, 4), max_size=2))) for _ in range(n)]
    no_grad = set(data.draw(st.lists(st.integers(0, n - 1), max_size=n - 1)))
    params, grads = build(storage, shapes, seed=data.draw(st.integers(0, 2**16)),
                          scale=10.0**log_scale, no_grad=no_grad)
    norm = float(clip_grad_norm_(params, max_norm, norm_type))
    before = reference_norm(grads, norm_type)
    np.testing.assert_allclose(norm, before, rtol=RTOL_REF_F32)
    after = grads_of(params)
    assert reference_norm(after, norm_type) <= max_norm * (1 + 1e-5)
    coef = min(1.0, max_norm / (before + 1e-6))
    for g, a in zip(grads, after):
        assert (g is None) == (a is None)
        if g is not None and a is not None:
            # One coefficient for all, in [0, 1]: the direction is kept.
            np.testing.assert_allclose(a, coef * g.astype(np.float64), rtol=1e-5, atol=1e-30)


# ------------------------------------------------------------------ clip_grad_norm_: API details


def test_parameters_may_be_one_parameter_a_generator_or_a_tuple() -> None:
    for wrap in (lambda ps: ps[0], lambda ps: (p for p in ps), tuple):
        params = make_params([(2,)])
        params[0].grad = jnp.array([3.0, 4.0])
        norm = clip_grad_norm_(wrap(params), 1.0)
        assert float(norm) == 5.0
        np.testing.assert_allclose(np.asarray(params[0].grad), [0.6, 0.8], rtol=1e-6)


@pytest.mark.parametrize("spelling", ["inf", math.inf, np.inf, float("inf"), np.float32(np.inf)])
def test_inf_norm_spellings(spelling: Any) -> None:
    params, grads = build("packed", [(3,), (4,)], no_grad=set(), scale=5.0)
    norm = clip_grad_norm_(params, 1.0, spelling)
    assert float(norm) == pytest.approx(reference_norm(grads, math.inf), rel=1e-6)


@pytest.mark.parametrize("spelling", [2, 2.0, np.float32(2.0), np.int64(2), jnp.array(2.0), "2"])
def test_numeric_norm_type_spellings(spelling: Any) -> None:
    params, grads = build("unpacked", [(3,), (4,)], no_grad=set())
    assert float(clip_grad_norm_(params, 100.0, spelling)) == pytest.approx(
        reference_norm(grads, 2.0), rel=1e-6)


def test_without_gradients_the_norm_is_zero_and_nothing_changes() -> None:
    params = make_params([(2,), (3,)])
    fx.RMSprop(params[:1])
    for given_params in ([], params, iter(())):
        norm = clip_grad_norm_(given_params, 1.0)
        assert isinstance(norm, jax.Array) and norm.dtype == jnp.float32 and float(norm) == 0.0
        assert clip_grad_value_(given_params, 1.0) is None
    assert all(p.grad is None for p in params)


def test_max_norm_zero_zeroes_and_inf_only_measures() -> None:
    params, grads = build("mixed", [(3,), (4,)], no_grad=set())
    norm = clip_grad_norm_(params, math.inf)  # torch's idiom to read the norm
    assert float(norm) == pytest.approx(reference_norm(grads, 2.0), rel=1e-6)
    assert_same_grads(grads_of(params), grads)
    clip_grad_norm_(params, 0.0)
    assert all(not np.any(g) for g in grads_of(params))


def test_a_parameter_listed_twice_counts_once() -> None:
    p = make_params([(2,)])[0]
    p.grad = jnp.array([3.0, 4.0])
    assert float(clip_grad_norm_([p, p, p], 1.0)) == 5.0
    np.testing.assert_allclose(np.asarray(p.grad), [0.6, 0.8], rtol=1e-6)


def test_arrays_read_before_clipping_keep_their_values() -> None:
    params, grads = build("mixed", [(3,), (4,), (300, 300)], no_grad=set(), scale=5.0)
    held = [p.grad for p in params]
    clip_grad_norm_(params, 1.0)
    assert_same_grads([np.asarray(h) for h in held], grads)


def test_hand_assigned_gradients_in_a_partly_filled_pack() -> None:
    """Some slots assigned by hand after backward, one cleared: overrides fold first."""
    shapes = [(3,), (2,), (4,)]
    params = make_params(shapes, seed=9)
    model = list(params)
    fx.RMSprop(params)
    fx.backward(lambda m: jnp.sum(m[0] ** 2) + jnp.sum(m[1] * 3.0) + jnp.sum(m[2]), model)
    params[1].grad = jnp.array([10.0, -20.0])
    params[2].grad = None
    grads = grads_of(params)
    norm = clip_grad_norm_(params, 1.0)
    expected_norm, expected = reference_clip(grads, 1.0, 2.0)
    np.testing.assert_allclose(float(norm), expected_norm, rtol=RTOL_REF_F32)
    after = grads_of(params)
    assert after[2] is None
    for a, e in zip(after[:2], expected[:2]):
        assert e is not None
        np.testing.assert_allclose(a, e.real, rtol=RTOL_REF_F32)


# ------------------------------------------------------------------ non-finite gradients


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("storage", ["packed", "unpacked"])
def test_non_finite_norm_with_error_raises_like_torch_and_changes_nothing(bad: float, storage: str
                                                                          ) -> None:
    torch = _torch()
    params, grads = build(storage, [(3,), (4,)], no_grad=set())
    poisoned = np.array(grads[1])
    poisoned[2] = bad
    params[1].grad = jnp.asarray(poisoned)
    before = grads_of(params)
    twins = torch_twins(before, [(3,), (4,)])
    advice = ("so it cannot be clipped. To disable this error and scale the gradients by the "
              "non-finite norm anyway, set `error_if_nonfinite=False`")
    with pytest.raises(RuntimeError) as torch_error:
        torch.nn.utils.clip_grad_norm_(twins, 1.0, error_if_nonfinite=True)
    assert advice in str(torch_error.value)  # torch's wording, which ours repeats
    with pytest.raises(
        RuntimeError, match=r"clip_grad_norm_: the total norm of order 2.0 for gradients from "
                            r"`parameters` is non-finite \((nan|inf)\), "
    ) as error:
        clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    assert advice in str(error.value)
    assert_same_grads(grads_of(params), before)
    # Without the flag, torch's arithmetic: scaled by a nan (or zero) coefficient.
    norm = clip_grad_norm_(params, 1.0)
    expected = torch.nn.utils.clip_grad_norm_(twins, 1.0)
    np.testing.assert_array_equal(float(norm), float(expected))
    for p, t in zip(params, twins):
        np.testing.assert_array_equal(np.asarray(p.grad), t.grad.numpy())


def test_error_message_names_inf_order() -> None:
    p = make_params([(2,)])[0]
    p.grad = jnp.array([math.nan, 1.0])
    with pytest.raises(RuntimeError, match="order inf"):
        clip_grad_norm_(p, 1.0, "inf", error_if_nonfinite=True)


# ------------------------------------------------------------------ bad input


def _model_with_grads() -> list[fx.Parameter]:
    """[packed (3,), unpacked (2,) without a gradient, packed (4,)], all float32."""
    params, _ = build("mixed", [(3,), (2,), (4,)], no_grad={1})
    return params


Setup = tuple[int, Any] | None  # (index, gradient assigned by hand before the call)
BadCall = tuple[Setup, Callable[[list[fx.Parameter]], Any], type[Exception], str]

BAD_CALLS: dict[str, BadCall] = {
    "max_norm=-1": (None, lambda ps: clip_grad_norm_(ps, -1.0), ValueError,
                    r"Invalid max_norm value: -1.0 \(expected a number >= 0.0\)"),
    "max_norm=nan": (None, lambda ps: clip_grad_norm_(ps, math.nan), ValueError,
                     r"Invalid max_norm value: nan"),
    "max_norm=None": (None, lambda ps: clip_grad_norm_(ps, None), ValueError,
                      r"Invalid max_norm value: None"),
    "max_norm='1'": (None, lambda ps: clip_grad_norm_(ps, "1"), ValueError,
                     r"Invalid max_norm value: '1'"),
    "max_norm=True": (None, lambda ps: clip_grad_norm_(ps, True), ValueError,
                      r"Invalid max_norm value: True"),
    "max_norm=array": (None, lambda ps: clip_grad_norm_(ps, jnp.ones(2)),
                       ValueError, r"Invalid max_norm value: expected a scalar"),
    "norm_type=0": (None, lambda ps: clip_grad_norm_(ps, 1.0, 0), ValueError,
                    r"Invalid norm_type value: 0 \(expected a number > 0, or inf\)"),
    "norm_type=-2": (None, lambda ps: clip_grad_norm_(ps, 1.0, -2.0), ValueError,
                     r"Invalid norm_type value: -2.0"),
    "norm_type=-inf": (None, lambda ps: clip_grad_norm_(ps, 1.0, -math.inf), ValueError,
                       r"Invalid norm_type value: -inf"),
    "norm_type=nan": (None, lambda ps: clip_grad_norm_(ps, 1.0, math.nan), ValueError,
                      r"Invalid norm_type value: nan"),
    "norm_type='two'": (None, lambda ps: clip_grad_norm_(ps, 1.0, "two"), ValueError,
                        r"Invalid norm_type value: 'two'"),
    "norm_type=True": (None, lambda ps: clip_grad_norm_(ps, 1.0, True), ValueError,
                       r"Invalid norm_type value: True"),
    "error_if_nonfinite='yes'": (
        None, lambda ps: clip_grad_norm_(ps, 1.0, error_if_nonfinite="yes"),
        ValueError, r"Invalid error_if_nonfinite value: 'yes' \(expected True or False\)"),
    "array-in-list": (None, lambda ps: clip_grad_norm_([ps[0], jnp.ones(2)], 1.0),
                      TypeError,
                      (r"clip_grad_norm_: parameters\[1\] is a .*Array.*, not an fx.Parameter; "
                       r"pass fx.parameters\(model\), or wrap arrays in fx.Parameter")),
    "array": (None, lambda ps: clip_grad_norm_(jnp.ones(2), 1.0), TypeError,
              r"parameters must be an fx.Parameter or an iterable of them, got a .*Array"),
    "numpy-array-in-list": (None, lambda ps: clip_grad_norm_([np.ones(2)], 1.0),
                            TypeError, r"parameters\[0\] is a ndarray"),
    "model-dict": (None, lambda ps: clip_grad_norm_({"w": ps[0]}, 1.0),
                   TypeError, r"got a dict; pass fx.parameters\(model\)"),
    "number": (None, lambda ps: clip_grad_norm_(3, 1.0), TypeError,
               r"got a int"),
    "packed-grad-shape": ((0, jnp.ones(5)), lambda ps: clip_grad_norm_(ps, 1.0), ValueError,
                          r"has a gradient of shape \(5,\); expected \(3,\)"),
    "packed-grad-dtype": ((0, jnp.ones(3, jnp.int32)), lambda ps: clip_grad_norm_(ps, 1.0),
                          ValueError, r"has a gradient of dtype int32; expected float32"),
    "packed-grad-list": ((2, [1.0, 2.0, 3.0, 4.0]), lambda ps: clip_grad_norm_(ps, 1.0),
                         TypeError, r"has a .grad of type list; expected a jax.Array"),
    "unpacked-int-grad": ((1, jnp.ones(2, jnp.int32)), lambda ps: clip_grad_norm_(ps, 1.0),
                          TypeError, r"dtype int32; expected floating point or complex"),
    "unpacked-grad-shape": ((1, jnp.ones(4)), lambda ps: clip_grad_norm_(ps, 1.0), ValueError,
                            r"shape \(4,\); expected \(2,\)"),
    "unpacked-grad-list": ((1, [1.0, 2.0]), lambda ps: clip_grad_norm_(ps, 1.0), TypeError,
                           r"has a .grad of type list; expected an array"),
    "clip_value=-1": (None, lambda ps: clip_grad_value_(ps, -1.0), ValueError,
                      r"Invalid clip_value value: -1.0 \(expected a number >= 0.0\)"),
    "clip_value=nan": (None, lambda ps: clip_grad_value_(ps, math.nan), ValueError,
                       r"Invalid clip_value value: nan"),
    "clip_value=None": (None, lambda ps: clip_grad_value_(ps, None),
                        ValueError, r"Invalid clip_value value: None"),
    "value-array-in-list": (None, lambda ps: clip_grad_value_([*ps, np.ones(2)], 1.0),
                            TypeError, r"clip_grad_value_: parameters\[3\] is a ndarray"),
    "value-grad-shape": ((2, jnp.ones(1)), lambda ps: clip_grad_value_(ps, 1.0), ValueError,
                         r"clip_grad_value_: .* shape \(1,\); expected \(4,\)"),
    "foreach='yes'": (None, lambda ps: clip_grad_norm_(ps, 1.0, foreach="yes"), ValueError,
                      r"Invalid foreach value: 'yes' \(expected None, True or False\)"),
    "value-foreach=1": (None, lambda ps: clip_grad_value_(ps, 1.0, foreach=1), ValueError,
                        r"Invalid foreach value: 1"),
}


def test_torchs_signatures_and_foreach_change_nothing() -> None:
    """torch's whole signatures, foreach included, by position and by keyword."""
    import inspect

    torch = pytest.importorskip("torch", reason="compared with torch's own signatures")
    for ours, theirs in [(clip_grad_norm_, torch.nn.utils.clip_grad_norm_),
                         (clip_grad_value_, torch.nn.utils.clip_grad_value_)]:
        assert [(p.name, p.kind, p.default) for p in
                inspect.signature(ours).parameters.values()] == [
            (p.name, p.kind, p.default) for p in inspect.signature(theirs).parameters.values()]
    plain, each = _model_with_grads(), _model_with_grads()
    norm = clip_grad_norm_(plain, 1.0, 2.0, False)
    assert float(clip_grad_norm_(each, 1.0, 2.0, False, True)) == float(norm)
    clip_grad_value_(plain, 0.1)
    clip_grad_value_(each, 0.1, foreach=False)
    assert_same_grads(grads_of(each), grads_of(plain))


@pytest.mark.parametrize("case", BAD_CALLS.values(), ids=list(BAD_CALLS))
def test_bad_input_raises_and_changes_nothing(case: BadCall) -> None:
    setup, call, error, pattern = case
    params = _model_with_grads()
    if setup is not None:
        index, grad = setup
        params[index].grad = grad
    before = grads_of(params)
    with pytest.raises(error, match=pattern):
        call(params)
    assert_same_grads(grads_of(params), before)


@pytest.mark.parametrize("storage", ["packed", "unpacked"])
def test_clip_grad_value_refuses_complex_and_changes_nothing(storage: str) -> None:
    params, grads = build(storage, [(2,), (3,)], no_grad=set(), dtype=np.complex64)
    with pytest.raises(TypeError, match=r"complex gradient, and complex numbers cannot be clamped"):
        clip_grad_value_(params, 1.0)
    assert_same_grads(grads_of(params), grads)


# ------------------------------------------------------------------ clip_grad_value_


@pytest.mark.parametrize("storage", ["packed", "unpacked", "mixed"])
@pytest.mark.parametrize("clip_value", [0.0, 0.5, 1e9], ids=["zero", "half", "huge"])
def test_clip_grad_value_matches_torch(storage: str, clip_value: float) -> None:
    torch = _torch()
    params, grads = build(storage, scale=2.0)
    twins = torch_twins(grads, SHAPES)
    torch.nn.utils.clip_grad_value_(twins, clip_value)
    assert clip_grad_value_(params, clip_value) is None
    for p, t, g in zip(params, twins, grads):
        if g is None:
            assert p.grad is None and t.grad is None
        else:
            assert p.grad.dtype == jnp.float32
            np.testing.assert_array_equal(np.asarray(p.grad), t.grad.numpy())
            np.testing.assert_array_equal(np.asarray(p.grad), np.clip(g, -clip_value, clip_value))


def test_clip_grad_value_keeps_nan_and_leaves_neighbours_alone() -> None:
    shapes = [(3,), (3,), (2,)]
    params, grads = build("packed", shapes, no_grad=set(), scale=5.0)
    poisoned = np.array(grads[0])
    poisoned[1] = math.nan
    params[0].grad = jnp.asarray(poisoned)
    clip_grad_value_([params[0], params[2]], math.inf)
    assert_same_grads(grads_of(params), [poisoned, grads[1], grads[2]])
    clip_grad_value_([params[0], params[2]], 1.0)
    after = grads_of(params)
    assert_same_grads([after[1]], [grads[1]])
    np.testing.assert_array_equal(after[0], np.clip(poisoned, -1, 1))
    assert np.isnan(after[0][1])
    np.testing.assert_array_equal(after[2], np.clip(grads[2], -1, 1))


def test_clip_grad_value_keeps_low_precision_dtypes() -> None:
    p = fx.Parameter(jnp.zeros(3, jnp.bfloat16))
    fx.RMSprop([p])
    p.grad = jnp.array([-3.0, 0.25, 2.0], jnp.bfloat16)
    clip_grad_value_([p], 1.0)
    assert p.grad.dtype == jnp.bfloat16
    assert p.grad.tolist() == [-1.0, 0.25, 1.0]


# ------------------------------------------------------------------ one compiled call


@pytest.fixture
def fresh_structure() -> Iterator[list[fx.Parameter]]:
    """Parameters of shapes no other test uses, so their first clip compiles afresh."""
    shapes = [(17, 3), (19,), (23, 2), (29,), (31,)]
    params = make_params(shapes, seed=11)
    fx.RMSprop(params[:4])  # one pack of four, one loose Parameter
    yield params


def _fill(params: list[fx.Parameter], seed: int) -> None:
    for p, g in zip(params, random_grads([p.shape for p in params], seed, scale=4.0)):
        p.grad = jnp.asarray(g)
    for p in params:  # fold hand-assigned gradients into their buffers now, outside the count
        if p.storage is not None:
            p.storage.pack.folded_grad()


def test_clip_grad_norm_is_one_compiled_call_and_does_not_recompile(
    fresh_structure: list[fx.Parameter],
) -> None:
    params = fresh_structure
    _fill(params, 0)
    with CompileCounter() as first:
        clip_grad_norm_(params, 1.0)
    # One XLA computation for the whole clip, whatever the number of Parameters.
    assert first.names == ["jit(_clip_norm)"], first.names
    with CompileCounter() as again:
        for seed in range(1, 4):
            _fill(params, seed)
            norm = clip_grad_norm_(params, 0.5 * seed)  # new values, new max_norm
            expected, _ = reference_clip(
                random_grads([p.shape for p in params], seed, scale=4.0), 0.5 * seed, 2.0)
            np.testing.assert_allclose(float(norm), expected, rtol=RTOL_REF_F32)
        _fill(params, 5)
        clip_grad_norm_(params[::-1], 1.0)  # the same Parameters in another order
        clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    assert again.count == 0, again.names


def test_which_slots_count_is_data_not_structure(fresh_structure: list[fx.Parameter]) -> None:
    params = fresh_structure
    _fill(params, 0)
    clip_grad_norm_([params[0], params[4]], 1.0)  # part of the pack: a mask
    with CompileCounter() as counter:
        _fill(params, 1)
        clip_grad_norm_([params[1], params[3], params[4]], 1.0)  # another part, same structure
    assert counter.count == 0, counter.names


def test_clip_grad_value_is_one_compiled_call(fresh_structure: list[fx.Parameter]) -> None:
    params = fresh_structure
    _fill(params, 0)
    with CompileCounter() as first:
        clip_grad_value_(params, 1.0)
    assert first.names == ["jit(_clip_value)"], first.names
    with CompileCounter() as again:
        _fill(params, 1)
        clip_grad_value_(params, 0.25)
    assert again.count == 0, again.names
    assert all(float(jnp.max(jnp.abs(p.grad))) <= 0.25 for p in params)
