"""``fx.Adagrad``: torch's stateful Adagrad, a declaration over ``fx.adagrad``."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from lucid_fx.adagrad import adagrad
from lucid_fx.optimizer import Optimizer, Params


class Adagrad(Optimizer):
    r"""Adagrad, with torch's stateful interface.

    ``Adagrad(params, lr=0.01, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
    eps=1e-10, foreach=None, *, maximize=False, differentiable=False, fused=None,
    skip_nonfinite=False, state_dtype=None)``: torch 2.13's signature. Per element, with
    step t and s_0 = initial_accumulator_value::

        g ← g + λ·θ;   s_t = s_{t-1} + g²
        θ_t = θ_{t-1} - η/(1 + (t-1)·δ) · g / (sqrt(s_t) + ε)

    The math is :func:`lucid_fx.adagrad`'s; this class only drives it. State
    (``step``, ``sum``) appears for a Parameter at its first step, where torch
    creates it when the optimizer is built; and each group's sums start at that
    group's ``initial_accumulator_value``, where torch uses the constructor's
    value for every group.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> model = {"w": fx.Parameter(jnp.zeros(3))}
      >>> loss_fn = lambda m: jnp.sum((m["w"] - 1.0) ** 2)  # one function: compiled once
      >>> optimizer = fx.Adagrad(fx.parameters(model), lr=1.0)
      >>> for _ in range(100):
      ...     optimizer.zero_grad()
      ...     loss = fx.backward(loss_fn, model)
      ...     optimizer.step()
      >>> bool(loss < 1e-3)
      True
    """

    transform = staticmethod(adagrad)
    skip_flag = "skip_nonfinite"
    # As the functional face does for a Python 0: no θ read, no division by 1.
    compiled_out_at_zero = ("weight_decay", "lr_decay")
    never_negative = MappingProxyType({"step": "a step count", "sum": "a sum of squares"})

    # torch 2.13's signature, spelled out for IDEs and type checkers; a test checks it
    # against torch's and the factory's.
    def __init__(
        self,
        params: Params,
        lr: float = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        skip_nonfinite: bool = False,
        state_dtype: Any | None = None,
    ) -> None:
        super().__init__(
            params, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value, eps=eps, foreach=foreach,
            maximize=maximize, differentiable=differentiable, fused=fused,
            skip_nonfinite=skip_nonfinite, state_dtype=state_dtype,
        )
