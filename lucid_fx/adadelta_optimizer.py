"""``fx.Adadelta``: torch's stateful Adadelta, a declaration over ``fx.adadelta``."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from lucid_fx.adadelta import adadelta
from lucid_fx.optimizer import Optimizer, Params


class Adadelta(Optimizer):
    r"""Adadelta, with torch's stateful interface.

    ``Adadelta(params, lr=1.0, rho=0.9, eps=1e-06, weight_decay=0, foreach=None, *,
    capturable=False, maximize=False, differentiable=False, skip_nonfinite=False,
    state_dtype=None)``: torch 2.13's signature. Per element::

        g ← g + λ·θ;   v_t = ρ·v_{t-1} + (1-ρ)·g²
        Δx = sqrt(u_{t-1} + ε) / sqrt(v_t + ε) · g;   u_t = ρ·u_{t-1} + (1-ρ)·Δx²
        θ_t = θ_{t-1} - η·Δx

    The math is :func:`lucid_fx.adadelta`'s; this class only drives it.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> model = {"w": fx.Parameter(jnp.zeros(3))}
      >>> loss_fn = lambda m: jnp.sum((m["w"] - 1.0) ** 2)  # one function: compiled once
      >>> optimizer = fx.Adadelta(fx.parameters(model), eps=1e-2)
      >>> for _ in range(300):
      ...     optimizer.zero_grad()
      ...     loss = fx.backward(loss_fn, model)
      ...     optimizer.step()
      >>> bool(loss < 1e-2)
      True
    """

    transform = staticmethod(adadelta)
    skip_flag = "skip_nonfinite"
    never_negative = MappingProxyType({"step": "a step count",
                                       "square_avg": "an average of squares",
                                       "acc_delta": "an average of squares"})

    # torch 2.13's signature, spelled out for IDEs and type checkers; a test checks it
    # against torch's and the factory's.
    def __init__(
        self,
        params: Params,
        lr: float = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        capturable: bool = False,
        maximize: bool = False,
        differentiable: bool = False,
        skip_nonfinite: bool = False,
        state_dtype: Any | None = None,
    ) -> None:
        super().__init__(
            params, lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, foreach=foreach,
            capturable=capturable, maximize=maximize, differentiable=differentiable,
            skip_nonfinite=skip_nonfinite, state_dtype=state_dtype,
        )
