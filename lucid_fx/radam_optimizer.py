"""``fx.RAdam``: torch's stateful RAdam, a declaration over ``fx.radam``."""

from __future__ import annotations

from typing import Any

from lucid_fx.optimizer import Optimizer, Params
from lucid_fx.radam import radam


class RAdam(Optimizer):
    r"""RAdam (rectified Adam), with torch's stateful interface.

    ``RAdam(params, lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0,
    decoupled_weight_decay=False, *, foreach=None, maximize=False, capturable=False,
    differentiable=False, skip_nonfinite=False, state_dtype=None)``: torch 2.13's signature.
    Per element, with step t counted per parameter (torch's ``state["step"]``)::

        g ← g + λ·θ   (or, decoupled: θ ← θ·(1 - η·λ))
        m_t = β₁·m_{t-1} + (1-β₁)·g;   v_t = β₂·v_{t-1} + (1-β₂)·g²;   m̂_t = m_t/(1-β₁^t)
        ρ_∞ = 2/(1-β₂) - 1;   ρ_t = ρ_∞ - 2t·β₂^t/(1-β₂^t)
        ρ_t > 5:  θ_t = θ - η·m̂_t·r_t·sqrt(1-β₂^t)/(sqrt(v_t) + ε),
                  r_t = sqrt((ρ_t-4)(ρ_t-2)ρ_∞ / ((ρ_∞-4)(ρ_∞-2)ρ_t))
        otherwise: θ_t = θ - η·m̂_t

    The math is :func:`lucid_fx.radam`'s; this class only drives it. The state
    per Parameter has torch's keys: ``step``, ``exp_avg`` and ``exp_avg_sq``.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> model = {"w": fx.Parameter(jnp.zeros(3))}
      >>> loss_fn = lambda m: jnp.sum((m["w"] - 1.0) ** 2)  # one function: compiled once
      >>> optimizer = fx.RAdam(fx.parameters(model), lr=0.1)
      >>> for _ in range(200):
      ...     optimizer.zero_grad()
      ...     loss = fx.backward(loss_fn, model)
      ...     optimizer.step()
      >>> bool(loss < 1e-3), int(optimizer.state[model["w"]]["step"])
      (True, 200)
    """

    transform = staticmethod(radam)
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
            decoupled_weight_decay=decoupled_weight_decay, foreach=foreach, maximize=maximize,
            capturable=capturable, differentiable=differentiable, skip_nonfinite=skip_nonfinite,
            state_dtype=state_dtype,
        )
