"""``fx.ASGD``: torch's stateful averaged SGD, a declaration over ``fx.asgd``."""

from __future__ import annotations

from typing import Any

from lucid_fx.asgd import asgd
from lucid_fx.optimizer import Optimizer, Params


class ASGD(Optimizer):
    r"""Averaged SGD, with torch's stateful interface.

    ``ASGD(params, lr=0.01, lambd=0.0001, alpha=0.75, t0=1000000.0, weight_decay=0,
    foreach=None, maximize=False, differentiable=False, capturable=False, *,
    skip_nonfinite=False, state_dtype=None)``: torch 2.13's signature. Per element, with
    step t, η and μ kept per parameter (torch's ``state["step"]``, ``state["eta"]``,
    ``state["mu"]``; η_0 = lr, μ_0 = 1)::

        g ← g + λ_wd·θ;   θ_t = θ·(1 - λ·η_{t-1}) - η_{t-1}·g
        ax_t = θ_t while μ_{t-1} = 1, else ax_{t-1} + μ_{t-1}·(θ_t - ax_{t-1})
        η_t = lr / (1 + λ·lr·t)^α;   μ_t = 1 / max(1, t - t0)

    The math is :func:`lucid_fx.asgd`'s; this class only drives it. The state
    per Parameter has torch's keys: ``step``, ``eta``, ``mu`` and ``ax`` (the
    average of the iterates, the result to read once training ends).

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> model = {"w": fx.Parameter(jnp.zeros(3))}
      >>> loss_fn = lambda m: jnp.sum((m["w"] - 1.0) ** 2)  # one function: compiled once
      >>> optimizer = fx.ASGD(fx.parameters(model), lr=0.1, t0=50)
      >>> for _ in range(200):
      ...     optimizer.zero_grad()
      ...     loss = fx.backward(loss_fn, model)
      ...     optimizer.step()
      >>> bool(loss < 1e-3), jnp.round(optimizer.state[model["w"]]["ax"], 3).tolist()
      (True, [1.0, 1.0, 1.0])
    """

    transform = staticmethod(asgd)
    skip_flag = "skip_nonfinite"

    # torch 2.13's signature, spelled out for IDEs and type checkers; a test checks it
    # against torch's and the factory's.
    def __init__(
        self,
        params: Params,
        lr: float = 1e-2,
        lambd: float = 1e-4,
        alpha: float = 0.75,
        t0: float = 1e6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
        *,
        skip_nonfinite: bool = False,
        state_dtype: Any | None = None,
    ) -> None:
        super().__init__(
            params, lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay,
            foreach=foreach, maximize=maximize, differentiable=differentiable,
            capturable=capturable, skip_nonfinite=skip_nonfinite, state_dtype=state_dtype,
        )
