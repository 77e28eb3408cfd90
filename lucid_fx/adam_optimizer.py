"""``fx.Adam`` and ``fx.AdamW``: torch's stateful Adam and AdamW, declarations over ``fx.adam``."""

from __future__ import annotations

from typing import Any

from lucid_fx.adam import adam, adamw
from lucid_fx.optimizer import Optimizer, Params


class Adam(Optimizer):
    r"""Adam, with torch's stateful interface.

    ``Adam(params, lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0, amsgrad=False,
    *, foreach=None, maximize=False, capturable=False, differentiable=False, fused=None,
    decoupled_weight_decay=False, skip_nonfinite=False, state_dtype=None)``: torch 2.13's
    signature. Per element, with step t counted per parameter (as torch's ``state["step"]``)::

        g ← g + λ·θ   (or, decoupled: θ ← θ·(1 - η·λ))
        m_t = β₁·m_{t-1} + (1-β₁)·g;   v_t = β₂·v_{t-1} + (1-β₂)·g²
        θ_t = θ - (η / (1-β₁^t)) · m_t / (sqrt(max(v̂_{t-1}, v_t) if amsgrad else v_t)
                                          / sqrt(1-β₂^t) + ε)

    The math is :func:`lucid_fx.adam`'s; this class only drives it. The state
    per Parameter has torch's keys: ``step``, ``exp_avg``, ``exp_avg_sq`` and,
    with amsgrad, ``max_exp_avg_sq``.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> model = {"w": fx.Parameter(jnp.zeros(3))}
      >>> loss_fn = lambda m: jnp.sum((m["w"] - 1.0) ** 2)  # one function: compiled once
      >>> optimizer = fx.Adam(fx.parameters(model), lr=0.1)
      >>> for _ in range(200):
      ...     optimizer.zero_grad()
      ...     loss = fx.backward(loss_fn, model)
      ...     optimizer.step()
      >>> bool(loss < 1e-3), int(optimizer.state[model["w"]]["step"])
      (True, 200)
    """

    transform = staticmethod(adam)
    skip_flag = "skip_nonfinite"

    # torch 2.13's signature, spelled out for IDEs and type checkers; a test checks it
    # against torch's and the factory's.
    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        skip_nonfinite: bool = False,
        state_dtype: Any | None = None,
    ) -> None:
        super().__init__(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
            foreach=foreach, maximize=maximize, capturable=capturable,
            differentiable=differentiable, fused=fused,
            decoupled_weight_decay=decoupled_weight_decay, skip_nonfinite=skip_nonfinite,
            state_dtype=state_dtype,
        )


class AdamW(Optimizer):
    r"""AdamW, with torch's stateful interface: :class:`Adam` with decoupled weight decay.

    ``AdamW(params, lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.01,
    amsgrad=False, *, maximize=False, foreach=None, capturable=False, differentiable=False,
    fused=None, skip_nonfinite=False, state_dtype=None)``. Per element: θ ← θ·(1 - η·λ),
    then Adam's step without λ in m or v. The math is :func:`lucid_fx.adamw`'s.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> w = fx.Parameter(jnp.full(2, 2.0))
      >>> optimizer = fx.AdamW([w], lr=0.1, weight_decay=0.5)
      >>> w.grad = jnp.zeros(2)
      >>> optimizer.step()
      >>> w.value.tolist()  # 2·(1 - 0.1·0.5): decay only, g = 0
      [1.899999976158142, 1.899999976158142]
    """

    transform = staticmethod(adamw)
    skip_flag = "skip_nonfinite"

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        skip_nonfinite: bool = False,
        state_dtype: Any | None = None,
    ) -> None:
        super().__init__(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
            maximize=maximize, foreach=foreach, capturable=capturable,
            differentiable=differentiable, fused=fused, skip_nonfinite=skip_nonfinite,
            state_dtype=state_dtype,
        )
