"""The stateful optimizers: torch's classes, each a declaration over its functional transform.

Each class names its transform factory (the math, in :mod:`lucid_fx._src.transforms`) and
spells out torch 2.13's signature for IDEs and type checkers; everything else — param
groups, packed storage, the compiled step, state dicts, hooks — is
:class:`~lucid_fx._src.stateful.optimizer.Optimizer`'s. A test checks each signature
against torch's and each default against the factory's.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lucid_fx._src.stateful.optimizer import Optimizer, Params
from lucid_fx._src.stateful.parameter import Parameter
from lucid_fx._src.transforms.adadelta import adadelta
from lucid_fx._src.transforms.adafactor import adafactor
from lucid_fx._src.transforms.adagrad import adagrad
from lucid_fx._src.transforms.adam import adam, adamw
from lucid_fx._src.transforms.adamax import adamax
from lucid_fx._src.transforms.asgd import asgd
from lucid_fx._src.transforms.muon import check_matrices, muon
from lucid_fx._src.transforms.nadam import nadam
from lucid_fx._src.transforms.radam import radam
from lucid_fx._src.transforms.rmsprop import rmsprop
from lucid_fx._src.transforms.rprop import rprop
from lucid_fx._src.transforms.sgd import sgd


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
    the run then continues as torch's would (:mod:`lucid_fx._src.interop.torch`).

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
    # As the functional face does for a Python 0: no θ read, no division by 1.
    compiled_out_at_zero = ("weight_decay", "lr_decay")

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


class Muon(Optimizer):
    r"""Muon, with torch's stateful interface, for the 2-D parameters of hidden layers.

    ``Muon(params, lr=0.001, weight_decay=0.1, momentum=0.95, nesterov=True,
    ns_coefficients=(3.4445, -4.775, 2.0315), eps=1e-07, ns_steps=5, adjust_lr_fn=None, *,
    skip_nonfinite=False, state_dtype=None, ns_dtype=bfloat16)``: torch 2.13's signature,
    then lucid_fx's own options. Per matrix, in torch's order::

        B ← B + (1-μ)·(g - B);   U = g + μ·(B - g) if nesterov else B
        θ ← θ·(1 - η·λ) - η·r(shape)·NS(U)

    The math is :func:`lucid_fx.muon`'s (its docstring has the Newton–Schulz box);
    this class only drives it. As torch's, it refuses a Parameter that is not a
    matrix: give embeddings, heads and biases to another optimizer (torch's
    recipe: AdamW). Matrices of one shape share one stack, and one batched
    Newton–Schulz per step. The state per Parameter has torch's key:
    ``momentum_buffer``.

    Example:
      >>> import jax, jax.numpy as jnp, lucid_fx as fx
      >>> x = jax.random.normal(jax.random.key(0), (64, 16))
      >>> y = x @ jax.random.normal(jax.random.key(1), (16, 8))
      >>> model = {"w": fx.Parameter(jnp.zeros((16, 8))), "b": fx.Parameter(jnp.zeros(8))}
      >>> loss_fn = lambda m: jnp.mean((x @ m["w"] + m["b"] - y) ** 2)
      >>> hidden = fx.Muon([model["w"]], lr=0.05, weight_decay=0.0)
      >>> rest = fx.AdamW([model["b"]], lr=1e-2)
      >>> for _ in range(100):
      ...     hidden.zero_grad(); rest.zero_grad()
      ...     loss = fx.backward(loss_fn, model)
      ...     hidden.step(); rest.step()
      >>> bool(loss < 0.05 * loss_fn({"w": jnp.zeros((16, 8)), "b": jnp.zeros(8)}))
      True
    """

    transform = staticmethod(muon)

    # torch 2.13's signature, spelled out for IDEs and type checkers; a test checks it
    # against torch's and the factory's.
    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315),
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
        *,
        skip_nonfinite: bool = False,
        state_dtype: Any | None = None,
        ns_dtype: Any = jnp.bfloat16,
    ) -> None:
        super().__init__(
            params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
            ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps,
            adjust_lr_fn=adjust_lr_fn, skip_nonfinite=skip_nonfinite, state_dtype=state_dtype,
            ns_dtype=ns_dtype,
        )

    def _check_parameters(self, params: list[Parameter]) -> None:
        super()._check_parameters(params)
        check_matrices("Muon", [jax.ShapeDtypeStruct(p.shape, p.dtype) for p in params])


class Adafactor(Optimizer):
    r"""Adafactor, with torch's stateful interface.

    ``Adafactor(params, lr=0.01, beta2_decay=-0.8, eps=(None, 0.001), d=1.0,
    weight_decay=0.0, *, foreach=None, maximize=False, skip_nonfinite=False,
    state_dtype=None)``: torch 2.13's signature. Per parameter, with step t::

        α_t = max(ε₂, RMS(θ))·min(η, 1/sqrt(t));   θ ← θ·(1 - η·λ)
        2+ dimensions: R, C ← lerp(R, C, row and column means of g², t^τ);  V̂ = R·C/max(mean R, ε₁)
        otherwise:     V ← lerp(V, g², t^τ);  V̂ = V
        U = g / sqrt(max(V̂, ε₁²));   θ_t = θ - α_t·U / max(1, RMS(U)/d)

    The math is :func:`lucid_fx.adafactor`'s; this class only drives it. The
    state per Parameter has torch's keys: ``step`` and ``row_var``/``col_var`` (two
    or more dimensions) or ``variance``. Parameters of one shape share one stack.

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> model = {"w": fx.Parameter(jnp.ones((4, 3))), "b": fx.Parameter(jnp.ones(3))}
      >>> loss_fn = lambda m: jnp.sum((m["w"] - 3.0) ** 2) + jnp.sum(m["b"] ** 2)
      >>> optimizer = fx.Adafactor(fx.parameters(model), lr=0.1)
      >>> for _ in range(100):
      ...     optimizer.zero_grad()
      ...     loss = fx.backward(loss_fn, model)
      ...     optimizer.step()
      >>> bool(loss < 1e-2), sorted(optimizer.state[model["w"]])
      (True, ['col_var', 'row_var', 'step'])
    """

    transform = staticmethod(adafactor)

    # torch 2.13's signature, spelled out for IDEs and type checkers; a test checks it
    # against torch's and the factory's.
    def __init__(
        self,
        params: Params,
        lr: float = 1e-2,
        beta2_decay: float = -0.8,
        eps: tuple[float | None, float] = (None, 1e-3),
        d: float = 1.0,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        skip_nonfinite: bool = False,
        state_dtype: Any | None = None,
    ) -> None:
        super().__init__(
            params, lr=lr, beta2_decay=beta2_decay, eps=eps, d=d, weight_decay=weight_decay,
            foreach=foreach, maximize=maximize, skip_nonfinite=skip_nonfinite,
            state_dtype=state_dtype,
        )
