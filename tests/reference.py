"""Independent NumPy float64 references of RMSprop (DESIGN.md) and SGD/Adam (torch docs).

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

# ----- the rest of the family: NAdam, RAdam, ASGD
