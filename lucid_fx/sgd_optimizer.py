"""``fx.SGD``: torch's stateful SGD, a declaration over ``fx.sgd``."""

from __future__ import annotations

from typing import Any

from lucid_fx.optimizer import Optimizer, Params
from lucid_fx.sgd import sgd


class SGD(Optimizer):
    r"""Stochastic gradient descent with momentum, with torch's stateful interface.

    ``SGD(params, lr=0.001, momentum=0, dampening=0, weight_decay=0, nesterov=False, *,
    maximize=False, foreach=None, differentiable=False, fused=None, skip_nonfinite=False,
    state_dtype=None)``: torch 2.13's signature. Per element, with b_1 = g at the first step::

        g ← g + λ·θ;   b_t = μ·b_{t-1} + (1-τ)·g;   g ← g + μ·b_t (nesterov) or b_t
        θ_t = θ_{t-1} - η·g

    The math is :func:`lucid_fx.sgd`'s; this class only drives it.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> model = {"w": fx.Parameter(jnp.zeros(3))}
      >>> loss_fn = lambda m: jnp.sum((m["w"] - 1.0) ** 2)  # one function: compiled once
      >>> optimizer = fx.SGD(fx.parameters(model), lr=0.1, momentum=0.9)
      >>> for _ in range(100):
      ...     optimizer.zero_grad()
      ...     loss = fx.backward(loss_fn, model)
      ...     optimizer.step()
      >>> bool(loss < 1e-3)
      True
    """

    transform = staticmethod(sgd)
    skip_flag = "skip_nonfinite"

    # torch 2.13's signature, spelled out for IDEs and type checkers; a test checks it
    # against torch's and the factory's.
    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        skip_nonfinite: bool = False,
        state_dtype: Any | None = None,
    ) -> None:
        super().__init__(
            params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
            nesterov=nesterov, maximize=maximize, foreach=foreach,
            differentiable=differentiable, fused=fused, skip_nonfinite=skip_nonfinite,
            state_dtype=state_dtype,
        )
