"""``fx.RMSprop``: Lucid's stateful RMSprop (docs/optimizers.md), a thin adapter over ``fx.rmsprop``."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import jax.numpy as jnp

from lucid_fx import torch_compat
from lucid_fx.optimizer import Optimizer, Params, StateDict
from lucid_fx.rmsprop import rmsprop


class RMSprop(Optimizer):
    r"""Root Mean Square Propagation optimizer, with torch's stateful interface.

    ``RMSprop(params, lr=0.01, alpha=0.99, eps=1e-08, weight_decay=0, momentum=0,
    centered=False, capturable=False, foreach=None, maximize=False, differentiable=False, *,
    skip_nonfinite=False, state_dtype=None)``: the page's signature, continued as torch
    2.13's.

    RMSprop keeps a running average of the squared gradient for each parameter
    and divides the gradient by its square root::

        v_t = α·v_{t-1} + (1-α)·g_t²
        θ_t = θ_{t-1} - η·g_t / (sqrt(v_t) + ε)

    With momentum, a velocity buffer b (η inside it, as Lucid's definition writes it)::

        b_t = μ·b_{t-1} + η·g_t / (sqrt(v_t) + ε)
        θ_t = θ_{t-1} - b_t

    The math is :func:`lucid_fx.rmsprop`'s (its docstring has the full box:
    weight decay, centered, maximize); this class only drives it. Defaults are
    the factory's, so the two faces cannot disagree.

    Parameters:
      params: an iterable of :class:`Parameter`, or of group dicts
        ``{"params": [...], "lr": ...}``.
      hyper-parameters: ``lr``, ``alpha``, ``eps``, ``weight_decay``, ``momentum``,
        ``centered``, ``maximize``, ``skip_nonfinite``, ``state_dtype``, as in
        :func:`lucid_fx.rmsprop`.

    Attributes:
      param_groups: list of dicts with ``params`` and every hyper-parameter; a
        number written here takes effect at the next ``step()`` without recompiling.
      defaults: the hyper-parameters given at construction (or their defaults).
      state: Parameter -> dict with ``step``, ``square_avg`` and, when used,
        ``grad_avg``, ``momentum_buffer`` and ``skipped``.

    Migrating from PyTorch: ``load_state_dict`` also takes
    ``torch.optim.RMSprop.state_dict()`` (same parameter order), and
    :meth:`torch_state_dict` exports one that torch loads; for a constant lr
    the run then continues as torch's would (:mod:`lucid_fx.torch_compat`).

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> model = {"w": fx.Parameter(jnp.zeros(3))}
      >>> loss_fn = lambda m: jnp.sum((m["w"] - 1.0) ** 2)
      >>> optimizer = fx.RMSprop(fx.parameters(model), lr=1e-1, alpha=0.99)
      >>> for _ in range(50):
      ...     optimizer.zero_grad()
      ...     loss = fx.backward(loss_fn, model)
      ...     optimizer.step()
      >>> bool(loss_fn({"w": model["w"].value}) < 1e-2)
      True
    """

    transform = staticmethod(rmsprop)
    skip_flag = "skip_nonfinite"

    # torch 2.13's signature, spelled out for IDEs and type checkers; a test checks it
    # against torch's and the factory's.
    def __init__(
        self,
        params: Params,
        lr: float = 0.01,
        alpha: float = 0.99,
        eps: float = 1e-08,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        skip_nonfinite: bool = False,
        state_dtype: Any | None = None,
    ) -> None:
        super().__init__(
            params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
            centered=centered, capturable=capturable, foreach=foreach, maximize=maximize,
            differentiable=differentiable, skip_nonfinite=skip_nonfinite,
            state_dtype=state_dtype,
        )

    never_negative = MappingProxyType(
        {"step": "a step count", "square_avg": "an average of squares"})
    # torch keeps lr out of the momentum buffer: b = lr·b_torch (lucid_fx.torch_compat).
    torch_buffer_from = staticmethod(torch_compat.rmsprop_buffer_from_torch)
    torch_buffer_to = staticmethod(torch_compat.rmsprop_buffer_to_torch)

    def torch_state_dict(self, param_names: torch_compat.ParamNames | None = None) -> StateDict:
        """This optimizer's state in the form ``torch.optim.RMSprop.load_state_dict`` takes.

        As :meth:`Optimizer.torch_state_dict`, with momentum buffers ``b / lr``.
        Raises ``ValueError`` for an lr of 0 with a non-zero buffer, a schedule,
        or a complex parameter (torch treats its parts as separate elements).
        """
        for i, p in enumerate(self._indexed_params()):
            if jnp.issubdtype(p.dtype, jnp.complexfloating):
                raise ValueError(
                    f"parameter {i} {p!r} is complex: torch's RMSprop treats its real and "
                    f"imaginary parts as separate elements, so the state does not convert"
                )
        return super().torch_state_dict(param_names)
