"""``fx.LBFGS``: torch's limited-memory BFGS, with its closure protocol and state dict.

L-BFGS is not an update rule applied to a gradient: each ``step(closure)``
runs up to ``max_iter`` iterations, each of which may call the closure several
times (the line search), and every decision (accept a curvature pair, stop,
bracket, zoom) depends on the numbers the last call returned. So the
algorithm runs as a host loop, as torch's does, over small compiled kernels
on the flat parameter vector (the curvature pair, one pair's part of each
loop of the two-loop recursion, the move ``θ + t·d``, the gathering of the
gradient), which compile once per vector size, whatever ``history_size``.

There is no functional face (no ``fx.lbfgs``). The optax protocol's way,
``optax.lbfgs``, makes one L-BFGS iteration one ``update`` with its line search
inside the compiled function (``value_fn``); torch's step is a whole loop of
iterations whose line search calls a side-effecting closure on the host. A
transform in optax's form would be a second implementation of the line
search, with optax's stopping rules rather than torch's, so it would match
neither. Use ``optax.lbfgs`` for a jittable L-BFGS and :class:`LBFGS` for
torch's iterates (docs/lbfgs.md compares them).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from types import MappingProxyType
from typing import Any, NamedTuple, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np

from lucid_fx._src.core.layout import Layout
from lucid_fx._src.core.validation import check_hyperparameter
from lucid_fx._src.interop.host import from_torch, host_array, torch_tensor
from lucid_fx._src.interop.torch import ParamNames, torch_positions
from lucid_fx._src.stateful.autodiff import Parameter
from lucid_fx._src.stateful.optimizer import Closure, Optimizer, ParamGroup, Params, StateDict
from lucid_fx._src.stateful.param_groups import options_of
from lucid_fx._src.stateful.tracing import check_eager

# A host scalar of the search: a Python number where torch holds one (the loss, lr),
# a NumPy scalar where torch holds a 0-d tensor (a reduction of the flat vector).
# NumPy's promotion (NEP 50) then rounds mixed arithmetic as torch's does: a Python
# float meeting a float32 scalar is float32. Any: NumPy's stubs cannot mix the two.
Number: TypeAlias = Any

LINE_SEARCHES = (None, "strong_wolfe")
CURVATURE_MIN = 1e-10  # a pair (s, y) enters the memory only if yᵀs exceeds this
WOLFE_C1, WOLFE_C2 = 1e-4, 0.9  # sufficient decrease, curvature (torch's constants)

_STATE_KEYS = ("func_evals", "n_iter", "d", "t", "old_dirs", "old_stps", "ro", "H_diag",
               "prev_flat_grad", "prev_loss", "al")
_RUN_KEYS = frozenset(_STATE_KEYS[2:-1])  # stored together once an iteration has run


def _check_count(name: str, value: Any, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        expected = "None or an integer >= 1" if optional else "an integer >= 1"
        raise ValueError(f"Invalid {name} value: {value!r} (expected {expected})")


def _lbfgs_hyperparameters(
    lr: float = 1,
    max_iter: int = 20,
    max_eval: int | None = None,
    tolerance_grad: float = 1e-7,
    tolerance_change: float = 1e-9,
    history_size: int = 100,
    line_search_fn: str | None = None,
) -> None:
    """Checks LBFGS's hyper-parameters; ``Optimizer`` reads their names and defaults here.

    torch checks only ``0 <= lr``; the others fail inside its step, or never
    (a ``history_size`` of 0 fails at the first pair remembered).
    """
    if callable(lr):
        # ValueError, as for every bad value (lucid_fx._src.core.validation).
        raise ValueError(f"Invalid lr value: {lr!r} (LBFGS takes a number; a scheduler "  # noqa: TRY004
                         f"writes into optimizer.param_groups[0]['lr'])")
    check_hyperparameter("lr", lr)
    _check_count("max_iter", max_iter)
    _check_count("max_eval", max_eval, optional=True)
    check_hyperparameter("tolerance_grad", tolerance_grad)
    check_hyperparameter("tolerance_change", tolerance_change)
    _check_count("history_size", history_size)
    if not (line_search_fn is None or isinstance(line_search_fn, str)) or (
        line_search_fn not in LINE_SEARCHES
    ):
        raise ValueError(
            f"Invalid line_search_fn value: {line_search_fn!r} (expected None or 'strong_wolfe')"
        )


# ----- the flat vector ------------------------------------------------------------------


def _vector_layout(params: Sequence[Parameter]) -> Layout:
    """The flat vector of every Parameter, as torch lays it out (``torch.cat`` of the
    views): a complex Parameter as its (real, imaginary) pairs (``view_as_real``), the
    vector in the widest real dtype of them (torch.cat promotes), a narrower Parameter
    receiving its part rounded."""
    dtypes = [np.dtype(p.dtype) for p in params]
    real = np.dtype(jnp.result_type(*[jnp.finfo(dt).dtype for dt in dtypes]))
    return Layout.flat([p.shape for p in params], dtypes, real)


def _vector(layout: Layout, arrays: Sequence[jax.Array | None]) -> jax.Array:
    """The arrays as the flat vector (traceable); ``None`` (no gradient) reads as zeros."""
    return layout.pack([jnp.zeros(shape, dtype) if a is None else a
                        for a, shape, dtype in zip(arrays, layout.shapes, layout.dtypes)])


@partial(jax.jit, static_argnums=0)
def _gathered(
    layout: Layout, arrays: list[jax.Array | None], d: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The arrays as the flat vector v, with vᵀd, ‖v‖∞ and ‖v‖₁ (v is θ or g)."""
    v = _vector(layout, arrays)
    return v, v @ d, jnp.max(jnp.abs(v)), jnp.sum(jnp.abs(v))


@partial(jax.jit, static_argnums=0)
def _moved(
    layout: Layout, x: jax.Array, t: jax.Array, d: jax.Array
) -> tuple[list[jax.Array], jax.Array, jax.Array]:
    """θ + t·d as the Parameters' arrays, the same as a vector, and ‖t·d‖∞."""
    # Each Parameter receives its part rounded to its own dtype, as torch's copy does.
    pieces = [piece.astype(dtype) for piece, dtype in zip(layout.unpack(x + t * d), layout.dtypes)]
    return pieces, layout.pack(pieces), jnp.max(jnp.abs(d * t))


# The two-loop recursion runs on the host, a compiled call per remembered pair: the
# memory is a list that grows as torch's does, and these kernels compile once per
# vector size, whatever history_size is.


@jax.jit
def _pair(g: jax.Array, prev_g: jax.Array, d: jax.Array, t: jax.Array) -> tuple[jax.Array, ...]:
    """The curvature pair of the last step: y = g - g_prev, s = t·d, yᵀs, 1/yᵀs, yᵀs/yᵀy."""
    y = g - prev_g
    s = d * t
    ys = y @ s
    return y, s, ys, 1.0 / ys, ys / (y @ y)


@jax.jit
def _newest_first(
    q: jax.Array, y: jax.Array, s: jax.Array, ro: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """One pair of the recursion's first loop: α = ρ·sᵀq, q ← q - α·y."""
    a = (s @ q) * ro
    return q - a * y, a


@jax.jit
def _oldest_first(r: jax.Array, y: jax.Array, s: jax.Array, ro: jax.Array,
                  a: jax.Array) -> jax.Array:
    """One pair of the second loop: β = ρ·yᵀr, r ← r + (α - β)·s."""
    return r + (a - (y @ r) * ro) * s


@jax.jit
def _scaled(v: jax.Array, c: jax.Array) -> jax.Array:
    return v * c


@jax.jit
def _slope(g: jax.Array, d: jax.Array) -> tuple[jax.Array, jax.Array]:
    """gᵀd and ‖d‖∞."""
    return g @ d, jnp.max(jnp.abs(d))


def _host(*arrays: jax.Array) -> tuple[Any, ...]:
    """Device scalars as NumPy scalars (one transfer), which keep their dtype in arithmetic."""
    return tuple(np.asarray(a)[()] for a in jax.device_get(arrays))


# ----- the state ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _State:
    """torch's LBFGS state, its keys with Pythonic names; ``None`` until an iteration sets it.

    Vectors and torch's tensor scalars (``ro``, ``al``) live on the device, the
    rest on the host. The pairs are oldest first, as torch's lists.
    """

    func_evals: int = 0
    n_iter: int = 0
    d: jax.Array | None = None
    t: Number | None = None
    old_dirs: tuple[jax.Array, ...] = ()
    old_stps: tuple[jax.Array, ...] = ()
    ro: tuple[jax.Array, ...] = ()
    h_diag: Number | None = None  # torch's H_diag: 1 until the first pair is remembered
    prev_flat_grad: jax.Array | None = None
    prev_loss: float | None = None
    al: tuple[jax.Array | None, ...] | None = None  # α of the last recursion, None-padded


def _state_entry(state: _State, convert: Callable[[Any], Any]) -> dict[str, Any]:
    """torch's per-parameter dict of ``state``: arrays through ``convert``, numbers as they are."""

    def scalar(x: Any) -> Any:
        return convert(np.asarray(x)) if isinstance(x, np.generic) else x

    entry: dict[str, Any] = {"func_evals": state.func_evals, "n_iter": state.n_iter}
    if state.d is None:
        return entry
    d, prev_g, dirs, stps, ro, al = jax.device_get(
        (state.d, state.prev_flat_grad, state.old_dirs, state.old_stps, state.ro, state.al))
    entry.update(
        d=convert(d), t=scalar(state.t),
        old_dirs=[convert(y) for y in dirs], old_stps=[convert(s) for s in stps],
        ro=[convert(r) for r in ro], H_diag=scalar(state.h_diag),
        prev_flat_grad=convert(prev_g), prev_loss=state.prev_loss,
    )
    if al is not None:
        entry["al"] = [None if a is None else convert(a) for a in al]
    return entry


def _numpy_tree(value: Any) -> Any:
    """torch tensors (in lists too) as NumPy arrays; everything else as it is."""
    if isinstance(value, (list, tuple)):
        return [_numpy_tree(v) for v in value]
    return from_torch(value)


_VECTOR_KEYS = ("d", "prev_flat_grad")  # flat vectors; old_dirs, old_stps: lists of them


def _reordered(entry: Mapping[str, Any], index: np.ndarray) -> dict[str, Any]:
    """A state entry with every flat vector gathered by ``index`` (its Parameters reordered)."""
    def gather(v: Any) -> Any:
        return host_array(np.asarray(v)[index])

    return {key: gather(value) if key in _VECTOR_KEYS
            else [gather(v) for v in value] if key in ("old_dirs", "old_stps")
            else value for key, value in entry.items()}


class _EntryReader:
    """Checks one saved state entry against the flat layout and reads it into a ``_State``."""

    def __init__(self, entry: Mapping[str, Any], where: str, layout: Layout) -> None:
        self.entry, self.where, self.layout = entry, where, layout

    def fail(self, key: str, problem: str) -> ValueError:
        return ValueError(f"{self.where}[{key!r}] {problem}")

    def count(self, key: str) -> int:
        value = np.asarray(self.entry[key])
        if value.shape != () or not jnp.issubdtype(value.dtype, jnp.integer) or value < 0:
            raise self.fail(key, f"must be an integer >= 0, got {self.entry[key]!r:.60}")
        return int(value)

    def vector(self, value: Any, key: str) -> np.ndarray:
        array = np.asarray(value)
        n, dtype = self.layout.total, self.layout.dtype
        if array.shape != (n,) or array.dtype != dtype:
            raise self.fail(key, f"has shape {array.shape} and dtype {array.dtype}, "
                                 f"expected ({n},) {dtype}")
        return array

    def scalar(self, value: Any, key: str) -> Number:
        """A Python number stays one; an array must be 0-d of the vector's dtype."""
        if isinstance(value, (int, float)) and not isinstance(value, (bool, np.generic)):
            return value
        array = np.asarray(value)
        if array.shape != () or array.dtype != self.layout.dtype:
            raise self.fail(key, f"must be a number or a 0-d {self.layout.dtype} array, got "
                                 f"{array.dtype} of shape {array.shape}")
        return array[()]

    def sequence(self, key: str) -> list[Any]:
        value = self.entry[key]
        if not isinstance(value, (list, tuple)):
            raise self.fail(key, f"must be a list, got {type(value).__name__}")
        return list(value)

    def state(self, history_size: int) -> _State:
        missing = {"func_evals", "n_iter"} - set(self.entry)
        ran = _RUN_KEYS & set(self.entry)
        if ran or self.count("n_iter") > 0:
            missing |= _RUN_KEYS - ran
        if missing:
            raise ValueError(f"{self.where} is missing key(s) {sorted(missing)}")
        state = _State(func_evals=self.count("func_evals"), n_iter=self.count("n_iter"))
        if not ran:
            return state
        lists = {key: self.sequence(key) for key in ("old_dirs", "old_stps", "ro")}
        k = len(lists["old_dirs"])
        if {len(v) for v in lists.values()} != {k} or k > history_size:
            raise ValueError(
                f"{self.where}: old_dirs, old_stps and ro must have one length, at most "
                f"history_size ({history_size}); got {sorted({len(v) for v in lists.values()})}"
            )
        prev_loss = self.entry["prev_loss"]
        if isinstance(prev_loss, bool) or not isinstance(prev_loss, (int, float, np.floating)):
            raise self.fail("prev_loss", f"must be a real number, got {prev_loss!r:.60}")
        al = None
        if "al" in self.entry:
            saved = self.sequence("al")
            if len(saved) < k or any(a is None for a in saved[:k]):
                raise self.fail("al", f"must hold a number for each of the {k} pairs, then "
                                      f"numbers or None")
            al = tuple(None if a is None else jnp.asarray(self.scalar(a, "al")) for a in saved)
        return dataclasses.replace(
            state,
            d=jnp.asarray(self.vector(self.entry["d"], "d")),
            t=self.scalar(self.entry["t"], "t"),
            old_dirs=tuple(jnp.asarray(self.vector(y, "old_dirs")) for y in lists["old_dirs"]),
            old_stps=tuple(jnp.asarray(self.vector(s, "old_stps")) for s in lists["old_stps"]),
            ro=tuple(jnp.asarray(self.scalar(r, "ro")) for r in lists["ro"]),
            h_diag=self.scalar(self.entry["H_diag"], "H_diag"),
            prev_flat_grad=jnp.asarray(self.vector(self.entry["prev_flat_grad"], "prev_flat_grad")),
            prev_loss=float(prev_loss),
            al=al,
        )


# ----- the optimizer --------------------------------------------------------------------


class _Trial(NamedTuple):
    """One point of the line search: step t, loss f, flat gradient g, gᵀd and ‖g‖∞."""

    t: Number
    f: float
    g: jax.Array
    gtd: Number
    g_max: Number


def _cubic_minimum(a: _Trial, b: _Trial, bounds: tuple[Number, Number] | None = None) -> Number:
    """The minimizer of the cubic through two trials' (t, f, gᵀd), clamped to ``bounds``.

    Nocedal & Wright (3.59), with u the trial of larger t and v the other::

        d₁ = g_a + g_b - 3·(f_a - f_b)/(t_a - t_b),   d₂ = sqrt(d₁² - g_a·g_b)
        t  = t_u - (t_u - t_v)·(g_u + d₂ - d₁)/(g_u - g_v + 2·d₂)

    Without bounds it stays between the two; without a real d₂, the middle.
    """
    low, high = bounds if bounds is not None else ((a.t, b.t) if a.t <= b.t else (b.t, a.t))
    d1 = a.gtd + b.gtd - 3 * (a.f - b.f) / (a.t - b.t)
    d2_square = d1**2 - a.gtd * b.gtd
    if not d2_square >= 0:
        return (low + high) / 2.0
    d2 = np.sqrt(d2_square)
    v, u = (a, b) if a.t <= b.t else (b, a)
    t = u.t - (u.t - v.t) * ((u.gtd + d2 - d1) / (u.gtd - v.gtd + 2 * d2))
    return min(max(t, low), high)


def _strong_wolfe(
    evaluate: Callable[[Number], _Trial], start: _Trial, t: Number, d_norm: Number,
    tolerance_change: float, max_ls: int,
) -> tuple[_Trial, int]:
    """A step length meeting the strong Wolfe conditions (torch's, after minFunc's).

    With φ(t) = f(θ + t·d), sufficient decrease φ(t) ≤ φ(0) + c₁·t·φ'(0) and
    curvature |φ'(t)| ≤ -c₂·φ'(0). Bracketing extrapolates by cubic steps in
    [t + 0.01·(t - t_prev), 10·t] until an interval holds an acceptable point;
    zoom shrinks it by cubic steps kept at least 10% of its width from its
    ends. ``max_ls`` bounds the evaluations after the first. Returns the trial
    chosen and the number of evaluations.
    """
    f, gtd = start.f, start.gtd

    def armijo_fails(trial: _Trial) -> bool:
        return bool(trial.f > f + WOLFE_C1 * trial.t * gtd)

    def curvature_holds(trial: _Trial) -> bool:
        return bool(abs(trial.gtd) <= -WOLFE_C2 * gtd)

    new, evals, iteration = evaluate(t), 1, 0
    prev = start
    bracket: list[_Trial] = []
    done = False
    while iteration < max_ls:
        if armijo_fails(new) or (iteration > 1 and new.f >= prev.f):
            bracket = [prev, new]
            break
        if curvature_holds(new):
            bracket, done = [new], True
            break
        if new.gtd >= 0:
            bracket = [prev, new]
            break
        bounds = (new.t + 0.01 * (new.t - prev.t), new.t * 10)
        prev, new = new, evaluate(_cubic_minimum(prev, new, bounds))
        evals += 1
        iteration += 1
    if iteration == max_ls:
        bracket = [start, new]

    low, high = (0, 1) if bracket[0].f <= bracket[-1].f else (1, 0)
    insufficient_progress = False
    while not done and iteration < max_ls:
        if abs(bracket[1].t - bracket[0].t) * d_norm < tolerance_change:
            break
        t = _cubic_minimum(bracket[0], bracket[1])
        left, right = min(bracket[0].t, bracket[1].t), max(bracket[0].t, bracket[1].t)
        margin = 0.1 * (right - left)
        # A point too close to an end (twice running, or outside) moves to 10% inside it.
        if min(right - t, t - left) < margin:
            if insufficient_progress or t >= right or t <= left:
                t = right - margin if abs(t - right) < abs(t - left) else left + margin
                insufficient_progress = False
            else:
                insufficient_progress = True
        else:
            insufficient_progress = False
        new = evaluate(t)
        evals += 1
        iteration += 1
        if armijo_fails(new) or new.f >= bracket[low].f:
            bracket[high] = new
            low, high = (0, 1) if bracket[0].f <= bracket[1].f else (1, 0)
        else:
            if curvature_holds(new):
                done = True
            elif new.gtd * (bracket[high].t - bracket[low].t) >= 0:
                bracket[high] = bracket[low]
            bracket[low] = new
    return bracket[low], evals


class LBFGS(Optimizer):
    r"""L-BFGS with torch's interface: ``step(closure)`` minimizes for up to ``max_iter`` iterations.

    ``LBFGS(params, lr=1, max_iter=20, max_eval=None, tolerance_grad=1e-7,
    tolerance_change=1e-9, history_size=100, line_search_fn=None)``, torch
    2.13's signature; ``max_eval`` defaults to ``max_iter * 5 // 4``. It is
    torch's algorithm (after minFunc), decision for decision. On the flat
    vector θ of all parameters, each ``step(closure)`` does::

        f, g ← closure();  stop if ‖g‖∞ ≤ tolerance_grad
        repeat up to max_iter times:
            the first iteration of the run:  d = -g, no pairs, H₀ = 1
            otherwise:  y = g - g_prev,  s = t·d
                if yᵀs > 1e-10: remember (y, s, ρ = 1/yᵀs), forgetting the oldest
                                 pair beyond history_size;  H₀ = yᵀs / yᵀy
                d = -H·g by the two-loop recursion over the m pairs, newest first:
                    q = -g;  α_i = ρ_i·s_iᵀq,  q ← q - α_i·y_i      (i = m-1 … 0)
                    r = H₀·q;  β = ρ_i·y_iᵀr,  r ← r + (α_i - β)·s_i  (i = 0 … m-1);  d = r
            t = lr·min(1, 1/‖g‖₁) at the first iteration of the run, else lr
            stop if gᵀd > -tolerance_change
            line_search_fn="strong_wolfe": t ← a step meeting the strong Wolfe conditions
                (c₁ = 1e-4, c₂ = 0.9; cubic interpolation, bracketing then zoom), and f, g there
            θ ← θ + t·d;  without a line search f, g ← closure(), except at the last iteration
            stop at max_iter, when this step's evaluations reach max_eval, when
                ‖g‖∞ ≤ tolerance_grad, when ‖t·d‖∞ ≤ tolerance_change, or when
                |f - f_prev| < tolerance_change

    The pairs, d, t and the rest persist between steps, so ``step`` may be
    called repeatedly to continue the run. As torch's, it is meant for
    deterministic (full-batch) objectives.

    Parameters:
      params: an iterable of :class:`Parameter` (or one group dict): one
        group only, as torch (``ValueError`` otherwise). Complex Parameters
        count as their real and imaginary parts, as in torch.
      lr: the step length's scale (>= 0).
      max_iter: iterations per ``step`` (>= 1).
      max_eval: closure calls per ``step`` (>= 1; the line search's last may go one
        beyond, as torch's), or ``None`` for ``max_iter * 5 // 4``.
      tolerance_grad: stop once ‖g‖∞ is at most this (>= 0).
      tolerance_change: stop once the loss, the step or the slope changes less (>= 0).
      history_size: pairs remembered (>= 1).
      line_search_fn: ``None`` (fixed step t) or ``"strong_wolfe"``.

    The closure protocol: ``step(closure)`` calls ``closure()`` once per
    evaluation; it must zero the gradients, compute the loss, call
    :func:`lucid_fx.backward` and return the loss. ``step`` returns the first
    evaluation's loss, as torch. Parameters without a gradient count as zeros.

    Attributes:
      param_groups: one group with every hyper-parameter; a value written
        there (a scheduler's lr) takes effect at the next ``step``.
      state: ``{first parameter: {...}}`` with torch's keys (``func_evals``,
        ``n_iter``, ``d``, ``t``, ``old_dirs``, ``old_stps``, ``ro``,
        ``H_diag``, ``prev_flat_grad``, ``prev_loss``, ``al``); torch keeps
        the whole state under its first parameter too.

    Migrating from PyTorch: ``state_dict()`` has torch's layout (NumPy arrays
    where torch has tensors), ``load_state_dict`` also takes
    ``torch.optim.LBFGS.state_dict()``, and :meth:`torch_state_dict` exports
    one that torch loads; either way the run continues as the other's would.

    Differences from torch: none in the algorithm; every decision is torch's
    and the iterates agree to rounding. XLA's dot products round differently
    from torch's (MKL's) by about an ulp, and an ill-conditioned objective
    amplifies that as it amplifies any one-ulp change (docs/lbfgs.md has the
    figures). The arguments are checked at construction (torch checks lr only),
    one group is enforced by ``add_param_group`` too, and a ``history_size``
    lowered in ``param_groups`` mid-run drops the oldest pairs (torch's memory
    would keep growing).

    Example:
      >>> import jax.numpy as jnp, lucid_fx as fx
      >>> model = {"xy": fx.Parameter(jnp.array([-1.5, 2.0]))}
      >>> def rosenbrock(m):
      ...     x, y = m["xy"]
      ...     return (1 - x) ** 2 + 100 * (y - x**2) ** 2
      >>> optimizer = fx.LBFGS(fx.parameters(model), line_search_fn="strong_wolfe")
      >>> def closure():
      ...     optimizer.zero_grad()
      ...     return fx.backward(rosenbrock, model)
      >>> first = optimizer.step(closure)
      >>> for _ in range(4):
      ...     _ = optimizer.step(closure)
      >>> float(first), bool(rosenbrock({"xy": model["xy"].value}) < 1e-8)
      (12.5, True)
    """

    # LBFGS steps with its own loop, not a transform: the base reads its
    # hyper-parameters' names and defaults, and their check, from here.
    hyperparameters = staticmethod(_lbfgs_hyperparameters)

    def __init__(
        self,
        params: Params,
        lr: float = 1,
        max_iter: int = 20,
        max_eval: int | None = None,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        history_size: int = 100,
        line_search_fn: str | None = None,
    ) -> None:
        check_eager("LBFGS(...)")
        _lbfgs_hyperparameters(lr, max_iter, max_eval, tolerance_grad, tolerance_change,
                               history_size, line_search_fn)
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        super().__init__(
            _one_group(params), lr=lr, max_iter=max_iter, max_eval=max_eval,
            tolerance_grad=tolerance_grad, tolerance_change=tolerance_change,
            history_size=history_size, line_search_fn=line_search_fn,
        )
        group = self.param_groups[0]
        if group["max_eval"] is None:  # a group dict's explicit None
            group["max_eval"] = group["max_iter"] * 5 // 4
        self._params: list[Parameter] = group["params"]
        self._layout = _vector_layout(self._params)
        self._zeros = jnp.zeros(self._layout.total, self._layout.dtype)
        self._lbfgs: _State | None = None  # None until the first step

    def add_param_group(self, param_group: ParamGroup) -> None:
        """Raises ``ValueError``: LBFGS optimizes one group (torch's LBFGS fails at its step)."""
        raise ValueError("LBFGS doesn't support per-parameter options (parameter groups): "
                         "put every Parameter in the one group")

    # ----- state -------------------------------------------------------------------------

    @property
    def state(self) -> Mapping[Parameter, dict[str, Any]]:
        """``{first parameter: torch's state dict entry}`` (jax arrays); a read-only snapshot."""
        entries = {} if self._lbfgs is None else {
            self._params[0]: _state_entry(self._lbfgs, jnp.asarray)}
        return MappingProxyType(defaultdict(dict, entries))

    def _param_states(self) -> list[tuple[Parameter, dict[str, Any]]]:
        # The base's state_dict() frames these (indices, param_groups, hooks).
        if self._lbfgs is None:
            return []
        return [(self._params[0], _state_entry(self._lbfgs, host_array))]

    def state_dict(self) -> StateDict:
        """torch's layout: ``{"state": {0: {...}}, "param_groups": [{...}]}``, NumPy for tensors.

        The entry has torch's keys and types: vectors and per-pair lists as
        arrays (0-d for ``ro``, ``al`` and torch's tensor scalars), counts and
        ``prev_loss`` as Python numbers, ``H_diag`` the number 1 until the
        first pair, ``al`` padded with ``None`` to its length.
        """
        return super().state_dict()

    def _checked_entry(
        self, p: Parameter, entry: Any, *, where: str, group: Mapping[str, Any]
    ) -> dict[str, Any]:
        if p is not self._params[0]:
            raise ValueError(f"{where}: LBFGS keeps its whole state under its first "
                             f"parameter's index, this entry is for another parameter")
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where} must be a dict, got {type(entry).__name__}")  # noqa: TRY004
        unknown = set(entry) - set(_STATE_KEYS)
        if unknown:
            raise ValueError(f"{where} has unknown key(s) {sorted(unknown)}; "
                             f"known: {sorted(_STATE_KEYS)}")
        return {"where": where, "entry": entry}

    def load_state_dict(self, state_dict: StateDict) -> None:
        """Restores a :meth:`state_dict` or a ``torch.optim.LBFGS.state_dict()`` (tensors).

        Every entry is checked first (keys, shapes, dtypes, list lengths);
        on ``ValueError`` nothing has changed.
        """
        check_eager("LBFGS.load_state_dict()")
        state_dict = self._hooks.before_load(self, state_dict)
        if isinstance(state_dict, Mapping) and isinstance(state_dict.get("state"), Mapping):
            state_dict = {**state_dict, "state": {
                index: {k: _numpy_tree(v) for k, v in entry.items()}
                if isinstance(entry, Mapping) else entry
                for index, entry in state_dict["state"].items()}}
            state_dict = self._in_my_order(state_dict)
        new_groups, entries = self._validated(state_dict)
        hyper = options_of({**self.param_groups[0], **new_groups[0]}, self.defaults)
        state = None
        if entries:
            saved: Mapping[str, Any] = entries[self._params[0]]
            reader = _EntryReader(saved["entry"], saved["where"], self._layout)
            state = reader.state(hyper["history_size"])
        self.param_groups[0].update(new_groups[0])
        self._lbfgs = state
        self._hooks.after_load(self)

    def _in_my_order(self, state_dict: StateDict) -> StateDict:
        """A named dict whose Parameters are listed in another order (torch's, from its
        ``named_parameters()``), with its vectors and indices in this optimizer's order;
        any other dict as given (the base's checks then name what is wrong with it)."""
        groups, mine = state_dict.get("param_groups"), self.param_groups[0].get("param_names")
        if mine is None or not isinstance(groups, (list, tuple)) or len(groups) != 1 or (
                not isinstance(groups[0], Mapping)):
            return state_dict
        theirs = groups[0].get("param_names")
        if not isinstance(theirs, (list, tuple)) or sorted(theirs) != sorted(mine) or (
                list(theirs) == list(mine)) or len(set(mine)) != len(mine):
            return state_dict
        order = [mine.index(name) for name in theirs]  # theirs, as indices into mine
        first = groups[0]["params"][0]  # torch keeps the whole state under its first
        back = np.argsort(self._layout.gather_index(order))
        return {"param_groups": [{**groups[0], "params": list(range(len(mine))),
                                  "param_names": list(mine)}],
                "state": {0: _reordered(state_dict["state"][first], back)}
                if first in state_dict["state"] else {}}

    def torch_state_dict(self, param_names: ParamNames | None = None) -> StateDict:
        """This optimizer's state in the form ``torch.optim.LBFGS.load_state_dict`` takes.

        :meth:`state_dict` with CPU torch tensors for its arrays (torch must be
        installed); torch then continues the run as this optimizer would.
        ``param_names``, the torch side's names in its order, lays the flat
        vectors out in that order (torch pairs by position, and its flat vector
        follows its parameters' order), as
        :meth:`lucid_fx.Optimizer.torch_state_dict` does.
        """
        sd = self.state_dict()
        if param_names is not None:
            [order] = torch_positions(sd, param_names)  # one group: indices are positions
            index = self._layout.gather_index(order)
            names = sd["param_groups"][0]["param_names"]
            sd = {"state": {0: _reordered(sd["state"][0], index)} if sd["state"] else {},
                  "param_groups": [{**sd["param_groups"][0], "params": list(range(len(order))),
                                    "param_names": [names[i] for i in order]}]}

        def tensor(value: Any) -> Any:
            if isinstance(value, list):
                return [tensor(v) for v in value]
            return torch_tensor(value) if isinstance(value, np.ndarray) else value

        return {"state": {i: {k: tensor(v) for k, v in entry.items()}
                          for i, entry in sd["state"].items()},
                "param_groups": sd["param_groups"]}

    # ----- the step ----------------------------------------------------------------------

    def step(self, closure: Closure | None = None) -> Any:
        """Up to ``max_iter`` L-BFGS iterations; returns the closure's first loss.

        ``closure`` is required: it zeroes the gradients, computes the loss,
        calls :func:`lucid_fx.backward` and returns the loss. If it raises, the
        Parameters may have moved, but the optimizer's state is as before.
        """
        check_eager("LBFGS.step()")
        closure, args, kwargs = self._hooks.before_step(self, closure)
        if closure is None:
            raise TypeError("LBFGS.step() needs a closure that zeroes the gradients, computes "
                            "the loss, calls fx.backward and returns the loss")
        self._check_not_retired()
        hyper = options_of(self.param_groups[0], self.defaults)
        self._check_hyperparameters(hyper)
        with np.errstate(all="ignore"):  # torch's scalars overflow to inf silently
            loss, self._lbfgs = self._iterate(closure, self._lbfgs or _State(), **hyper)
        self._hooks.after_step(self, args, kwargs)
        return loss

    def _write(self, pieces: Iterable[jax.Array]) -> None:
        for p, value in zip(self._params, pieces):
            p.value = value

    def _gather(self, arrays: list[jax.Array | None], d: jax.Array | None) -> tuple[Any, ...]:
        """The flat vector of ``arrays`` (values or grads), and host (vᵀd, ‖v‖∞, ‖v‖₁)."""
        v, vd, v_max, v_sum = _gathered(self._layout, arrays, self._zeros if d is None else d)
        return (v, *_host(vd, v_max, v_sum))

    def _grads(self) -> list[jax.Array | None]:
        grads = [p.grad for p in self._params]
        for i, (p, g) in enumerate(zip(self._params, grads)):
            if g is not None and (np.shape(g) != p.shape or jnp.result_type(g) != p.dtype):
                raise ValueError(
                    f"params[{i}] {p!r} has a gradient of shape {np.shape(g)} and dtype "
                    f"{jnp.result_type(g)}; expected its own shape and dtype"
                )
        return grads

    def _evaluate(self, closure: Closure, d: jax.Array | None) -> tuple[Any, ...]:
        """f = closure() as a float, the flat gradient g, and host (gᵀd, ‖g‖∞, ‖g‖₁)."""
        loss = float(closure())
        return (loss, *self._gather(self._grads(), d))

    def _trial(self, closure: Closure, x: jax.Array, d: jax.Array, t: Number) -> _Trial:
        """The line search's evaluation at θ + t·d (torch's ``_directional_evaluate``)."""
        pieces, _, _ = _moved(self._layout, x, jnp.asarray(t, self._layout.dtype), d)
        self._write(pieces)
        f, g, gtd, g_max, _ = self._evaluate(closure, d)
        return _Trial(t, f, g, gtd, g_max)

    def _iterate(
        self, closure: Closure, state: _State, *, lr: Any, max_iter: int, max_eval: int | None,
        tolerance_grad: float, tolerance_change: float, history_size: int,
        line_search_fn: str | None,
    ) -> tuple[Any, _State]:
        """torch's step from ``state``; returns the first loss and the new state.

        The names are torch's where its state has them; ``n_run`` counts the
        iterations of the whole run (torch's ``state["n_iter"]``), ``n_iter``
        this step's.
        """
        layout = self._layout
        if not isinstance(lr, (int, float)):  # an array or tensor: its number, as torch
            lr = np.asarray(lr).item()
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        x = self._gather([p.value for p in self._params], None)[0]
        orig_loss = closure()
        loss = float(orig_loss)
        g, _, g_max, g_sum = self._gather(self._grads(), None)
        evals, func_evals, n_run = 1, state.func_evals + 1, state.n_iter
        if g_max <= tolerance_grad:
            return orig_loss, dataclasses.replace(state, func_evals=func_evals)

        d, t, h_diag = state.d, state.t, state.h_diag
        dirs, stps, ros = list(state.old_dirs), list(state.old_stps), list(state.ro)
        prev_g, prev_loss, al = state.prev_flat_grad, state.prev_loss, state.al
        cast = partial(jnp.asarray, dtype=layout.dtype)
        n_iter, opt_cond = 0, False
        while n_iter < max_iter:
            n_iter += 1
            n_run += 1
            if n_run == 1:  # the run's first iteration: steepest descent, an empty memory
                d, dirs, stps, ros, h_diag = _scaled(g, cast(-1)), [], [], [], 1
            else:
                assert prev_g is not None and d is not None  # set by the run's first iteration
                d, h_diag, al = self._direction(g, prev_g, d, t, dirs, stps, ros, h_diag, al,
                                                history_size)
            gtd, d_norm = _host(*_slope(g, d))
            prev_g, prev_loss = g, loss
            t = min(1.0, 1.0 / g_sum) * lr if n_run == 1 else lr
            if gtd > -tolerance_change:
                break

            step_evals = 0
            if line_search_fn == "strong_wolfe":
                start = _Trial(0, loss, g, gtd, g_max)
                chosen, step_evals = _strong_wolfe(
                    partial(self._trial, closure, x, d), start, t, d_norm, tolerance_change,
                    max_eval - evals)
                t, loss, g, g_max = chosen.t, chosen.f, chosen.g, chosen.g_max
                pieces, x, step_max = _moved(layout, x, cast(t), d)
                self._write(pieces)
                opt_cond = bool(g_max <= tolerance_grad)
            else:
                pieces, x, step_max = _moved(layout, x, cast(t), d)
                self._write(pieces)
                if n_iter != max_iter:
                    # Not at the last iteration: the next step evaluates anyway.
                    loss, g, _, g_max, _ = self._evaluate(closure, None)
                    opt_cond = bool(g_max <= tolerance_grad)
                    step_evals = 1
            evals += step_evals
            func_evals += step_evals

            if n_iter == max_iter or evals >= max_eval or opt_cond:
                break
            if _host(step_max)[0] <= tolerance_change or abs(loss - prev_loss) < tolerance_change:
                break

        return orig_loss, _State(func_evals, n_run, d, t, tuple(dirs), tuple(stps), tuple(ros),
                                 h_diag, prev_g, prev_loss, al)

    def _direction(
        self, g: jax.Array, prev_g: jax.Array, d: jax.Array, t: Number, dirs: list[jax.Array],
        stps: list[jax.Array], ros: list[jax.Array], h_diag: Number,
        al: tuple[jax.Array | None, ...] | None, history_size: int,
    ) -> tuple[jax.Array, Number, tuple[jax.Array | None, ...]]:
        """Remembers the last step's pair (in place) and returns d = -H·g, H_diag and α."""
        cast = partial(jnp.asarray, dtype=self._layout.dtype)
        y, s, ys, ro, new_h_diag = _pair(g, prev_g, d, cast(t))
        ys_host, new_h_diag = _host(ys, new_h_diag)
        if ys_host > CURVATURE_MIN:
            # torch forgets the oldest pair when the memory is full; after history_size
            # was lowered in param_groups, as many as it takes (torch keeps them all).
            while len(dirs) >= history_size:
                del dirs[0], stps[0], ros[0]
            dirs.append(y)
            stps.append(s)
            ros.append(ro)
            h_diag = new_h_diag
        # torch's al: made at the first recursion with history_size entries, None until used.
        alphas: list[jax.Array | None] = list(al) if al is not None else [None] * history_size
        alphas += [None] * (len(dirs) - len(alphas))
        q = _scaled(g, cast(-1))
        for i in reversed(range(len(dirs))):
            q, alphas[i] = _newest_first(q, dirs[i], stps[i], ros[i])
        r = _scaled(q, cast(h_diag))
        for i in range(len(dirs)):
            r = _oldest_first(r, dirs[i], stps[i], ros[i], alphas[i])
        return r, h_diag, tuple(alphas)


def _one_group(params: Params) -> Params:
    """``params``, read once; ``ValueError`` for more than one group, before anything moves."""
    if isinstance(params, (set, frozenset, Mapping, Parameter)) or not isinstance(params, Iterable):
        return params  # the base explains what is wrong with it
    entries: list[Any] = list(params)
    if len(entries) > 1 and isinstance(entries[0], dict):
        raise ValueError(
            f"LBFGS doesn't support per-parameter options (parameter groups): got "
            f"{len(entries)} groups; put every Parameter in one group, as torch requires"
        )
    return entries
