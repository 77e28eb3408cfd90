"""``fx.Adamax``: torch's stateful Adamax, a declaration over ``fx.adamax``."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from lucid_fx.adamax import adamax
from lucid_fx.optimizer import Optimizer, Params


class Adamax(Optimizer):
    r"""Adamax (Adam with the infinity norm), with torch's stateful interface.

    ``Adamax(params, lr=0.002, betas=(0.9, 0.999), eps=1e-08, weight_decay=0, foreach=None,
    *, maximize=False, differentiable=False, capturable=False, skip_nonfinite=False,
    state_dtype=None)``: torch 2.13's signature. Per element, with step t::

        g ← g + λ·θ;   m_t = β₁·m_{t-1} + (1-β₁)·g;   u_t = max(β₂·u_{t-1}, |g| + ε)
        θ_t = θ_{t-1} - η/(1-β₁^t) · m_t / u_t

    The math is :func:`lucid_fx.adamax`'s; this class only drives it.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> model = {"w": fx.Parameter(jnp.zeros(3))}
      >>> loss_fn = lambda m: jnp.sum((m["w"] - 1.0) ** 2)  # one function: compiled once
      >>> optimizer = fx.Adamax(fx.parameters(model), lr=0.1)
      >>> for _ in range(200):
      ...     optimizer.zero_grad()
      ...     loss = fx.backward(loss_fn, model)
      ...     optimizer.step()
      >>> bool(loss < 1e-3)
      True
    """

    transform = staticmethod(adamax)
    skip_flag = "skip_nonfinite"
    never_negative = MappingProxyType({"step": "a step count", "exp_inf": "a maximum of |g| + eps"})

    # torch 2.13's signature, spelled out for IDEs and type checkers; a test checks it
    # against torch's and the factory's.
    def __init__(
        self,
        params: Params,
        lr: float = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
        skip_nonfinite: bool = False,
        state_dtype: Any | None = None,
    ) -> None:
        super().__init__(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=foreach,
            maximize=maximize, differentiable=differentiable, capturable=capturable,
            skip_nonfinite=skip_nonfinite, state_dtype=state_dtype,
        )
