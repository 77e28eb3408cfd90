"""Muon as a pure gradient transform: torch 2.13's ``torch.optim.Muon``, its code's numbers.

Muon is not element-wise: each update is a whole matrix orthogonalised by a
Newton–Schulz iteration (:func:`newton_schulz`). :func:`muon_kernel` is one
matrix's step; :func:`muon` wraps it in the ``init``/``update`` protocol with
:func:`~lucid_fx._src.transforms.kernel_transform.kernel_transform`, which also
applies the decoupled weight decay, and runs the kernel once over each stack of
equal-shape matrices: a transformer's dozens of equal-shape weights cost one
batched chain of matrix products, not dozens.

Where torch's code and its docstring differ, this follows the code (whose
numbers a torch checkpoint carries):

- the momentum buffer is a lerp, ``B ← B + (1-μ)·(g - B)``, not the documented
  sum ``B ← μ·B + g``; with Nesterov the update is ``g + μ·(B - g)``;
- ε clamps the norm (``X / max(‖X‖_F, ε)``) rather than being added to it;
- the iteration runs in bfloat16, as torch's does (``ns_dtype`` changes that).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType

from lucid_fx._src.core import schema
from lucid_fx._src.core.base import GradientTransformation, Params, ScalarOrSchedule, Updates
from lucid_fx._src.core.dtypes import cast_scalar, compute_dtype
from lucid_fx._src.core.validation import (
    check_flag,
    check_float_dtype,
    check_float_leaves,
    check_hyperparameter,
)
from lucid_fx._src.transforms.kernel_transform import WeightDecay, kernel_transform, scheduled
from lucid_fx._src.transforms.numerics import lerp, wide_product

ADJUST_LR_FNS = (None, "original", "match_rms_adamw")


@schema.declare(
    elementwise=False,
    real_only=True,
    step=schema.step_count(torch_key=False),
    momentum_buffer=schema.buffer(),
    skipped=schema.skipped_count(),
)
class MuonState(NamedTuple):
    """The state of :func:`muon`; field names are torch's state-dict keys.

    Attributes:
      step: int32 count of updates applied (0 before the first); torch keeps none.
      momentum_buffer: B, one matrix per parameter.
      skipped: int32 count of steps skipped for non-finite gradients when
        ``skip_nonfinite``, else ``None``.
    """

    step: jax.Array
    momentum_buffer: Updates
    skipped: jax.Array | None


def newton_schulz(g: jax.Array, coefficients: tuple[Any, Any, Any], steps: int, eps: Any,
                  dtype: Any = jnp.bfloat16) -> jax.Array:
    """G's orthogonalisation by ``steps`` quintic Newton–Schulz iterations, torch's
    ``_zeropower_via_newtonschulz``, in ``dtype``::

        X = G / max(‖G‖_F, ε)            (transposed first when G has more rows than columns)
        repeat steps times:   A = X·Xᵀ;   B = b·A + c·A·A;   X = a·X + B·X

    Each product is accumulated in float32 and rounded to ``dtype``, as torch's
    bfloat16 ``addmm`` is (on CPU as a float32 matmul of the widened factors: the
    same numbers, faster there); with ``dtype=float32`` (or float64) the iteration
    loses nothing to bfloat16. Returns X in ``dtype``, shaped as G.

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.transforms.muon import newton_schulz
      >>> x = newton_schulz(jnp.array([[3.0, 0.0], [0.0, 1.0]]), (3.4445, -4.775, 2.0315), 5,
      ...                   1e-7, jnp.float32)
      >>> bool(jnp.all(jnp.abs(jnp.diag(x) - 1) < 0.35))   # singular values near 1
      True
    """
    wide = jnp.promote_types(dtype, jnp.float32)
    a, b, c = (cast_scalar(k, wide) for k in coefficients)
    # The product of two bfloat16 numbers is exact in float32, so a float32 matmul of
    # the widened factors has the numbers of a bfloat16 one accumulating in float32.
    # XLA:CPU runs it faster (batched bfloat16 matmuls most of all); accelerators run
    # bfloat16 natively.
    widen = jax.default_backend() == "cpu"

    def product(left: jax.Array, right: jax.Array) -> jax.Array:
        if widen:
            return jnp.matmul(left.astype(wide), right.astype(wide))
        return jnp.matmul(left, right, preferred_element_type=wide)

    x = g.astype(dtype)
    tall = g.shape[0] > g.shape[1]
    if tall:
        x = x.T
    norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(wide)))).astype(dtype)
    x = (x.astype(wide) / jnp.maximum(norm, cast_scalar(eps, dtype)).astype(wide)).astype(dtype)
    for _ in range(steps):
        gram = product(x, x.T).astype(dtype)
        update = (b * gram.astype(wide) + c * product(gram, gram)).astype(dtype)
        x = (a * x.astype(wide) + product(update, x)).astype(dtype)
    return x.T if tall else x


def partitioned_by_compiler(fn: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """``fn(x)``, with the Explicit mesh axes that shard ``x`` (if any) turned Auto for its
    duration, and the result sharded as ``x``.

    On an Explicit mesh every operation's output sharding must be stated, and a
    product of two sharded matrices (X·Xᵀ) has none that is legal without
    communication. The iteration's communication is GSPMD's to choose, as on an
    Auto mesh (docs/scaling.md: one all-reduce of the short side's Gram matrix
    per iteration when the long side is sharded).
    """
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    explicit = tuple(
        name for name, kind in zip(getattr(mesh, "axis_names", ()), getattr(mesh, "axis_types", ()))
        if kind == AxisType.Explicit)
    if not explicit:
        return fn(x)
    return jax.sharding.auto_axes(fn, axes=explicit, out_sharding=sharding)(x)


def adjusted_ratio(shape: tuple[int, ...], adjust_lr_fn: str | None) -> float:
    """The factor of lr for a matrix of ``shape``: sqrt(max(1, A/B)) (``"original"``,
    Keller Jordan's), or 0.2·sqrt(max(A, B)) (``"match_rms_adamw"``, Moonshot's)."""
    rows, cols = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(max(1.0, rows / cols))


def muon_kernel(
    g: jax.Array,
    momentum_buffer: jax.Array,
    *,
    lr: Any,
    momentum: Any,
    nesterov: bool,
    ns_coefficients: tuple[Any, Any, Any],
    ns_steps: int,
    eps: Any,
    adjust_lr_fn: str | None,
    ns_dtype: Any,
) -> tuple[jax.Array, jax.Array]:
    """One Muon step for one matrix: returns ``(term, B)``, the term added to θ after the decay.

    ``g`` is the gradient in the arithmetic's dtype. In torch's order::

        B ← lerp(B, g, 1-μ)                  (B + (1-μ)·(g - B))
        U = lerp(g, B, μ) if nesterov else B
        term = -η·ratio(shape) · NS(U)

    Example:
      >>> import jax.numpy as jnp
      >>> from lucid_fx._src.transforms.muon import muon_kernel
      >>> term, b = muon_kernel(jnp.eye(2), jnp.zeros((2, 2)), lr=0.1, momentum=0.5,
      ...                       nesterov=False, ns_coefficients=(3.4445, -4.775, 2.0315),
      ...                       ns_steps=5, eps=1e-7, adjust_lr_fn=None, ns_dtype=jnp.float32)
      >>> b.tolist()
      [[0.5, 0.0], [0.0, 0.5]]
    """
    compute = compute_dtype(g, momentum_buffer)
    h = lambda x: cast_scalar(x, compute)
    new_buffer = lerp(momentum_buffer.astype(compute), g, h(1 - momentum)).astype(
        momentum_buffer.dtype)
    buffer = new_buffer.astype(compute)
    update = lerp(g, buffer, h(momentum)) if nesterov else buffer
    ortho = partitioned_by_compiler(
        lambda u: newton_schulz(u, ns_coefficients, ns_steps, eps,
                                compute if ns_dtype is None else ns_dtype), update
    ).astype(compute)
    # torch's param.add_(update, alpha=-adjusted_lr): lr·ratio formed before the cast, at
    # least as wide as the math (a float32 schedule's lr under float64 math stays exact).
    return -h(wide_product(lr, adjusted_ratio(g.shape, adjust_lr_fn), compute)) * ortho, new_buffer


def check_matrices(name: str, tree: Params) -> None:
    """Raises ``ValueError`` (torch's type and words) naming the first leaf of ``tree``
    (arrays, or ``jax.ShapeDtypeStruct``s) that is not 2-D."""
    def check(path: Any, leaf: Any) -> None:
        shape = tuple(leaf.shape) if hasattr(leaf, "shape") else np.shape(leaf)
        if len(shape) != 2:
            where = jax.tree_util.keystr(path) or "the parameter"
            raise ValueError(
                f"{name} only supports 2D parameters whereas we found a parameter with size: "
                f"{shape} at {where}: give it to another optimizer (AdamW for embeddings, "
                f"heads and biases)"
            )

    jax.tree_util.tree_map_with_path(check, tree)


@schema.makes(MuonState, static=("ns_steps",))
def muon(
    lr: ScalarOrSchedule = 1e-3,
    weight_decay: float = 0.1,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315),
    eps: float = 1e-7,
    ns_steps: int = 5,
    adjust_lr_fn: str | None = None,
    *,
    skip_nonfinite: bool = False,
    state_dtype: Any | None = None,
    ns_dtype: Any = jnp.bfloat16,
) -> GradientTransformation:
    r"""Muon, as ``torch.optim.Muon``'s code computes it, for 2-D parameters.

    Per matrix, with gradient g, parameter θ of shape A×B, and torch's order::

        B_t = B_{t-1} + (1-μ)·(g - B_{t-1})          (torch's buf.lerp_(g, 1-μ); B_0 = 0)
        U   = g + μ·(B_t - g)  if nesterov, else B_t   (torch's g.lerp(B_t, μ))
        O   = NS_k^{(a,b,c)}(U; ε)                   (:func:`newton_schulz`, in ns_dtype)
        θ   ← θ·(1 - η·λ)                            (decoupled weight decay)
        θ_t = θ - η·r(A, B)·O,   r = sqrt(max(1, A/B))          (adjust_lr_fn "original")
                                    r = 0.2·sqrt(max(A, B))       ("match_rms_adamw")

    Args:
      lr: learning rate η (default 1e-3): a number, a 0-d array, or a schedule
        ``count -> η``.
      weight_decay: λ, decoupled (default 0.1); needs ``params`` in ``update``.
      momentum: μ (default 0.95).
      nesterov: Nesterov momentum (default True).
      ns_coefficients: (a, b, c) of the quintic iteration (default (3.4445,
        -4.775, 2.0315), Keller Jordan's).
      eps: ε, the least norm the iteration divides by (default 1e-7).
      ns_steps: k, the iterations (default 5; fewer than 100, as torch requires).
      adjust_lr_fn: ``None`` or ``"original"`` (default), or ``"match_rms_adamw"``.
      skip_nonfinite: a step whose gradients hold NaN or Inf changes nothing and
        counts into ``state.skipped`` (default False: they propagate, as in torch).
      state_dtype: dtype of B (default: each parameter's own).
      ns_dtype: the dtype the iteration runs in: ``jnp.bfloat16`` (default, as
        torch's), ``jnp.float32`` for an iteration that loses nothing to
        bfloat16, or ``None`` for the arithmetic's own (float32, or float64 for
        float64 parameters: torch's iteration without its cast to bfloat16).
        lucid_fx's own option.

    Returns:
      A :class:`GradientTransformation` whose state is :class:`MuonState`.
      ``init`` refuses a leaf that is not a real matrix (``ValueError``, as
      torch's constructor; complex: ``RuntimeError``).

    Equal-shape matrices of a tree share one batched iteration (one stack of
    matrix products, through ``jax.vmap``), with each matrix's own numbers. Where
    torch's code and docstring differ, this follows the code (the module says
    how). optax's ``optax.contrib.muon`` is another algorithm in its details (its
    own Nesterov form and scaling).

    Example:
      >>> import jax, jax.numpy as jnp, lucid_fx as fx
      >>> x = jax.random.normal(jax.random.key(0), (64, 16))
      >>> y = x @ jax.random.normal(jax.random.key(1), (16, 8))
      >>> loss = lambda p: jnp.mean((x @ p["w"] - y) ** 2)
      >>> tx = fx.muon(lr=0.05, weight_decay=0.0)
      >>> params = {"w": jnp.zeros((16, 8))}
      >>> state = tx.init(params)
      >>> @jax.jit
      ... def step(params, state):
      ...     updates, state = tx.update(jax.grad(loss)(params), state, params)
      ...     return fx.apply_updates(params, updates), state
      >>> for _ in range(100):
      ...     params, state = step(params, state)
      >>> bool(loss(params) < 0.05 * loss({"w": jnp.zeros((16, 8))}))
      True
    """
    check_hyperparameter("lr", lr)
    check_hyperparameter("momentum", momentum)
    check_hyperparameter("eps", eps)
    check_flag("nesterov", nesterov)
    if isinstance(ns_coefficients, (str, bytes)) or not isinstance(
            ns_coefficients, (tuple, list)) or len(ns_coefficients) != 3:
        raise ValueError(f"Invalid ns_coefficients value: {ns_coefficients!r} (expected three "
                         f"numbers (a, b, c))")
    for i, k in enumerate(ns_coefficients):
        check_hyperparameter(f"ns_coefficients[{i}]", k, low=None)
    if isinstance(ns_steps, bool) or not isinstance(ns_steps, (int, np.integer)) or not (
            0 <= ns_steps < 100):
        raise ValueError(f"Invalid ns_steps value: {ns_steps!r} (expected an integer in [0, "
                         f"100): fewer than 100 steps, as torch requires)")
    if adjust_lr_fn not in ADJUST_LR_FNS:
        raise ValueError(f"Invalid adjust_lr_fn value: {adjust_lr_fn!r} (expected None, "
                         f"'original' or 'match_rms_adamw')")
    check_float_dtype("ns_dtype", ns_dtype)
    if ns_dtype is not None and jnp.issubdtype(ns_dtype, jnp.complexfloating):
        raise ValueError(f"Invalid ns_dtype value: {ns_dtype!r} (expected None or a real "
                         f"floating-point dtype)")
    tx = kernel_transform(
        "muon", MuonState, muon_kernel,
        kernel_args=lambda state, t: dict(
            lr=scheduled(lr, state.step), momentum=momentum, nesterov=nesterov,
            ns_coefficients=tuple(ns_coefficients), ns_steps=int(ns_steps), eps=eps,
            adjust_lr_fn=adjust_lr_fn, ns_dtype=ns_dtype),
        weight_decay=WeightDecay(weight_decay, decoupled=True), complex_parts=False,
        maximize=False, skip_nonfinite=skip_nonfinite, state_dtype=state_dtype,
        batch_same_shapes=True,
    )

    def init(params: Params) -> MuonState:
        check_float_leaves("muon", params)
        check_matrices("Muon", params)  # torch's order: the shape first, then the dtype
        return tx.init(params)

    return GradientTransformation(init, tx.update)
