"""Independent NumPy float64 references of the optimizers, from docs/optimizers.md's formulas.

Nothing here imports lucid_fx: the reference must be able to disagree with the code
under test. Per element, with gradient g, parameter θ, step t (0 at the first update)
and hyper-parameters η = lr(t), α, ε, λ = weight_decay, μ = momentum::

    g  ← -g                                  (maximize only, first)
    g  ← g + λ·θ                             (coupled L2)
    v_t = α·v_{t-1} + (1-α)·|g|²              (v_0 = 0, real even for complex g)
    centered:  ḡ_t = α·ḡ_{t-1} + (1-α)·g      (ḡ_0 = 0)
               d = sqrt(max(v_t - |ḡ_t|², 0)) + ε
    otherwise: d = sqrt(v_t) + ε              (ε outside the square root)
    μ = 0:     θ_t = θ_{t-1} - η·g/d
    μ > 0:     b_t = μ·b_{t-1} + η·g/d        (b_0 = 0; η inside the buffer)
               θ_t = θ_{t-1} - b_t

Arrays are float64 (complex128 for complex parameters). ``lr`` may be a number, a
list with one value per step, or a callable ``step -> lr`` (optax schedules work,
their result is converted with ``float``).

Example:
  >>> import numpy as np
  >>> history, state = reference_run([np.array([1.0])], [[np.array([2.0])]], lr=0.1,
  ...                                alpha=0.0, eps=0.0)
  >>> float(history[-1][0][0])  # v = g² = 4, θ = 1 - 0.1·2/2
  0.9
  >>> state["step"]
  1
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

LrSpec = float | Sequence[float] | Callable[[int], Any]

# Tolerances for results compared with this reference through max_rel_error.
RTOL_F32 = 2e-5  # float32 through tens of steps of divisions and square roots
RTOL_F64 = 1e-12  # float64: the same formulas, so only rounding differs


def _as_reference_array(x: Any) -> np.ndarray:
    """float64 (or complex128) copy of ``x``."""
    array = np.asarray(x)
    dtype = np.complex128 if np.iscomplexobj(array) else np.float64
    return np.array(array, dtype=dtype)


def lr_at(lr: LrSpec, step: int) -> float:
    """η for update number ``step`` (0 at the first update)."""
    if callable(lr):
        return float(np.asarray(lr(step)))
    values = np.asarray(lr, np.float64)
    return float(values if values.ndim == 0 else values[step])


class RMSpropReference:
    """RMSprop state and step over a list of arrays, in float64, from the formulas.

    Attributes:
      step: number of updates applied.
      square_avg: list of v (real float64).
      grad_avg: list of ḡ when ``centered`` else ``None``.
      momentum_buffer: list of b when ``momentum != 0`` else ``None``.
    """

    def __init__(
        self,
        params: Sequence[Any],
        *,
        lr: LrSpec = 0.01,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
        maximize: bool = False,
    ) -> None:
        self.lr, self.alpha, self.eps = lr, float(alpha), float(eps)
        self.weight_decay, self.momentum = float(weight_decay), float(momentum)
        self.centered, self.maximize = centered, maximize
        self.params = [_as_reference_array(p) for p in params]
        self.step = 0
        self.square_avg = [np.zeros(p.shape, np.float64) for p in self.params]
        self.grad_avg = [np.zeros_like(p) for p in self.params] if centered else None
        self.momentum_buffer = (
            [np.zeros_like(p) for p in self.params] if self.momentum != 0 else None
        )

    def update(self, grads: Sequence[Any]) -> list[np.ndarray]:
        """Applies one step with ``grads``; returns the new parameters (copies)."""
        eta, a = lr_at(self.lr, self.step), self.alpha
        for i, grad in enumerate(grads):
            theta = self.params[i]
            g = _as_reference_array(grad)
            if self.maximize:
                g = -g
            if self.weight_decay != 0:
                g = g + self.weight_decay * theta
            abs_g_sq = np.real(g * np.conj(g))
            v = a * self.square_avg[i] + (1 - a) * abs_g_sq
            self.square_avg[i] = v
            if self.centered:
                assert self.grad_avg is not None
                gbar = a * self.grad_avg[i] + (1 - a) * g
                self.grad_avg[i] = gbar
                d = np.sqrt(np.maximum(v - np.real(gbar * np.conj(gbar)), 0.0)) + self.eps
            else:
                d = np.sqrt(v) + self.eps
            if self.momentum_buffer is not None:
                b = self.momentum * self.momentum_buffer[i] + eta * g / d
                self.momentum_buffer[i] = b
                self.params[i] = theta - b
            else:
                self.params[i] = theta - eta * g / d
        self.step += 1
        return [p.copy() for p in self.params]

    def state(self) -> dict[str, Any]:
        """The state as a dict with torch's keys (lists of arrays, or ``None``)."""

        def copy(xs: list[np.ndarray] | None) -> list[np.ndarray] | None:
            return None if xs is None else [x.copy() for x in xs]

        return {
            "step": self.step,
            "square_avg": copy(self.square_avg),
            "grad_avg": copy(self.grad_avg),
            "momentum_buffer": copy(self.momentum_buffer),
        }


def reference_run(
    params_list: Sequence[Any],
    grads_seq: Sequence[Sequence[Any]],
    lr_schedule: Callable[[int], Any] | None = None,
    **hyper: Any,
) -> tuple[list[list[np.ndarray]], dict[str, Any]]:
    """Runs RMSprop over ``grads_seq`` (one list of gradient arrays per step).

    ``hyper`` are :class:`RMSpropReference`'s keyword arguments (with its
    defaults). Returns ``(params_history, final_state)``: ``params_history[t]``
    is the list of parameters after step ``t + 1``; ``final_state`` is
    :meth:`RMSpropReference.state`. ``lr_schedule``, when given, overrides ``lr``.
    """
    if lr_schedule is not None:
        hyper = {**hyper, "lr": lr_schedule}
    opt = RMSpropReference(params_list, **hyper)
    history = [opt.update(grads) for grads in grads_seq]
    return history, opt.state()


def max_rel_error(actual: Any, expected: Any) -> float:
    """max |actual - expected| / max(1, |expected|) over all elements (0 for empty)."""
    actual = np.asarray(actual).astype(np.complex128)
    expected = np.asarray(expected).astype(np.complex128)
    if expected.size == 0:
        return 0.0
    return float(np.max(np.abs(actual - expected) / np.maximum(1.0, np.abs(expected))))


# ------------------------------------------------------------------ SGD and Adam
#
# torch's documented algorithms (torch.optim.SGD / Adam / AdamW pages, torch 2.13), per
# element, with gradient g, parameter θ, step t (1 at the first update) and η = lr(t - 1):
#
#   SGD:   g ← -g (maximize);  g ← g + λ·θ
#          μ ≠ 0:  b_1 = g;  b_t = μ·b_{t-1} + (1-τ)·g;  g ← g + μ·b_t (nesterov) or b_t
#          θ_t = θ_{t-1} - η·g
#   Adam:  g ← -g (maximize);  decoupled: θ ← θ·(1 - η·λ)  else: g ← g + λ·θ
#          m_t = β₁·m_{t-1} + (1-β₁)·g;  v_t = β₂·v_{t-1} + (1-β₂)·g²
#          amsgrad: v̂_t = max(v̂_{t-1}, v_t), else v̂_t = v_t
#          θ_t = θ - η/(1-β₁^t) · m_t / (sqrt(v̂_t)/sqrt(1-β₂^t) + ε)
#
# Adam treats a complex parameter as a pair of reals (torch.view_as_real): every average
# is per component, so v holds re(g)² and im(g)², returned as v_re + i·v_im.


def _as_real_pairs(x: np.ndarray) -> np.ndarray:
    """A complex array as a stacked (re, im) real array; a real array as it is."""
    return np.stack([x.real, x.imag]) if np.iscomplexobj(x) else x


def _from_real_pairs(x: np.ndarray, like: np.ndarray) -> np.ndarray:
    return x[0] + 1j * x[1] if np.iscomplexobj(like) else x


def sgd_reference(
    params: Sequence[Any],
    grads_seq: Sequence[Sequence[Any]],
    *,
    lr: LrSpec = 1e-3,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
) -> tuple[list[list[np.ndarray]], dict[str, Any]]:
    """SGD over ``grads_seq`` in float64; returns ``(params_history, final_state)``.

    ``params_history[t]`` is the list of parameters after step ``t + 1``;
    ``final_state`` has torch's keys: ``step`` and ``momentum_buffer`` (``None``
    without momentum).

    Example:
      >>> history, state = sgd_reference([np.array([1.0])], [[np.array([2.0])]] * 2,
      ...                                lr=0.1, momentum=0.5, dampening=0.5)
      >>> [round(float(h[0][0]), 12) for h in history]  # b = 2, then 0.5·2 + 0.5·2 = 2
      [0.8, 0.6]
    """
    theta = [_as_reference_array(p) for p in params]
    buffers: list[np.ndarray] | None = None
    history = []
    for t, grads in enumerate(grads_seq, start=1):
        eta = lr_at(lr, t - 1)
        new_buffers = []
        for i, grad in enumerate(grads):
            g = _as_reference_array(grad)
            if maximize:
                g = -g
            if weight_decay != 0:
                g = g + weight_decay * theta[i]
            if momentum != 0:
                b = g if buffers is None else momentum * buffers[i] + (1 - dampening) * g
                new_buffers.append(b)
                g = g + momentum * b if nesterov else b
            theta[i] = theta[i] - eta * g
        buffers = new_buffers if momentum != 0 else None
        history.append([x.copy() for x in theta])
    return history, {"step": len(grads_seq), "momentum_buffer": buffers}


def adam_reference(
    params: Sequence[Any],
    grads_seq: Sequence[Sequence[Any]],
    *,
    lr: LrSpec = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    maximize: bool = False,
    decoupled_weight_decay: bool = False,
) -> tuple[list[list[np.ndarray]], dict[str, Any]]:
    """Adam (AdamW when ``decoupled_weight_decay``) over ``grads_seq`` in float64.

    Returns ``(params_history, final_state)`` as :func:`sgd_reference`;
    ``final_state`` has torch's keys ``step``, ``exp_avg``, ``exp_avg_sq`` and
    ``max_exp_avg_sq`` (``None`` without amsgrad).

    Example:
      >>> history, state = adam_reference([np.array([1.0])], [[np.array([3.0])]], lr=0.1,
      ...                                 eps=0.0)
      >>> round(float(history[0][0][0]), 12)  # the first step moves by η·sign(g)
      0.9
    """
    beta1, beta2 = (float(b) for b in betas)
    like = [_as_reference_array(p) for p in params]
    theta = [_as_real_pairs(p) for p in like]
    m = [np.zeros_like(p) for p in theta]
    v = [np.zeros_like(p) for p in theta]
    v_max = [np.zeros_like(p) for p in theta]
    history = []
    for t, grads in enumerate(grads_seq, start=1):
        eta = lr_at(lr, t - 1)
        for i, grad in enumerate(grads):
            g = _as_real_pairs(_as_reference_array(grad))
            if maximize:
                g = -g
            if weight_decay != 0:
                if decoupled_weight_decay:
                    theta[i] = theta[i] * (1 - eta * weight_decay)
                else:
                    g = g + weight_decay * theta[i]
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            v_max[i] = np.maximum(v_max[i], v[i])
            v_hat = v_max[i] if amsgrad else v[i]
            denom = np.sqrt(v_hat) / np.sqrt(1 - beta2**t) + eps
            theta[i] = theta[i] - eta / (1 - beta1**t) * m[i] / denom
        history.append([_from_real_pairs(x, p) for x, p in zip(theta, like)])

    def out(xs: list[np.ndarray]) -> list[np.ndarray]:
        return [_from_real_pairs(x, p) for x, p in zip(xs, like)]

    return history, {
        "step": len(grads_seq),
        "exp_avg": out(m),
        "exp_avg_sq": out(v),
        "max_exp_avg_sq": out(v_max) if amsgrad else None,
    }


# ----- the rest of the family: Adagrad, Adadelta, Adamax, Rprop
#
# torch's documented algorithms (torch.optim.Adagrad / Adadelta / Adamax / Rprop pages,
# torch 2.13), per element, with gradient g (negated first when maximize), parameter θ,
# step t (1 at the first update), η = lr(t - 1) and λ = weight_decay (g ← g + λ·θ):
#
#   Adagrad:   s_0 = initial_accumulator_value;  s_t = s_{t-1} + g²
#              θ_t = θ - η/(1 + (t-1)·lr_decay) · g / (sqrt(s_t) + ε)
#   Adadelta:  v_t = ρ·v_{t-1} + (1-ρ)·g²;  Δx = sqrt(u_{t-1} + ε)/sqrt(v_t + ε)·g
#              u_t = ρ·u_{t-1} + (1-ρ)·Δx²;  θ_t = θ - η·Δx
#   Adamax:    m_t = β₁·m_{t-1} + (1-β₁)·g;  u_t = max(β₂·u_{t-1}, |g| + ε)
#              θ_t = θ - η/(1-β₁^t) · m_t / u_t
#   Rprop:     s_0 = lr;  g·g_prev > 0: s ← min(η₊·s, Γ_max);  < 0: s ← max(η₋·s, Γ_min), g ← 0
#              θ_t = θ - s·sign(g);  g_prev ← g        (no weight decay, lr used once)
#
# All four treat a complex parameter as a pair of reals (torch.view_as_real).


def _family_run(
    params: Sequence[Any],
    grads_seq: Sequence[Sequence[Any]],
    buffers: dict[str, float],
    step: Callable[[int, np.ndarray, np.ndarray, dict[str, np.ndarray]], np.ndarray],
    *,
    maximize: bool,
    weight_decay: float = 0.0,
) -> tuple[list[list[np.ndarray]], dict[str, Any]]:
    """Runs ``step(t, g, θ, buffers) -> θ_t`` per parameter over real pairs.

    ``buffers`` maps each state key to its starting value (a number). Returns
    ``(params_history, final_state)`` as :func:`sgd_reference`.
    """
    like = [_as_reference_array(p) for p in params]
    theta = [_as_real_pairs(p) for p in like]
    state = [{k: np.full(x.shape, v, np.float64) for k, v in buffers.items()} for x in theta]
    history = []
    for t, grads in enumerate(grads_seq, start=1):
        for i, grad in enumerate(grads):
            g = _as_real_pairs(_as_reference_array(grad))
            if maximize:
                g = -g
            if weight_decay != 0:
                g = g + weight_decay * theta[i]
            theta[i] = step(t, g, theta[i], state[i])
        history.append([_from_real_pairs(x, p) for x, p in zip(theta, like)])
    final: dict[str, Any] = {"step": len(grads_seq)}
    for key in buffers:
        final[key] = [_from_real_pairs(s[key], p) for s, p in zip(state, like)]
    return history, final


def adagrad_reference(
    params: Sequence[Any],
    grads_seq: Sequence[Sequence[Any]],
    *,
    lr: LrSpec = 1e-2,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    maximize: bool = False,
) -> tuple[list[list[np.ndarray]], dict[str, Any]]:
    """Adagrad over ``grads_seq`` in float64; ``final_state`` has ``step`` and ``sum``.

    Example:
      >>> history, state = adagrad_reference([np.array([1.0])], [[np.array([2.0])]] * 2,
      ...                                    lr=0.5, lr_decay=1.0, eps=0.0)
      >>> [round(float(h[0][0]), 12) for h in history]   # 1 - 0.5·2/2, then - 0.25·2/sqrt(8)
      [0.5, 0.323223304703]
    """

    def step(t: int, g: np.ndarray, theta: np.ndarray, s: dict[str, np.ndarray]) -> np.ndarray:
        s["sum"] = s["sum"] + g * g
        clr = lr_at(lr, t - 1) / (1 + (t - 1) * lr_decay)
        return theta - clr * g / (np.sqrt(s["sum"]) + eps)

    return _family_run(params, grads_seq, {"sum": initial_accumulator_value}, step,
                       maximize=maximize, weight_decay=weight_decay)


def adadelta_reference(
    params: Sequence[Any],
    grads_seq: Sequence[Sequence[Any]],
    *,
    lr: LrSpec = 1.0,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    maximize: bool = False,
) -> tuple[list[list[np.ndarray]], dict[str, Any]]:
    """Adadelta over ``grads_seq`` in float64; ``final_state`` has ``step``,
    ``square_avg`` and ``acc_delta``.

    Example:
      >>> history, state = adadelta_reference([np.array([1.0])], [[np.array([2.0])]],
      ...                                     rho=0.0, eps=1.0)
      >>> round(float(history[0][0][0]), 12)   # Δx = sqrt(0 + 1)/sqrt(4 + 1)·2
      0.105572809
    """

    def step(t: int, g: np.ndarray, theta: np.ndarray, s: dict[str, np.ndarray]) -> np.ndarray:
        s["square_avg"] = rho * s["square_avg"] + (1 - rho) * g * g
        dx = np.sqrt(s["acc_delta"] + eps) / np.sqrt(s["square_avg"] + eps) * g
        s["acc_delta"] = rho * s["acc_delta"] + (1 - rho) * dx * dx
        return theta - lr_at(lr, t - 1) * dx

    return _family_run(params, grads_seq, {"square_avg": 0.0, "acc_delta": 0.0}, step,
                       maximize=maximize, weight_decay=weight_decay)


def adamax_reference(
    params: Sequence[Any],
    grads_seq: Sequence[Sequence[Any]],
    *,
    lr: LrSpec = 2e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    maximize: bool = False,
) -> tuple[list[list[np.ndarray]], dict[str, Any]]:
    """Adamax over ``grads_seq`` in float64; ``final_state`` has ``step``, ``exp_avg``
    and ``exp_inf``.

    Example:
      >>> history, state = adamax_reference([np.array([1.0])], [[np.array([-3.0])]], lr=0.1,
      ...                                   eps=0.0)
      >>> round(float(history[0][0][0]), 12), float(state["exp_inf"][0][0])  # η·sign(g)
      (1.1, 3.0)
    """
    beta1, beta2 = (float(b) for b in betas)

    def step(t: int, g: np.ndarray, theta: np.ndarray, s: dict[str, np.ndarray]) -> np.ndarray:
        s["exp_avg"] = beta1 * s["exp_avg"] + (1 - beta1) * g
        s["exp_inf"] = np.maximum(beta2 * s["exp_inf"], np.abs(g) + eps)
        return theta - lr_at(lr, t - 1) / (1 - beta1**t) * s["exp_avg"] / s["exp_inf"]

    return _family_run(params, grads_seq, {"exp_avg": 0.0, "exp_inf": 0.0}, step,
                       maximize=maximize, weight_decay=weight_decay)


def rprop_reference(
    params: Sequence[Any],
    grads_seq: Sequence[Sequence[Any]],
    *,
    lr: float = 1e-2,
    etas: tuple[float, float] = (0.5, 1.2),
    step_sizes: tuple[float, float] = (1e-6, 50),
    maximize: bool = False,
) -> tuple[list[list[np.ndarray]], dict[str, Any]]:
    """Rprop over ``grads_seq`` in float64; ``final_state`` has ``step``, ``prev`` and
    ``step_size``.

    Example:
      >>> history, state = rprop_reference([np.array([0.0])], [[np.array([1.0])]] * 3,
      ...                                  lr=0.5, etas=(0.5, 2.0))
      >>> [float(h[0][0]) for h in history]   # steps 0.5, 1, 2: the same sign grows s
      [-0.5, -1.5, -3.5]
    """
    etaminus, etaplus = (float(e) for e in etas)
    smallest, largest = (float(s) for s in step_sizes)

    def step(t: int, g: np.ndarray, theta: np.ndarray, s: dict[str, np.ndarray]) -> np.ndarray:
        same, flipped = g * s["prev"] > 0, g * s["prev"] < 0
        size = s["step_size"]
        size = np.where(same, np.minimum(size * etaplus, largest), size)
        size = np.where(flipped, np.maximum(size * etaminus, smallest), size)
        g = np.where(flipped, 0.0, g)
        s["step_size"], s["prev"] = size, g
        return theta - size * np.sign(g)

    return _family_run(params, grads_seq, {"prev": 0.0, "step_size": float(lr)}, step,
                       maximize=maximize)

# ----- the rest of the family: NAdam, RAdam, ASGD
#
# torch's documented algorithms (torch.optim.NAdam / RAdam pages, torch 2.13; ASGD from
# its paper's recursion as torch states it), per element, with gradient g (negated first
# when maximize), parameter θ, step t (1 at the first update) and η = lr(t - 1):
#
#   NAdam: decoupled: θ ← θ·(1 - η·λ), else g ← g + λ·θ
#          μ_t = β₁·(1 - 0.5·0.96^(t·ψ));  Π_t = Π_{t-1}·μ_t (Π_0 = 1)
#          m_t = β₁·m + (1-β₁)·g;  v_t = β₂·v + (1-β₂)·g²
#          θ_t = θ - η·[(1-μ_t)·g/(1-Π_t) + μ_{t+1}·m_t/(1-Π_t·μ_{t+1})] / (sqrt(v_t/(1-β₂^t)) + ε)
#   RAdam: decoupled: θ ← θ·(1 - η·λ), else g ← g + λ·θ;  m_t, v_t as Adam;  m̂ = m_t/(1-β₁^t)
#          ρ_∞ = 2/(1-β₂) - 1;  ρ_t = ρ_∞ - 2t·β₂^t/(1-β₂^t)
#          ρ_t > 5: θ_t = θ - η·m̂·r_t·sqrt(1-β₂^t)/(sqrt(v_t) + ε),
#                   r_t = sqrt((ρ_t-4)(ρ_t-2)ρ_∞ / ((ρ_∞-4)(ρ_∞-2)ρ_t))
#          else:    θ_t = θ - η·m̂
#   ASGD:  η_0 = lr(0), μ_0 = 1;  g ← g + λ_wd·θ
#          θ_t = θ·(1 - λ·η_{t-1}) - η_{t-1}·g
#          ax_t = θ_t if μ_{t-1} = 1 else ax + μ_{t-1}·(θ_t - ax)
#          η_t = lr(t-1) / (1 + λ·lr(t-1)·t)^α;  μ_t = 1 / max(1, t - t0)
#
# All three treat a complex parameter as a pair of reals (torch.view_as_real). The
# per-parameter scalars (mu_product, eta, mu) are the same for every parameter here,
# as all take every step: the final state holds each as one float.


def _adam_moments(m: np.ndarray, v: np.ndarray, g: np.ndarray, beta1: float,
                  beta2: float) -> tuple[np.ndarray, np.ndarray]:
    return beta1 * m + (1 - beta1) * g, beta2 * v + (1 - beta2) * g * g


def nadam_reference(
    params: Sequence[Any],
    grads_seq: Sequence[Sequence[Any]],
    *,
    lr: LrSpec = 2e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum_decay: float = 4e-3,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
) -> tuple[list[list[np.ndarray]], dict[str, Any]]:
    """NAdam over ``grads_seq`` in float64; ``final_state`` has ``step``, ``mu_product``
    (a float), ``exp_avg`` and ``exp_avg_sq``.

    Example:
      >>> history, state = nadam_reference([np.array([0.0])], [[np.array([1.0])]], lr=0.1,
      ...                                  betas=(0.0, 0.0), eps=0.0)
      >>> float(history[0][0][0]), state["mu_product"]   # β₁ = 0: μ = 0, a plain -η·sign(g)
      (-0.1, 0.0)
    """
    beta1, beta2 = (float(b) for b in betas)
    like = [_as_reference_array(p) for p in params]
    theta = [_as_real_pairs(p) for p in like]
    m = [np.zeros_like(p) for p in theta]
    v = [np.zeros_like(p) for p in theta]

    def mu_at(t: int) -> float:
        return beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))

    product = 1.0
    history = []
    for t, grads in enumerate(grads_seq, start=1):
        eta = lr_at(lr, t - 1)
        mu, mu_next = mu_at(t), mu_at(t + 1)
        product *= mu
        for i, grad in enumerate(grads):
            g = _as_real_pairs(_as_reference_array(grad))
            if maximize:
                g = -g
            if weight_decay != 0:
                if decoupled_weight_decay:
                    theta[i] = theta[i] * (1 - eta * weight_decay)
                else:
                    g = g + weight_decay * theta[i]
            m[i], v[i] = _adam_moments(m[i], v[i], g, beta1, beta2)
            m_hat = mu_next * m[i] / (1 - product * mu_next) + (1 - mu) * g / (1 - product)
            theta[i] = theta[i] - eta * m_hat / (np.sqrt(v[i] / (1 - beta2**t)) + eps)
        history.append([_from_real_pairs(x, p) for x, p in zip(theta, like)])
    return history, {
        "step": len(grads_seq),
        "mu_product": product,
        "exp_avg": [_from_real_pairs(x, p) for x, p in zip(m, like)],
        "exp_avg_sq": [_from_real_pairs(x, p) for x, p in zip(v, like)],
    }


def radam_reference(
    params: Sequence[Any],
    grads_seq: Sequence[Sequence[Any]],
    *,
    lr: LrSpec = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
) -> tuple[list[list[np.ndarray]], dict[str, Any]]:
    """RAdam over ``grads_seq`` in float64; ``final_state`` has ``step``, ``exp_avg`` and
    ``exp_avg_sq``.

    Example:
      >>> history, _ = radam_reference([np.array([0.0])], [[np.array([2.0])]], lr=0.1)
      >>> round(float(history[0][0][0]), 12)   # ρ₁ = 1 <= 5: θ - η·m̂ = -0.1·2
      -0.2
    """
    beta1, beta2 = (float(b) for b in betas)
    like = [_as_reference_array(p) for p in params]
    theta = [_as_real_pairs(p) for p in like]
    m = [np.zeros_like(p) for p in theta]
    v = [np.zeros_like(p) for p in theta]
    rho_inf = 2 / (1 - beta2) - 1
    history = []
    for t, grads in enumerate(grads_seq, start=1):
        eta = lr_at(lr, t - 1)
        rho = rho_inf - 2 * t * beta2**t / (1 - beta2**t)
        for i, grad in enumerate(grads):
            g = _as_real_pairs(_as_reference_array(grad))
            if maximize:
                g = -g
            if weight_decay != 0:
                if decoupled_weight_decay:
                    theta[i] = theta[i] * (1 - eta * weight_decay)
                else:
                    g = g + weight_decay * theta[i]
            m[i], v[i] = _adam_moments(m[i], v[i], g, beta1, beta2)
            m_hat = m[i] / (1 - beta1**t)
            if rho > 5:
                rect = np.sqrt((rho - 4) * (rho - 2) * rho_inf
                               / ((rho_inf - 4) * (rho_inf - 2) * rho))
                adaptive = np.sqrt(1 - beta2**t) / (np.sqrt(v[i]) + eps)
                theta[i] = theta[i] - eta * m_hat * rect * adaptive
            else:
                theta[i] = theta[i] - eta * m_hat
        history.append([_from_real_pairs(x, p) for x, p in zip(theta, like)])
    return history, {
        "step": len(grads_seq),
        "exp_avg": [_from_real_pairs(x, p) for x, p in zip(m, like)],
        "exp_avg_sq": [_from_real_pairs(x, p) for x, p in zip(v, like)],
    }


def asgd_reference(
    params: Sequence[Any],
    grads_seq: Sequence[Sequence[Any]],
    *,
    lr: LrSpec = 1e-2,
    lambd: float = 1e-4,
    alpha: float = 0.75,
    t0: float = 1e6,
    weight_decay: float = 0.0,
    maximize: bool = False,
) -> tuple[list[list[np.ndarray]], dict[str, Any]]:
    """ASGD over ``grads_seq`` in float64; ``final_state`` has ``step``, ``eta`` and ``mu``
    (floats) and ``ax``.

    Example:
      >>> history, state = asgd_reference([np.array([1.0])], [[np.array([2.0])]] * 3,
      ...                                 lr=0.1, lambd=0.0, t0=0)
      >>> [round(float(h[0][0]), 12) for h in history]
      [0.8, 0.6, 0.4]
      >>> round(float(state["ax"][0][0]), 12)   # μ = 1/max(1, t - t0): the mean of θ₂, θ₃
      0.5
    """
    like = [_as_reference_array(p) for p in params]
    theta = [_as_real_pairs(p) for p in like]
    ax = [np.zeros_like(p) for p in theta]
    eta, mu = lr_at(lr, 0), 1.0
    history = []
    for t, grads in enumerate(grads_seq, start=1):
        for i, grad in enumerate(grads):
            g = _as_real_pairs(_as_reference_array(grad))
            if maximize:
                g = -g
            if weight_decay != 0:
                g = g + weight_decay * theta[i]
            theta[i] = theta[i] * (1 - lambd * eta) - eta * g
            ax[i] = theta[i].copy() if mu == 1 else ax[i] + mu * (theta[i] - ax[i])
        lr_t = lr_at(lr, t - 1)
        eta, mu = lr_t / (1 + lambd * lr_t * t) ** alpha, 1 / max(1, t - t0)
        history.append([_from_real_pairs(x, p) for x, p in zip(theta, like)])
    return history, {
        "step": len(grads_seq),
        "eta": eta,
        "mu": mu,
        "ax": [_from_real_pairs(x, p) for x, p in zip(ax, like)],
    }
