"""``fx.Rprop``: torch's stateful Rprop, a declaration over ``fx.rprop``."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from lucid_fx.optimizer import Optimizer, Params
from lucid_fx.rprop import rprop


class Rprop(Optimizer):
    r"""Rprop (resilient backpropagation), with torch's stateful interface.

    ``Rprop(params, lr=0.01, etas=(0.5, 1.2), step_sizes=(1e-06, 50), *, capturable=False,
    foreach=None, maximize=False, differentiable=False, skip_nonfinite=False,
    state_dtype=None)``: torch 2.13's signature. Per element, with step size s (s_0 = lr)
    and the previous gradient g_prev::

        g·g_prev > 0: s ← min(s·η₊, Γ_max);   g·g_prev < 0: s ← max(s·η₋, Γ_min), g ← 0
        θ_t = θ_{t-1} - s·sign(g);   g_prev ← g

    The math is :func:`lucid_fx.rprop`'s; this class only drives it. As in
    torch, ``lr`` is only the step size each Parameter starts with: a new value
    written into ``param_groups`` later leaves step sizes under way alone.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> model = {"w": fx.Parameter(jnp.zeros(3))}
      >>> loss_fn = lambda m: jnp.sum((m["w"] - 1.0) ** 2)  # one function: compiled once
      >>> optimizer = fx.Rprop(fx.parameters(model), lr=0.1)
      >>> for _ in range(100):
      ...     optimizer.zero_grad()
      ...     loss = fx.backward(loss_fn, model)
      ...     optimizer.step()
      >>> bool(loss < 1e-3)
      True
    """

    transform = staticmethod(rprop)
    skip_flag = "skip_nonfinite"
    never_negative = MappingProxyType({"step": "a step count", "step_size": "a step size"})

    # torch 2.13's signature, spelled out for IDEs and type checkers; a test checks it
    # against torch's and the factory's.
    def __init__(
        self,
        params: Params,
        lr: float = 1e-2,
        etas: tuple[float, float] = (0.5, 1.2),
        step_sizes: tuple[float, float] = (1e-6, 50),
        *,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        skip_nonfinite: bool = False,
        state_dtype: Any | None = None,
    ) -> None:
        super().__init__(
            params, lr=lr, etas=etas, step_sizes=step_sizes, capturable=capturable,
            foreach=foreach, maximize=maximize, differentiable=differentiable,
            skip_nonfinite=skip_nonfinite, state_dtype=state_dtype,
        )
