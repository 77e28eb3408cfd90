"""Independent NumPy float64 references of the shape-aware optimizers: Muon and Adafactor.

Nothing here imports lucid_fx. Each step reads a whole array (a matrix's
orthogonalisation, a matrix's row and column means), so the references work array
by array, with the formulas of torch 2.13's documentation, and, where torch's code
computes something else, with the code's (its numbers are what a torch checkpoint
holds); the differences are named where they occur.

Muon, per matrix θ of A×B, gradient g, η = lr(t - 1), λ = weight_decay, μ = momentum::

    B_t = μ·B_{t-1} + (1-μ)·g          (the code's lerp; the docs write μ·B + g)
    U   = g + μ·(B_t - g) if nesterov else B_t      (the docs write g + μ·B_t)
    X   = U / max(‖U‖_F, ε)             (Uᵀ first if A > B; the code clamps, not adds)
    k times:  S = X·Xᵀ;  X = a·X + (b·S + c·S²)·X
    θ_t = θ·(1 - η·λ) - η·r·X           (Xᵀ back if A > B)
    r = sqrt(max(1, A/B)), or 0.2·sqrt(max(A, B)) for adjust_lr_fn="match_rms_adamw"

Adafactor, per array θ with n elements, step t (1 at the first), τ = beta2_decay::

    g ← -g (maximize);  β̂ = t^τ;  ρ = min(η, 1/sqrt(t));  α = max(ε₂, RMS(θ))·ρ
    θ ← θ - η·λ·θ
    2+ dims: R = (1-β̂)·R + β̂·mean_cols(g²);  C = (1-β̂)·C + β̂·mean_rows(g²)
             V̂ = R·Cᵀ / max(mean(R), ε₁)
             (the docs write row sums and 1ᵀR; the code's means give the same V̂
             wherever ε₁ does not bind, and are what row_var and col_var hold)
    else:    V = (1-β̂)·V + β̂·g²;  V̂ = V
    U = g / max(sqrt(V̂), ε₁);  θ_t = θ - α·U / max(1, RMS(U)/d)

with ε₁ the machine epsilon of the parameters' dtype when ``eps[0]`` is None
(:data:`EPS_FLOAT32` for float32 runs).

Example:
  >>> import numpy as np
  >>> ortho = newton_schulz(np.diag([3.0, 1.0]), (2.0, -1.5, 0.5), 20, 1e-7)
  >>> np.round(ortho, 6).tolist()   # the cubic iteration converges to the polar factor
  [[1.0, 0.0], [0.0, 1.0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from reference import LrSpec, lr_at

EPS_FLOAT32 = float(np.finfo(np.float32).eps)


def newton_schulz(u: np.ndarray, coefficients: Sequence[float], steps: int,
                  eps: float) -> np.ndarray:
    """k quintic Newton–Schulz iterations on U in float64 (the box above)."""
    a, b, c = (float(k) for k in coefficients)
    x = np.array(u, np.float64)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / max(float(np.linalg.norm(x)), eps)
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return x.T if tall else x


def muon_reference(
    params: Sequence[Any],
    grads_seq: Sequence[Sequence[Any]],
    *,
    lr: LrSpec = 1e-3,
    weight_decay: float = 0.1,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_coefficients: Sequence[float] = (3.4445, -4.775, 2.0315),
    eps: float = 1e-7,
    ns_steps: int = 5,
    adjust_lr_fn: str | None = None,
) -> tuple[list[list[np.ndarray]], dict[str, Any]]:
    """Muon over ``grads_seq`` in float64; ``final_state`` has ``momentum_buffer``.

    Example:
      >>> history, state = muon_reference([np.zeros((1, 2))], [[np.array([[3.0, 4.0]])]],
      ...                                 lr=0.5, momentum=0.0, nesterov=False, ns_steps=0)
      >>> history[0][0].tolist()   # k = 0: the step is -η·g/‖g‖
      [[-0.3, -0.4]]
    """
    theta = [np.array(p, np.float64) for p in params]
    buffers = [np.zeros_like(x) for x in theta]
    history = []
    for t, grads in enumerate(grads_seq):
        eta = lr_at(lr, t)
        for i, grad in enumerate(grads):
            g = np.array(grad, np.float64)
            buffers[i] = momentum * buffers[i] + (1 - momentum) * g
            u = g + momentum * (buffers[i] - g) if nesterov else buffers[i]
            rows, cols = theta[i].shape
            ratio = (0.2 * np.sqrt(max(rows, cols)) if adjust_lr_fn == "match_rms_adamw"
                     else np.sqrt(max(1.0, rows / cols)))
            ortho = newton_schulz(u, ns_coefficients, ns_steps, eps)
            theta[i] = theta[i] * (1 - eta * weight_decay) - eta * ratio * ortho
        history.append([x.copy() for x in theta])
    return history, {"step": len(grads_seq), "momentum_buffer": buffers}


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) if x.size else 0.0


def adafactor_reference(
    params: Sequence[Any],
    grads_seq: Sequence[Sequence[Any]],
    *,
    lr: LrSpec = 1e-2,
    beta2_decay: float = -0.8,
    eps: tuple[float | None, float] = (None, 1e-3),
    d: float = 1.0,
    weight_decay: float = 0.0,
    maximize: bool = False,
    machine_eps: float = EPS_FLOAT32,
) -> tuple[list[list[np.ndarray]], dict[str, Any]]:
    """Adafactor over ``grads_seq`` in float64; ``final_state`` has ``step`` and, per
    parameter, ``row_var`` and ``col_var`` (2+ dimensions, torch's keepdim shapes) or
    ``variance`` (``None`` where a parameter has no such field).

    ``machine_eps`` is ε₁ when ``eps[0]`` is None: the machine epsilon of the dtype
    the compared run uses (float32's by default).

    Example:
      >>> history, state = adafactor_reference([np.ones(2)], [[np.array([2.0, -2.0])]], lr=0.5,
      ...                                      eps=(0.0, 1e-3))
      >>> history[0][0].tolist(), state["variance"][0].tolist()   # U = sign(g); α = 1·0.5
      ([0.5, 1.5], [4.0, 4.0])
    """
    eps1 = machine_eps if eps[0] is None else float(eps[0])
    eps2 = float(eps[1])
    theta = [np.array(p, np.float64) for p in params]
    matrix = [x.ndim >= 2 for x in theta]
    rows = [np.zeros((*x.shape[:-1], 1)) if m else None for x, m in zip(theta, matrix)]
    cols = [np.zeros((*x.shape[:-2], 1, x.shape[-1])) if m else None
            for x, m in zip(theta, matrix)]
    variance = [None if m else np.zeros_like(x) for x, m in zip(theta, matrix)]
    history = []
    for t, grads in enumerate(grads_seq, start=1):
        eta = lr_at(lr, t - 1)
        beta_hat = float(t) ** beta2_decay
        rho = min(eta, 1 / np.sqrt(t))
        for i, grad in enumerate(grads):
            g = -np.array(grad, np.float64) if maximize else np.array(grad, np.float64)
            alpha = max(eps2, _rms(theta[i])) * rho
            theta[i] = theta[i] - eta * weight_decay * theta[i]
            if matrix[i]:
                rows[i] = (1 - beta_hat) * rows[i] + beta_hat * np.mean(g * g, -1, keepdims=True)
                cols[i] = (1 - beta_hat) * cols[i] + beta_hat * np.mean(g * g, -2, keepdims=True)
                mean_row = np.maximum(np.mean(rows[i], -2, keepdims=True), eps1)
                estimate = rows[i] * cols[i] / mean_row
            else:
                variance[i] = (1 - beta_hat) * variance[i] + beta_hat * g * g
                estimate = variance[i]
            u = g / np.maximum(np.sqrt(estimate), eps1)
            theta[i] = theta[i] - alpha * u / max(1.0, _rms(u) / d)
        history.append([x.copy() for x in theta])
    return history, {"step": len(grads_seq), "row_var": rows, "col_var": cols,
                     "variance": variance}
