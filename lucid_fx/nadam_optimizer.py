"""``fx.NAdam``: torch's stateful NAdam, a declaration over ``fx.nadam``."""

from __future__ import annotations

from typing import Any

from lucid_fx.nadam import nadam
from lucid_fx.optimizer import Optimizer, Params


class NAdam(Optimizer):
    r"""NAdam (Adam with Nesterov momentum), with torch's stateful interface.

    ``NAdam(params, lr=0.002, betas=(0.9, 0.999), eps=1e-08, weight_decay=0,
    momentum_decay=0.004, decoupled_weight_decay=False, *, foreach=None, maximize=False,
    capturable=False, differentiable=False, skip_nonfinite=False, state_dtype=None)``: torch
    2.13's signature. Per element, with step t and Π_t = μ_1···μ_t counted per parameter
    (torch's ``state["step"]`` and ``state["mu_product"]``)::

        g ← g + λ·θ   (or, decoupled: θ ← θ·(1 - η·λ))
        μ_t = β₁·(1 - ½·0.96^(tψ));   m_t = β₁·m_{t-1} + (1-β₁)·g;   v_t = β₂·v_{t-1} + (1-β₂)·g²
        θ_t = θ - η·(μ_{t+1}·m_t/(1 - Π_t·μ_{t+1}) + (1-μ_t)·g/(1 - Π_t))
                  / (sqrt(v_t/(1-β₂^t)) + ε)

    The math is :func:`lucid_fx.nadam`'s; this class only drives it. The state
    per Parameter has torch's keys: ``step``, ``mu_product``, ``exp_avg`` and
    ``exp_avg_sq``.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> model = {"w": fx.Parameter(jnp.zeros(3))}
      >>> loss_fn = lambda m: jnp.sum((m["w"] - 1.0) ** 2)  # one function: compiled once
      >>> optimizer = fx.NAdam(fx.parameters(model), lr=0.1)
      >>> for _ in range(200):
      ...     optimizer.zero_grad()
      ...     loss = fx.backward(loss_fn, model)
      ...     optimizer.step()
      >>> bool(loss < 1e-3), int(optimizer.state[model["w"]]["step"])
      (True, 200)
    """

    transform = staticmethod(nadam)
    skip_flag = "skip_nonfinite"

    # torch 2.13's signature, spelled out for IDEs and type checkers; a test checks it
    # against torch's and the factory's.
    def __init__(
        self,
        params: Params,
        lr: float = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum_decay: float = 4e-3,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        skip_nonfinite: bool = False,
        state_dtype: Any | None = None,
    ) -> None:
        super().__init__(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
            momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
            foreach=foreach, maximize=maximize, capturable=capturable,
            differentiable=differentiable, skip_nonfinite=skip_nonfinite,
            state_dtype=state_dtype,
        )
