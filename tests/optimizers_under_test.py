"""The table of optimizers under test, and the runs that generic tests share.

One :class:`Row` per optimizer: its factory, the ``torch.optim`` class it must equal and
the ``fx`` class over it, its grid of labelled hyper-parameter configurations (every flag
combination) and special cases, its float64 NumPy reference (tests/reference.py), the
inputs it refuses (:class:`Bad`), and what its tests allow or expect. Its buffers are
what its state's schema declares. tests/test_family.py iterates ``ROWS``; the
optimizer's own test file takes its row by name, for what only that optimizer has; and
tests/test_reliability.py renders the rows' bad inputs into docs/errors.md.

:func:`run_many` trains labelled configurations on small pytrees with precomputed
gradients (no autodiff, so only the update rule is compared) with lucid_fx, torch and
the reference side by side, and returns the worst errors per quantity.
:func:`stateful_faces` runs a row's whole grid through the stateful face, torch and the
functional face, once per process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import itertools
import math
import re
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import (
    adadelta_reference,
    adagrad_reference,
    adam_reference,
    adamax_reference,
    asgd_reference,
    max_rel_error,
    nadam_reference,
    radam_reference,
    reference_run,
    rprop_reference,
    sgd_reference,
)
from reference_shape_aware import adafactor_reference, muon_reference

import lucid_fx as fx
from lucid_fx._src.core import schema
from lucid_fx._src.core.scalars import as_precise, is_static
from lucid_fx._src.transforms.adam import adam, adamw
from lucid_fx._src.transforms.sgd import sgd

# Tolerances, as max_rel_error (|a - b| / max(1, |b|)) over every step and every leaf.
# float32 against torch: both round each operation of the same formulas, in the same
# order; they differ where XLA fuses a multiply-add into one FMA that torch's CPU kernel
# rounds twice, and where torch's vectorized float32 sqrt is off by one ulp (it is not
# correctly rounded). That is ≤ 1 ulp (6e-8) per step and parameter; over STEPS = 20
# steps it measured ≤ 6e-7 (Adam with decoupled weight decay, whose θ·(1-ηλ) + u XLA
# fuses), so 2e-6 leaves room for a different CPU without hiding a wrong formula (the
# smallest formula error, ε inside the sqrt, gives 1e-3).
RTOL_TORCH_F32 = 2e-6
RTOL_TORCH_F64 = 1e-12  # float64: rounding only (measured ≤ 1e-15)
# float32 against the exact (float64) reference: the float32 run's own rounding, the
# same ≤ 1 ulp per step as above, accumulated over STEPS steps (measured ≤ 1e-6).
RTOL_REF_F32 = 2e-6
RTOL_REF_F64 = 1e-12
STEPS = 20
TESTS_DIR = Path(__file__).resolve().parent
# lucid_fx's own options: torch's classes and the references take none of them.
LUCID_ONLY = ("skip_nonfinite", "state_dtype", "ns_dtype")


def without_lucid_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` as torch's class and the reference take it."""
    return {k: v for k, v in config.items() if k not in LUCID_ONLY}


class Bad(NamedTuple):
    """Keyword arguments that both faces refuse with a ValueError matching ``pattern``."""

    label: str
    kwargs: Mapping[str, Any]
    pattern: str
    torch_refuses: bool = False  # torch raises a ValueError for them too


def _refused(name: str, value: Any, expected: str, *, torch_refuses: bool = True) -> Bad:
    """``name=value`` refused, the message naming both and what was ``expected``."""
    return Bad(f"{name}={value!r}", {name: value},
               rf"Invalid {name} value: {re.escape(repr(value))} \({re.escape(expected)}\)",
               torch_refuses)


def _nonnegative(*, torch_refuses: bool = True, **negatives: float) -> list[Bad]:
    """Each name refused at the given negative value and at nan (by torch too, where it
    checks the name)."""
    return [_refused(name, value, "expected a number >= 0.0", torch_refuses=torch_refuses)
            for name, negative in negatives.items() for value in (negative, math.nan)]


def _betas() -> list[Bad]:
    """Adam's pair: each β in [0, 1), and a pair it must be."""
    return [
        Bad(f"betas[{i}]={value}", {"betas": (value, 0.999) if i == 0 else (0.9, value)},
            rf"Invalid betas\[{i}\] value: {re.escape(repr(value))} "
            r"\(expected a number in \[0\.0, 1\.0\)\)", torch_refuses=True)
        for i in (0, 1) for value in (1.0, -0.1, math.nan)
    ] + [
        Bad("betas=0.9", {"betas": 0.9},
            r"Invalid betas value: 0\.9 \(expected a pair \(beta1, beta2\)"),
        Bad("betas of 3", {"betas": (0.9, 0.99, 0.999)},
            r"Invalid betas value: \(0\.9, 0\.99, 0\.999\)"),
    ]


# Refused by every optimizer of the family: lr not a real number, a non-bool flag, an int dtype.
COMMON_BAD = [
    *(Bad(f"lr={value!r}", {"lr": value},
          rf"Invalid lr value: {re.escape(repr(value))} \(expected a real number\)")
      for value in ("0.1", True, 1 + 1j, None)),
    Bad("maximize=1", {"maximize": 1}, r"Invalid maximize value: 1 \(expected True or False\)"),
    Bad("maximize=str", {"maximize": "no"},
        r"Invalid maximize value: 'no' \(expected True or False\)"),
    *(Bad(f"skip_nonfinite={value!r}", {"skip_nonfinite": value},
          rf"Invalid skip_nonfinite value: {re.escape(repr(value))} \(expected True or False\)")
      for value in ("yes", None, 1)),
    *(Bad(f"state_dtype={dtype.__name__}", {"state_dtype": dtype},
          rf"Invalid state_dtype value: .*{dtype.__name__}.* \(expected None or a floating-point "
          r"dtype\)") for dtype in (np.int8, np.int32)),
]


@dataclasses.dataclass(frozen=True)
class Row:
    """One optimizer under test: what tests/test_family.py runs for it.

    Attributes:
      name: the functional factory's name (``fx.<name>``).
      factory: ``factory(**config) -> GradientTransformation``.
      torch_class: the name of the matching class in ``torch.optim``.
      stateful: the ``fx`` class over ``factory`` (``fx.SGD`` for ``fx.sgd``).
      grid: label -> keyword arguments; every valid flag combination. The same
        keywords go to ``factory``, ``stateful``, ``torch_class`` and ``reference``.
        The last is the richest (every buffer on): the generic tests' configuration.
      reference: ``reference(params, grads_seq, **config) -> (history, state)``
        with torch's state keys (tests/reference.py).
      special_cases: labelled configurations beyond the flag grid (edge values of the
        numbers: RMSprop's α = 0 and α = 1), run by the parity tests as the grid is.
      bad_inputs: keyword arguments both faces refuse, with the message's pattern
        (:class:`Bad`; ``torch_refuses`` where torch raises for them too). They also
        make docs/errors.md's hyper-parameter rows (tests/test_reliability.py).
      torch_scale: how our buffer relates to torch's: ours = torch's × this.
      torch_complex: whether torch treats complex parameters as we do.
      own_parity: torch differs from it on purpose where lr changes (RMSprop keeps η
        inside its momentum buffer): its changing-lr parity runs are compared with the
        reference only, and its own test file shows how torch differs.
      complex_labels: configurations run with complex parameters too, besides
        ``"defaults"`` and the richest (a flag the richest leaves off: SGD's nesterov).
      lrs: η step by step for the changing-lr parity runs; ``None`` where lr is
        read once, by init (Rprop's initial step size), so a schedule is refused.
      needs_params: (config, reason) under which ``update`` needs params, or ``None``.
      own_scale: buffers far below 1 (Adadelta's ``acc_delta`` is ~1e-6), whose error
        relative to max(1, |x|) cannot see a wrong value: also compared relative
        to their own size.
      follows_params: buffers that track the parameters themselves (ASGD's average
        ``ax``), so in low precision they hold the rounded parameters' history.
      faces_ulps: how far the stateful face may be from the functional one, in ulps
        relative to max(1, |x|), per state key (``"value"``: the Parameter's value);
        a key not named is bit for bit. The same math on the same traced scalars,
        masked alike: only where XLA contracts a multiply-add into an FMA in one
        program and not in the other may they differ (as measured, per key).
      torch_state_at_construction: torch creates every Parameter's state in the
        constructor (Adagrad's ``sum``), not at its first step.
      cpu_step_copies: copies of a donated, parameter-sized buffer in the stateful step
        as XLA:CPU compiles it (with ``packed_step.CPU_COMPILER_OPTIONS``): each costs a
        read and a write of the buffer per step. None but where measured otherwise.
      matrices: its parameters must be 2-D (Muon): the tests' shapes are taken as
        matrices (:meth:`shape`).
      real_only: both faces refuse complex parameters, as torch does (Muon, Adafactor):
        no complex cases.
      torch_numerics: a context in which torch computes as this row's configurations
        ask (Muon's iteration in the parameters' dtype rather than bfloat16).
    """

    name: str
    factory: Callable[..., Any]
    torch_class: str
    stateful: type
    grid: Mapping[str, Mapping[str, Any]]
    reference: Callable[..., tuple[list[list[np.ndarray]], dict[str, Any]]]
    special_cases: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    bad_inputs: tuple[Bad, ...] = ()
    torch_scale: Callable[[str, Mapping[str, Any]], float] = lambda key, config: 1.0
    torch_complex: bool = True
    own_parity: bool = False
    complex_labels: tuple[str, ...] = ()
    lrs: tuple[float, ...] | None = None
    needs_params: tuple[Mapping[str, Any], str] | None = ({"weight_decay": 0.1},
                                                           "weight_decay is non-zero")
    own_scale: tuple[str, ...] = ()
    follows_params: tuple[str, ...] = ()
    faces_ulps: Mapping[str, float] = dataclasses.field(default_factory=dict)
    torch_state_at_construction: bool = False
    cpu_step_copies: int = 0
    matrices: bool = False
    real_only: bool = False
    torch_numerics: Callable[[Any], contextlib.AbstractContextManager[Any]] = (
        lambda torch: contextlib.nullcontext())

    def shape(self, *shape: int) -> tuple[int, ...]:
        """A test's parameter shape as this optimizer takes it: unchanged, or for a row of
        ``matrices`` a matrix, a vector as one row (``(n,) -> (1, n)``, which broadcasts
        as the vector did), a number as 1×1, more dimensions folded into the columns."""
        if not self.matrices or len(shape) == 2:
            return tuple(shape)
        if not shape:
            return (1, 1)
        return (1, shape[0]) if len(shape) == 1 else (shape[0], math.prod(shape[1:]))

    def array(self, x: Any) -> Any:
        """``x`` reshaped as :meth:`shape` takes its shape."""
        return x.reshape(self.shape(*np.shape(x)))

    def torch_optimizer(self, torch: Any, params: Any, config: Mapping[str, Any]) -> Any:
        """torch's class over ``params`` with ``config`` (its single-tensor kernels, where
        it has others: the order of operations our kernels follow)."""
        cls = getattr(torch.optim, self.torch_class)
        extra = {"foreach": False} if "foreach" in inspect.signature(cls).parameters else {}
        return cls(params, **without_lucid_options(config), **extra)

    @property
    def richest(self) -> str:
        """The grid's last label: every flag on, so every buffer exists."""
        return list(self.grid)[-1]

    @property
    def buffers(self) -> tuple[str, ...]:
        """The per-parameter state arrays torch has too (its state keys), as the state's
        schema declares them."""
        return tuple(name for name, field in schema.of(self.factory).fields.items()
                     if field.kind == "array" and field.torch_key)

    @property
    def scalars(self) -> tuple[str, ...]:
        """The per-parameter 0-d state fields other than the step count (NAdam's
        ``mu_product``, ASGD's ``eta`` and ``mu``), as the state's schema declares them."""
        return tuple(name for name, field in schema.of(self.factory).fields.items()
                     if field.kind == "scalar" and name != "step")

    @property
    def configs(self) -> dict[str, Mapping[str, Any]]:
        """The grid, then the special cases: every configuration the parity tests run."""
        return {**self.grid, **self.special_cases}


def _product_grid(
    axes: Mapping[str, tuple[Any, ...]],
    base: Mapping[str, Any],
    valid: Callable[[dict[str, Any]], bool] = lambda config: True,
) -> dict[str, dict[str, Any]]:
    """Every combination of ``axes`` (itertools.product), labelled by its non-default values."""
    grid = {}
    for values in itertools.product(*axes.values()):
        config = dict(zip(axes, values))
        if not valid(config):
            continue
        label = ",".join(f"{k}={v}" for k, v in config.items() if v != axes[k][0]) or "defaults"
        grid[label] = {**base, **config}
    return grid


def sgd_is_valid(config: Mapping[str, Any]) -> bool:
    """torch's rule: Nesterov needs momentum > 0 and zero dampening."""
    return not config.get("nesterov") or (
        config.get("momentum", 0) > 0 and config.get("dampening", 0) == 0)


SGD_AXES: dict[str, tuple[Any, ...]] = {
    "momentum": (0, 0.9), "dampening": (0, 0.1), "nesterov": (False, True),
    "weight_decay": (0, 0.1), "maximize": (False, True),
}
ADAM_AXES: dict[str, tuple[Any, ...]] = {
    "amsgrad": (False, True), "weight_decay": (0, 0.1), "maximize": (False, True),
    "decoupled_weight_decay": (False, True),
}
ADAMW_AXES: dict[str, tuple[Any, ...]] = {
    "amsgrad": (False, True), "weight_decay": (1e-2, 0.1), "maximize": (False, True),
}
RMSPROP_AXES: dict[str, tuple[Any, ...]] = {
    "momentum": (0, 0.9), "centered": (False, True), "weight_decay": (0, 0.1),
    "maximize": (False, True),
}

def _falling(lr: float, jump: float) -> tuple[float, ...]:
    """η for the changing-lr runs: falls by 0.8 a step, jumps up to ``jump`` every fifth."""
    return tuple(lr * 0.8**t if t % 5 else jump for t in range(STEPS))


SGD_BAD = [
    # torch checks `x < 0.0`, which nan passes: it refuses the negative values only.
    *(bad._replace(torch_refuses="nan" not in bad.label)
      for bad in _nonnegative(lr=-0.1, momentum=-0.9, weight_decay=-1e-4)),
    *(_refused("dampening", value, "expected a real number", torch_refuses=False)
      for value in (math.nan, "0.1")),
    # Complete: written into a group whose momentum is 0.9, they still say the same.
    Bad("nesterov without momentum", {"nesterov": True, "momentum": 0, "dampening": 0},
        r"Invalid nesterov value: True \(Nesterov momentum needs momentum > 0 and dampening = 0; "
        r"got momentum=0, dampening=0\)", torch_refuses=True),
    Bad("nesterov with dampening", {"nesterov": True, "momentum": 0.9, "dampening": 0.1},
        r"Invalid nesterov value: True .*got momentum=0\.9, dampening=0\.1\)", torch_refuses=True),
    Bad("nesterov=1", {"nesterov": 1}, r"Invalid nesterov value: 1 \(expected True or False\)"),
]
ADAM_BAD = [
    *_nonnegative(lr=-0.1, eps=-1e-08, weight_decay=-1e-4), *_betas(),
    Bad("amsgrad=str", {"amsgrad": "yes"},
        r"Invalid amsgrad value: 'yes' \(expected True or False\)"),
]
RMSPROP_BAD = [
    *_nonnegative(lr=-0.1, eps=-1e-08, momentum=-0.9, weight_decay=-1e-4),
    *(_refused("alpha", value, "expected a number in [0.0, 1.0]", torch_refuses=value != 1.5)
      for value in (-0.5, 1.5, math.nan)),
    Bad("alpha=[0.9]", {"alpha": [0.9]},
        r"Invalid alpha value: expected a scalar hyper-parameter, got an array of shape \(1,\)"),
    Bad("centered=str", {"centered": "no"},
        r"Invalid centered value: 'no' \(expected True or False\)"),
]
ADAGRAD_BAD = [
    *_nonnegative(lr=-0.1, lr_decay=-0.1, weight_decay=-0.1, initial_accumulator_value=-0.1,
                  eps=-0.1),
    Bad("eps=array", {"eps": np.ones(2)}, r"Invalid eps value: expected a scalar hyper-parameter"),
]
ADADELTA_BAD = [
    *_nonnegative(lr=-0.1, eps=-0.1, weight_decay=-0.1),
    *(_refused("rho", value, "expected a number in [0.0, 1.0]") for value in (-0.1, 1.1, math.nan)),
]
RPROP_BAD = [
    *_nonnegative(lr=-0.1),
    Bad("etas=0.5", {"etas": 0.5},
        r"Invalid etas value: 0\.5 \(expected a pair \(etaminus, etaplus\), 0 < etaminus < 1 < "
        r"etaplus\)"),
    Bad("etas of 3", {"etas": (0.5, 1.2, 2.0)}, r"Invalid etas value: \(0\.5, 1\.2, 2\.0\)"),
    Bad("etas[0]=0", {"etas": (0.0, 1.2)},
        r"Invalid etas\[0\] value: 0\.0 \(expected a number in \(0\.0, 1\.0\)\)", True),
    Bad("etas[0]=1", {"etas": (1.0, 1.2)}, r"Invalid etas\[0\] value: 1\.0 \(expected a number in",
        True),
    Bad("etas[0]=nan", {"etas": (math.nan, 1.2)},
        r"Invalid etas\[0\] value: nan \(expected a real number\)"),
    Bad("etas[1]=1", {"etas": (0.5, 1.0)},
        r"Invalid etas\[1\] value: 1\.0 \(expected a number > 1\.0\)", True),
    Bad("etas[1]=str", {"etas": (0.5, "2")},
        r"Invalid etas\[1\] value: '2' \(expected a real number\)"),
    # torch takes these (tests/test_rprop.py::test_step_sizes_are_checked_where_torch_does_not).
    Bad("step_sizes=1", {"step_sizes": 1.0},
        r"Invalid step_sizes value: 1\.0 \(expected a pair \(min, max\), 0 <= min <= max\)"),
    Bad("step_sizes[0]<0", {"step_sizes": (-1e-6, 50)},
        r"Invalid step_sizes\[0\] value: -1e-06 \(expected a number >= 0\.0\)"),
    Bad("step_sizes[1]=nan", {"step_sizes": (1e-6, math.nan)},
        r"Invalid step_sizes\[1\] value: nan \(expected a number >= 0\.0\)"),
    Bad("step_sizes reversed", {"step_sizes": (1.0, 0.5)},
        r"Invalid step_sizes value: \(1\.0, 0\.5\) \(expected min <= max\)"),
]
DECOUPLED_BAD = Bad("decoupled=str", {"decoupled_weight_decay": "yes"},
                    r"Invalid decoupled_weight_decay value: 'yes' \(expected True or False\)")
ASGD_BAD = [
    *_nonnegative(lr=-0.1, weight_decay=-1e-4),
    *_nonnegative(lambd=-1e-4, alpha=-0.75, t0=-1.0, torch_refuses=False),  # torch takes them
    Bad("t0=str", {"t0": "10"}, r"Invalid t0 value: '10' \(expected a real number\)"),
]

MUON_BAD = [
    *_nonnegative(lr=-0.1, momentum=-0.9, weight_decay=-0.1),
    *_nonnegative(eps=-1e-7, torch_refuses=False),  # torch takes any eps
    _refused("adjust_lr_fn", "foo", "expected None, 'original' or 'match_rms_adamw'"),
    # torch refuses these at its first step, not in its constructor
    *(_refused("ns_steps", value, "expected an integer in [0, 100): fewer than 100 steps, as "
               "torch requires", torch_refuses=False) for value in (100, -1, 2.5)),
    Bad("ns_coefficients of 2", {"ns_coefficients": (1.0, 2.0)},
        r"Invalid ns_coefficients value: \(1\.0, 2\.0\) \(expected three numbers \(a, b, c\)\)"),
    Bad("ns_coefficients[1]=str", {"ns_coefficients": (1.0, "b", 2.0)},
        r"Invalid ns_coefficients\[1\] value: 'b' \(expected a real number\)"),
    Bad("nesterov=1", {"nesterov": 1}, r"Invalid nesterov value: 1 \(expected True or False\)"),
    *(Bad(f"ns_dtype={dtype.__name__}", {"ns_dtype": dtype},
          rf"Invalid ns_dtype value: .*{dtype.__name__}.* \(expected None or a (real )?"
          r"floating-point dtype\)") for dtype in (np.int32, np.complex64)),
]
ADAFACTOR_BAD = [
    *_nonnegative(lr=-0.1, weight_decay=-0.1),
    _refused("beta2_decay", 0.5, "expected a number <= 0.0"),
    _refused("beta2_decay", math.nan, "expected a real number"),
    *(_refused("d", value, "expected a number >= 1.0") for value in (0.5, math.nan)),
    *(Bad(f"eps[{i}]={value}", {"eps": (value, 1e-3) if i == 0 else (None, value)},
          rf"Invalid eps\[{i}\] value: {value} \(expected a number >= 0\.0\)", True)
      for i in (0, 1) for value in (-1.0, math.nan)),
    Bad("eps=1e-3", {"eps": 1e-3},
        r"Invalid eps value: 0\.001 \(expected a pair \(eps1 or None, eps2\)\)"),
]


def _takes(factory: Callable[..., Any], bad: Sequence[Bad]) -> list[Bad]:
    """The inputs of ``bad`` whose arguments ``factory`` has (Muon has no maximize)."""
    names = inspect.signature(factory).parameters
    return [b for b in bad if set(b.kwargs) <= set(names)]


@contextlib.contextmanager
def _torch_newton_schulz_in_its_dtype(torch: Any) -> Iterator[None]:
    """torch's Muon with its iteration in the gradient's dtype: torch's code without its
    cast to bfloat16, the iteration that ``fx.muon(ns_dtype=None)`` runs, so that float32
    and float64 compare with the usual tolerances (tests/test_muon.py compares the
    bfloat16 iteration, with a tolerance of its own)."""
    from torch.optim import _muon

    def in_its_dtype(grad: Any, coefficients: Any, steps: int, eps: float) -> Any:
        a, b, c = coefficients
        tall = grad.size(0) > grad.size(1)
        x = grad.T if tall else grad
        x = x / x.norm().clamp(min=eps)
        for _ in range(steps):
            gram = x @ x.T
            x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
        return x.T if tall else x

    original = _muon._zeropower_via_newtonschulz
    _muon._zeropower_via_newtonschulz = in_its_dtype
    try:
        yield
    finally:
        _muon._zeropower_via_newtonschulz = original


ROWS: dict[str, Row] = {
    "sgd": Row("sgd", sgd, "SGD", fx.SGD, _product_grid(SGD_AXES, {"lr": 0.05}, sgd_is_valid),
               sgd_reference, bad_inputs=(*SGD_BAD, *COMMON_BAD), lrs=_falling(0.05, 0.2),
               complex_labels=("momentum=0.9,nesterov=True,maximize=True",),
               # measured 1.0 and 2.6: momentum with weight decay and maximize
               faces_ulps={"value": 2, "momentum_buffer": 4}),
    "adam": Row("adam", adam, "Adam", fx.Adam, _product_grid(ADAM_AXES, {"lr": 0.01}),
                adam_reference, bad_inputs=(*ADAM_BAD, DECOUPLED_BAD, *COMMON_BAD),
                lrs=_falling(0.01, 0.05)),
    # fx.AdamW fixes decoupled_weight_decay=True, as torch's AdamW: no DECOUPLED_BAD.
    "adamw": Row("adamw", adamw, "AdamW", fx.AdamW, _product_grid(ADAMW_AXES, {"lr": 0.01}),
                 lambda *a, **k: adam_reference(*a, decoupled_weight_decay=True, **k),
                 bad_inputs=(*ADAM_BAD, *COMMON_BAD), lrs=_falling(0.01, 0.05)),
    # The page puts η inside RMSprop's momentum buffer, torch keeps it out: with a
    # constant η, ours is torch's × η. torch treats complex as real pairs, the page |g|².
    # α = 0 (v is the last g²) and α = 1 (v stays 0: the step is η·g/ε) are edges of its
    # numbers that no flag reaches; a larger η (float32 errors grow with the step's size,
    # so the grid's tolerance holds at η = 0.5 only without momentum).
    "rmsprop": Row("rmsprop", fx.rmsprop, "RMSprop", fx.RMSprop,
                   _product_grid(RMSPROP_AXES, {"lr": 0.01}),
                   lambda params, grads, **k: reference_run(params, grads, **k),
                   special_cases={
                       "alpha=0.5,eps=1e-3": {"lr": 0.01, "alpha": 0.5, "eps": 1e-3},
                       "alpha=0,momentum=0.5": {"lr": 0.01, "alpha": 0.0, "momentum": 0.5},
                       "alpha=1,eps=0.1": {"lr": 0.01, "alpha": 1.0, "eps": 0.1},
                       "lr=0.5,centered,alpha=0.9": {"lr": 0.5, "centered": True, "alpha": 0.9},
                   },
                   bad_inputs=(*RMSPROP_BAD, *COMMON_BAD), lrs=_falling(0.01, 0.05),
                   torch_scale=lambda key, c: c["lr"] if key == "momentum_buffer" else 1.0,
                   torch_complex=False, own_parity=True),
    # -- the rest of the family: Adagrad, Adadelta, Adamax, Rprop
    # lr_decay, weight_decay and initial_accumulator_value each change the traced code.
    "adagrad": Row("adagrad", fx.adagrad, "Adagrad", fx.Adagrad, _product_grid(
        {"lr_decay": (0, 0.05), "weight_decay": (0, 0.1),
         "initial_accumulator_value": (0, 0.1), "maximize": (False, True)}, {"lr": 0.05}),
        adagrad_reference, lrs=_falling(0.05, 0.1),
        bad_inputs=(*ADAGRAD_BAD, *COMMON_BAD), torch_state_at_construction=True),
    # lr ≠ 1 so that where η is applied (to Δx only, never inside u) is tested.
    "adadelta": Row("adadelta", fx.adadelta, "Adadelta", fx.Adadelta, _product_grid(
        {"weight_decay": (0, 0.1), "maximize": (False, True)}, {"lr": 0.5}),
        adadelta_reference, lrs=_falling(0.5, 1.0), bad_inputs=(*ADADELTA_BAD, *COMMON_BAD),
        own_scale=("acc_delta",),
        # measured 0.5 and 2.1 (acc_delta's in its own ulps), in the late group's pack
        faces_ulps={"square_avg": 1, "acc_delta": 4}),
    "adamax": Row("adamax", fx.adamax, "Adamax", fx.Adamax, _product_grid(
        {"weight_decay": (0, 0.1), "maximize": (False, True)}, {"lr": 0.01}),
        adamax_reference, lrs=_falling(0.01, 0.05),
        bad_inputs=(*_nonnegative(lr=-0.1, eps=-0.1, weight_decay=-0.1), *_betas(), *COMMON_BAD)),
    # The narrow step_sizes and wide etas make both clamps bind within 20 steps. Rprop reads
    # lr once, in init (the initial step size): no schedule, and no weight decay.
    "rprop": Row("rprop", fx.rprop, "Rprop", fx.Rprop, _product_grid(
        {"etas": ((0.5, 1.2), (0.25, 1.5)), "step_sizes": ((1e-6, 50), (1e-3, 0.02)),
         "maximize": (False, True)}, {"lr": 0.01}),
        rprop_reference, bad_inputs=(*RPROP_BAD, *COMMON_BAD), needs_params=None,
        # XLA:CPU recomputes the new step size in the θ loop and in the state's loops,
        # which read the old state after one of them overwrote it: region analysis
        # removes one of its two copies, not the other.
        cpu_step_copies=1),
    # -- the rest of the family: NAdam, RAdam, ASGD
    # The per-parameter scalars (NAdam's mu_product, ASGD's eta and mu) are not in buffers:
    # they are real numbers, not parameter-shaped in the parameter's dtype, which the dtype
    # tests of test_family assume; Row.scalars names them, and the runs compare them too.
    # Over STEPS = 20, RAdam's ρ_t crosses 5 at t = 6 (β₂ = 0.999): both of its branches run.
    "nadam": Row("nadam", fx.nadam, "NAdam", fx.NAdam, _product_grid(
        {"weight_decay": (0, 0.1), "decoupled_weight_decay": (False, True),
         "maximize": (False, True)}, {"lr": 0.01}),
        nadam_reference, lrs=_falling(0.01, 0.05),
        bad_inputs=(*_nonnegative(lr=-0.1, eps=-1e-08, weight_decay=-1e-4, momentum_decay=-4e-3),
                    *_betas(), DECOUPLED_BAD, *COMMON_BAD),
        faces_ulps={"value": 0.5}),  # measured 0.125 (float64)
    "radam": Row("radam", fx.radam, "RAdam", fx.RAdam, _product_grid(
        {"weight_decay": (0, 0.1), "decoupled_weight_decay": (False, True),
         "maximize": (False, True)}, {"lr": 0.01}),
        radam_reference, lrs=_falling(0.01, 0.05),
        bad_inputs=(*_nonnegative(lr=-0.1, eps=-1e-08, weight_decay=-1e-4), *_betas(),
                    DECOUPLED_BAD, *COMMON_BAD),
        faces_ulps={"value": 0.5}),  # measured 0.06
    # t0 = 5 starts the averaging (μ < 1) at step 8 of 20; λ = 0.01 makes the decay visible.
    "asgd": Row("asgd", fx.asgd, "ASGD", fx.ASGD, _product_grid(
        {"t0": (1e6, 5.0), "weight_decay": (0, 0.1), "maximize": (False, True)},
        {"lr": 0.05, "lambd": 0.01}),
        asgd_reference, lrs=_falling(0.05, 0.1),
        bad_inputs=(*ASGD_BAD, *COMMON_BAD),
        needs_params=({}, "it decays and averages the parameters"), follows_params=("ax",)),
    # -- the shape-aware ones: Muon (matrices only), Adafactor
    # ns_dtype=None runs the iteration in the parameters' dtype, as torch's code does
    # without its bfloat16 cast (Row.torch_numerics): the float32 and float64 tolerances
    # hold. tests/test_muon.py compares torch's own bfloat16 iteration.
    "muon": Row("muon", fx.muon, "Muon", fx.Muon, _product_grid(
        {"nesterov": (False, True), "weight_decay": (0, 0.1),
         "adjust_lr_fn": (None, "original", "match_rms_adamw")},
        {"lr": 0.02, "momentum": 0.9, "ns_dtype": None}),
        muon_reference, lrs=_falling(0.02, 0.05),
        special_cases={"ns_steps=2,ns_coefficients": {
            "lr": 0.02, "ns_steps": 2, "ns_coefficients": (2.0, -1.5, 0.5), "ns_dtype": None}},
        bad_inputs=(*MUON_BAD, *_takes(fx.muon, COMMON_BAD)), matrices=True, real_only=True,
        torch_numerics=_torch_newton_schulz_in_its_dtype,
        faces_ulps={"value": 1}),  # measured 0.8, float32 and float64
    # eps=(1e-30, ...) nearly removes the floor ε₁ (None: the dtype's machine epsilon);
    # d=1.5 lets larger steps through; lr=2 (special) caps the step by 1/sqrt(t), not lr.
    "adafactor": Row("adafactor", fx.adafactor, "Adafactor", fx.Adafactor, _product_grid(
        {"weight_decay": (0, 0.1), "eps": ((None, 1e-3), (1e-30, 1e-3)), "d": (1.0, 1.5),
         "maximize": (False, True)}, {"lr": 0.05}),
        adafactor_reference, lrs=_falling(0.05, 0.1),
        special_cases={"lr=2,beta2_decay=-0.5": {"lr": 2.0, "beta2_decay": -0.5}},
        bad_inputs=(*ADAFACTOR_BAD, *COMMON_BAD), real_only=True,
        needs_params=({}, "its step is scaled by each parameter's RMS"),
        faces_ulps={"value": 1, "col_var": 1}),  # measured 0.5 (float64)
}


# The fast tier (``pytest -m "not slow"``) runs the generic tests that compile a step for one
# row of each kind of state: buffers only (RMSprop, Adam), per-parameter scalars inside a
# flat buffer (ASGD's η and μ), and shape-aware factors (Adafactor). Compilation is most of
# their time, so the other rows go to the slow tier, which CI runs; the float32 parity grid
# and the validation tests keep every row in the fast tier.
FAST_ROWS = ("rmsprop", "adam", "asgd", "adafactor")


def tiered(cases: Collection[Any], ids: Sequence[str] | None = None) -> list[Any]:
    """``cases`` (row names, or tuples that start with one) as pytest parameters, those of
    a row not in :data:`FAST_ROWS` marked ``slow``."""
    params = []
    for i, case in enumerate(cases):
        values = case if isinstance(case, tuple) else (case,)
        params.append(pytest.param(*values, id=None if ids is None else ids[i],
                                   marks=[] if values[0] in FAST_ROWS else [pytest.mark.slow]))
    return params


# ------------------------------------------------------------------ problems and runs


def make_tree(rng: np.random.Generator, dtype: Any, row: Row | None = None) -> dict[str, Any]:
    """A small pytree: nested dict, list and tuple, and a scalar (shaped as ``row`` takes
    them: :meth:`Row.shape`)."""

    def leaf(*shape: int) -> np.ndarray:
        x = rng.standard_normal(row.shape(*shape) if row is not None else shape)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            x = x + 1j * rng.standard_normal(shape)
        return np.asarray(x).astype(dtype)

    # 17 elements: not a multiple of any SIMD width, so torch's scalar tail loop runs too.
    # (Each leaf costs compile time; zero-size leaves are in the property tests.)
    return {"dense": {"w": leaf(3, 4)}, "blocks": [leaf(17), (leaf(),)]}


def leaves64(tree: Any) -> list[np.ndarray]:
    """The leaves of ``tree`` as float64/complex128 NumPy arrays, in pytree order."""

    def widen(x: Any) -> np.ndarray:
        x = np.asarray(x)
        return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)

    return [widen(x) for x in jax.tree.leaves(tree)]


def tree_error(actual: Any, expected: list[np.ndarray | None] | None) -> float:
    """Largest max_rel_error over matching leaves; both ``None`` counts as 0, and so does
    a parameter that has no such buffer in either (Adafactor's ``row_var`` of a vector)."""
    if expected is None:
        assert actual is None, "a buffer exists that the reference does not have"
        return 0.0
    assert actual is not None, "a buffer the reference has is missing"
    actual_leaves = jax.tree.leaves(actual, is_leaf=lambda x: x is None)
    if any(x is None for x in actual_leaves) or any(e is None for e in expected):
        assert [x is None for x in actual_leaves] == [e is None for e in expected]
        actual = [x for x in actual_leaves if x is not None]
        expected = [e for e in expected if e is not None]
    actual_leaves = leaves64(actual)
    assert len(actual_leaves) == len(expected)
    return max([max_rel_error(a, e) for a, e in zip(actual_leaves, expected)], default=0.0)


@contextlib.contextmanager
def one_torch_thread(torch: Any, row: Row | None = None) -> Iterator[None]:
    """A deterministic, light torch on a shared machine, computing as ``row`` asks
    (:attr:`Row.torch_numerics`); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with row.torch_numerics(torch) if row is not None else contextlib.nullcontext():
            yield
    finally:
        torch.set_num_threads(threads)


def problem(label: str, dtype: Any, steps: int = STEPS,
            row: Row | None = None) -> tuple[Any, list[Any]]:
    """Initial parameters and ``steps`` gradient trees, seeded by ``label``."""
    rng = np.random.default_rng(zlib.crc32(label.encode()))
    return make_tree(rng, dtype, row), [make_tree(rng, dtype, row) for _ in range(steps)]


def run_many(
    row: Row,
    configs: Mapping[str, Mapping[str, Any]],
    dtype: Any,
    *,
    jit: bool = True,
    torch: Any = None,
    torch_labels: Collection[str] | None = None,
    steps: int = STEPS,
    lr_per_step: Sequence[float] | Mapping[str, Sequence[float] | None] | None = None,
) -> dict[str, dict[str, float]]:
    """Trains each labelled config with lucid_fx, the reference and (when given) torch.

    Returns, per label, the worst error of each quantity: the parameters (every
    step) and each buffer (at the end) against the reference (``ref:`` prefix)
    and torch (``torch:`` prefix; for the labels in ``torch_labels``, all by
    default), and the step count's difference (``step``).
    Each label seeds its own problem. With ``jit``, one jitted function runs the
    update of every config (one compilation for the whole grid: each compilation
    has a fixed cost of about 0.1 s on this CPU) and must compile once for all
    steps; the updates are applied outside it, as a training loop that jits only
    ``tx.update`` (and the apply apart) does. ``lr_per_step`` gives η step by step:
    ours as a schedule, torch's through ``param_groups[0]["lr"]``, the reference as a
    list. Also checks that the parameters keep ``dtype``. ``dtype`` and
    ``lr_per_step`` may also map each label to its own (real and complex, constant and
    changing lr in one compilation). The per-parameter scalars (:attr:`Row.scalars`) are
    compared like the buffers; :attr:`Row.own_scale` buffers also relative to
    their own size (``own:`` keys).
    """
    labels = list(configs)
    dtypes = dtype if isinstance(dtype, Mapping) else dict.fromkeys(labels, dtype)
    schedules = (lr_per_step if isinstance(lr_per_step, Mapping)
                 else dict.fromkeys(labels, lr_per_step))
    problems = {label: problem(label, dtypes[label], steps, row) for label in labels}
    txs = {}
    for label in labels:
        hyper = dict(configs[label])
        if schedules.get(label) is not None:
            table = jnp.asarray(schedules[label], jnp.float32)
            hyper["lr"] = lambda count, table=table: table[count]
        txs[label] = row.factory(**hyper)

    def update_all(grads: dict[str, Any], states: dict[str, Any], params: dict[str, Any]) -> Any:
        return {label: txs[label].update(grads[label], states[label], params[label])
                for label in labels}

    update = jax.jit(update_all) if jit else update_all
    # Applied in a program of its own (the same additions as eager ones, one dispatch a
    # step instead of one per leaf and label), never fused into the update.
    apply = jax.jit(fx.apply_updates) if jit else fx.apply_updates
    params = {label: jax.tree.map(jnp.asarray, problems[label][0]) for label in labels}
    states = {label: txs[label].init(params[label]) for label in labels}
    histories: dict[str, list[Any]] = {label: [] for label in labels}
    for t in range(steps):
        results = update({label: problems[label][1][t] for label in labels}, states, params)
        states = {label: state for label, (_, state) in results.items()}
        params = apply(params, {label: updates for label, (updates, _) in results.items()})
        for label in labels:
            histories[label].append(params[label])
    if jit:
        assert update._cache_size() == 1, "the update recompiled between steps"
    report = {}
    for label in labels:
        config, (params0, grads), state = configs[label], problems[label], states[label]
        assert {x.dtype for x in jax.tree.leaves(params[label])} == {jnp.dtype(dtypes[label])}
        ref_config = dict(config)
        if schedules.get(label) is not None:
            # The schedule's float32 values, exactly: that is what both libraries use.
            ref_config["lr"] = [float(np.float32(x)) for x in schedules[label]]
        ref_history, ref_state = row.reference(
            leaves64(params0), [leaves64(g) for g in grads], **without_lucid_options(ref_config))
        errors = {
            "ref:params": max(tree_error(p, r) for p, r in zip(histories[label], ref_history)),
            "step": float(abs(int(state.step) - ref_state["step"])),
        }
        for key in row.buffers:
            errors[f"ref:{key}"] = tree_error(getattr(state, key), ref_state[key])
        for key in row.own_scale:
            errors[f"ref:own:{key}"] = max(map(own_rel_error, leaves64(getattr(state, key)),
                                               ref_state[key]))
        for key in row.scalars:  # one number for the whole run: every parameter steps
            errors[f"ref:{key}"] = max_rel_error(getattr(state, key), ref_state[key])
        if torch is not None and (torch_labels is None or label in torch_labels):
            errors.update(_torch_errors(row, config, params0, grads, histories[label], state,
                                        torch, schedules.get(label)))
        report[label] = errors
    return report


def run(row: Row, config: Mapping[str, Any], dtype: Any, *, label: str = "",
        **kwargs: Any) -> dict[str, float]:
    """:func:`run_many` for one config; ``label`` seeds the problem."""
    label = label or repr(sorted(config.items()))
    return run_many(row, {label: config}, dtype, **kwargs)[label]


def own_rel_error(actual: Any, expected: Any) -> float:
    """Largest |actual - expected| / |expected|, complex numbers part by part (as torch
    treats them): for values far below 1 (Row.own_scale)."""

    def parts(x: Any) -> np.ndarray:
        x = np.asarray(x)
        return np.stack([x.real, x.imag]) if np.iscomplexobj(x) else x.astype(np.float64)

    actual, expected = parts(actual), parts(expected)
    assert np.all(expected != 0), "a zero has no size of its own"
    return float(np.max(np.abs(actual - expected) / np.abs(expected), initial=0.0))


def _torch_errors(
    row: Row, config: Mapping[str, Any], params0: Any, grads: list[Any], history: list[Any],
    state: Any, torch: Any, lr_per_step: Sequence[float] | None,
) -> dict[str, float]:
    errors = {"torch:params": 0.0}
    with one_torch_thread(torch, row):
        theirs = [torch.tensor(np.array(x), requires_grad=True) for x in jax.tree.leaves(params0)]
        optimizer = row.torch_optimizer(torch, theirs, config)
        for t, (g, ours) in enumerate(zip(grads, history)):
            if lr_per_step is not None:
                optimizer.param_groups[0]["lr"] = float(np.float32(lr_per_step[t]))
            for p, x in zip(theirs, jax.tree.leaves(g)):
                p.grad = torch.tensor(np.array(x))
            optimizer.step()
            errors["torch:params"] = max(errors["torch:params"], max(
                max_rel_error(a, p.detach().numpy())
                for a, p in zip(jax.tree.leaves(ours), theirs)))
        for key in row.buffers:
            ours_tree = getattr(state, key)
            present = [key in optimizer.state[p] for p in theirs]
            if ours_tree is None:
                assert not any(present), f"torch has {key}, we do not"
                continue
            # Per parameter: a shape-aware state has some buffers for some shapes only.
            ours = jax.tree.leaves(ours_tree, is_leaf=lambda x: x is None)
            assert [a is not None for a in ours] == present, f"{key} where torch has it not"
            pairs = [(a, p) for a, p in zip(ours, theirs) if a is not None]
            scale = row.torch_scale(key, config)
            errors[f"torch:{key}"] = max(
                max_rel_error(a, optimizer.state[p][key].numpy() * scale) for a, p in pairs)
            if key in row.own_scale:
                errors[f"torch:own:{key}"] = max(
                    own_rel_error(a, optimizer.state[p][key].numpy() * scale)
                    for a, p in pairs)
        for key in row.scalars:  # each parameter's own, all equal: every one steps
            errors[f"torch:{key}"] = max(
                max_rel_error(getattr(state, key), optimizer.state[p][key].numpy())
                for p in theirs)
    return errors


def side_by_side(transforms: list[Any], steps: int = STEPS, dtype: Any = np.float32) -> list[Any]:
    """Each transform's final parameters on one problem (make_tree's, float32 unless
    ``dtype`` says otherwise), every transform's update in one jitted function: for
    agreement with another library."""
    rng = np.random.default_rng(4)
    params0 = jax.tree.map(jnp.asarray, make_tree(rng, dtype))
    grads = [make_tree(rng, dtype) for _ in range(steps)]

    @jax.jit
    def update_all(g: Any, states: list[Any], params: list[Any]) -> list[Any]:
        return [tx.update(g, s, p) for tx, s, p in zip(transforms, states, params)]

    params = [params0] * len(transforms)
    states = [tx.init(params0) for tx in transforms]
    for g in grads:
        results = update_all(g, states, params)
        states = [s for _, s in results]
        params = [fx.apply_updates(p, u) for p, (u, _) in zip(params, results)]
    return params


def split(errors: Mapping[str, float]) -> tuple[float, float]:
    """(worst error against the reference, worst against torch) of a :func:`run`."""
    ref = max(v for k, v in errors.items() if k.startswith("ref:"))
    theirs = max([v for k, v in errors.items() if k.startswith("torch:")], default=0.0)
    return ref, theirs


# ------------------------------------------------------------------ the stateful face


@contextlib.contextmanager
def torch_default_dtype(torch: Any, dtype: Any) -> Iterator[None]:
    """torch's default dtype float64 for a float64 ``dtype`` (float32 otherwise), restored
    afterwards: torch keeps per-parameter scalars (the step, NAdam's mu_product, ASGD's
    eta and mu) in it, so a float64 run sets it, as a float64 training script does."""
    before = torch.get_default_dtype()
    wide = np.dtype(dtype) in (np.float64, np.complex128)
    torch.set_default_dtype(torch.float64 if wide else torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


# Per grid configuration, three Parameters in one packed buffer: the first steps every
# time; the second joins at the second step and then skips every third (torch advances
# neither its step nor any per-parameter scalar then, so counts differ inside one
# buffer); the third never has a gradient (it must come through untouched and get no
# state, and it makes every step of the pack a masked one: one compilation). The
# richest configuration's group starts the run; before its step JOIN every other
# configuration joins by add_param_group (one compilation for the whole grid, and a
# small one before it), and so does a fourth Parameter, in a group of its own with the
# richest configuration. Every group then steps to the end: STATEFUL_STEPS steps each,
# the richest's JOIN more.
STATEFUL_SHAPES = ((3, 2), (4,), (2,), (5,))
STATEFUL_STEPS = 8
JOIN = 4


def stateful_problem(dtype: Any, row: Row | None = None
                     ) -> tuple[list[np.ndarray], list[list[np.ndarray | None]]]:
    """The four Parameters' initial values and their gradients step by step (None: none),
    JOIN + STATEFUL_STEPS steps: the fourth has none before step JOIN. Shaped as ``row``
    takes them (:meth:`Row.shape`)."""
    rng = np.random.default_rng(1000)
    shapes = [row.shape(*s) if row is not None else s for s in STATEFUL_SHAPES]
    values = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads: list[list[np.ndarray | None]] = []
    for t in range(JOIN + STATEFUL_STEPS):
        g = [rng.standard_normal(s).astype(dtype) for s in shapes]
        grads.append([g[0], None if t % 3 == 0 else g[1], None, g[3] if t >= JOIN else None])
    return values, grads


@dataclasses.dataclass
class Face:
    """One Parameter through the stateful face, torch and the functional face. A state
    is a dict of NumPy arrays (torch's keys), ``None`` where there is none."""

    initial: np.ndarray
    steps: int  # how many gradients it was given
    ours: np.ndarray
    state: dict[str, np.ndarray] | None
    theirs: np.ndarray
    torch_state: dict[str, np.ndarray] | None
    functional: np.ndarray
    functional_state: dict[str, np.ndarray]


@dataclasses.dataclass
class Faces:
    """A row's grid through the three faces (:func:`stateful_faces`): ``opt`` is the one
    stateful optimizer, its groups ``groups`` in order (label, indices into
    ``params[label]``); ``torch_opts`` torch's, one per label (each configuration is
    torch's constructor arguments), the richest's with the late group added too."""

    faces: dict[str, list[Face]]
    opt: Any
    params: dict[str, list[fx.Parameter]]
    groups: list[tuple[str, slice]]
    configs: Mapping[str, Mapping[str, Any]]
    torch_opts: dict[str, Any]
    torch_params: dict[str, list[Any]]
    compiles: int  # compilations of the stateful step during the run
    packed: bool  # each label's first three Parameters share one buffer

    def same_groups(self, params: Mapping[str, list[Any]], make: Callable[..., Any]) -> Any:
        """``make`` (a class over param groups) with ``params`` grouped as ``opt``'s are,
        built the same way: the first group, then add_param_group for the others."""
        first, *rest = [{"params": params[label][where], **self.configs[label]}
                        for label, where in self.groups]
        opt = make([first])
        for group in rest:
            opt.add_param_group(group)
        return opt


def _hosted(state: Mapping[str, Any] | None) -> dict[str, np.ndarray] | None:
    """A state as NumPy copies (torch's tensors through .numpy()), or None where empty."""
    if not state:
        return None
    return {k: np.array(v.detach().numpy() if hasattr(v, "detach") else v)
            for k, v in state.items()}


def _local_grads(row: Row, grads: list[list[np.ndarray | None]]) -> dict[str, Any]:
    """label -> its gradients from its first step: the richest's all of them, the
    others' STATEFUL_STEPS steps from JOIN on (each seeing the same pattern, without
    the fourth Parameter), as one problem each."""
    return {label: grads if label == row.richest else [g[:3] for g in grads[:STATEFUL_STEPS]]
            for label in row.grid}


@functools.cache
def stateful_faces(name: str, dtype: Any, torch: Any) -> Faces:
    """Every configuration of ``ROWS[name]``'s grid as one param group of ONE stateful
    optimizer (see STATEFUL_SHAPES); torch's class per configuration; and the functional
    face per Parameter, stepped only with a gradient (masked, as the stateful face masks
    a pack) with the hyper-parameters traced as the stateful face traces them. Cached:
    the tests of test_family and the optimizers' own files read one run. A float64 run
    must be made under ``jax.enable_x64(True)``; it sets torch's default dtype too."""
    from lucid_fx._src.stateful.steps import compiled_step

    row = ROWS[name]
    values, grads = stateful_problem(dtype, row)
    local = _local_grads(row, grads)
    start = {label: 0 if label == row.richest else JOIN for label in row.grid}
    params = {label: [fx.Parameter(jnp.asarray(v)) for v in values[:len(local[label][0])]]
              for label in row.grid}
    groups = [(row.richest, slice(0, 3)),
              *((label, slice(0, 3)) for label in row.grid if label != row.richest),
              (row.richest, slice(3, 4))]
    opt = row.stateful([{"params": params[row.richest][:3], **row.grid[row.richest]}])
    compiled = compiled_step("cpu")._cache_size()
    for t in range(len(grads)):
        if t == JOIN:
            for label, where in groups[1:]:
                opt.add_param_group({"params": params[label][where], **row.grid[label]})
        opt.zero_grad()
        for label, ps in params.items():
            if t >= start[label]:
                for p, g in zip(ps, local[label][t - start[label]]):
                    if g is not None:
                        p.grad = jnp.asarray(g)
        opt.step()
    compiles = compiled_step("cpu")._cache_size() - compiled
    assert {x.dtype for ps in params.values() for x in (p.value for p in ps)} == {
        np.dtype(dtype)}

    torch_params = {label: [torch.nn.Parameter(torch.tensor(v)) for v in values[:len(ps)]]
                    for label, ps in params.items()}
    torch_opts = {}
    with one_torch_thread(torch, row), torch_default_dtype(torch, dtype):
        for label, config in row.grid.items():
            qs = torch_params[label]
            topt = row.torch_optimizer(torch, qs[:3], config)
            for t, step_grads in enumerate(local[label]):
                if t == JOIN and len(qs) > 3:
                    topt.add_param_group({"params": qs[3:], **without_lucid_options(config)})
                topt.zero_grad(set_to_none=True)
                for q, g in zip(qs, step_grads):
                    if g is not None:
                        q.grad = torch.tensor(g)
                topt.step()
            torch_opts[label] = topt

    functional = _functional_faces(row, values, local, start)
    faces = {label: [Face(
        initial=values[i],
        steps=sum(g[i] is not None for g in local[label]),
        ours=np.array(p.value),
        state=_hosted(opt.state[p]) if p in opt.state else None,
        theirs=q.detach().numpy().copy(),
        torch_state=_hosted(torch_opts[label].state.get(q)),
        functional=functional.get((label, i), (values[i], {}))[0],
        functional_state=functional.get((label, i), (values[i], {}))[1],
    ) for i, (p, q) in enumerate(zip(params[label], torch_params[label]))]
        for label in row.grid}
    packed = all(len({id(p.storage.pack) for p in ps[:3]}) == 1 for ps in params.values())
    return Faces(faces, opt, params, groups, row.grid, torch_opts, torch_params, compiles, packed)


def _functional_faces(
    row: Row, values: list[np.ndarray], local: Mapping[str, list[list[np.ndarray | None]]],
    start: Mapping[str, int],
) -> dict[tuple[str, int], tuple[np.ndarray, dict[str, np.ndarray]]]:
    """(label, i) -> the final value and state of Parameter i alone through the factory,
    for the Parameters that step. One jitted function steps every one, over the run's
    steps: a step without a gradient is taken on zeros and masked back, as the stateful
    face does for a pack. (Bit for bit the stateful face's where measured so: XLA's
    fusion of each program decides that; see Row.faces_ulps.)"""
    zeros = set(schema.of(row.factory).switches.values()) | set(row.stateful.compiled_out_at_zero)
    static, numbers = {}, {}
    for label, config in row.grid.items():
        static[label] = {k: v for k, v in config.items()
                         if is_static(v) or (k in zeros and v == 0)}
        numbers[label] = {k: as_precise(v) for k, v in config.items() if k not in static[label]}
    keys = [(label, i) for label, steps in local.items() for i in range(len(steps[0]))
            if any(g[i] is not None for g in steps)]

    def step_all(hypers: Any, grads: Any, active: Any, states: Any, params: Any) -> Any:
        out = {}
        for key in keys:
            tx = row.factory(**static[key[0]], **hypers[key[0]])
            updates, state = tx.update(grads[key], states[key], params[key])
            keep = functools.partial(jnp.where, active[key])
            out[key] = (keep(fx.apply_updates(params[key], updates), params[key]),
                        jax.tree.map(keep, state, states[key]))
        return out

    step = jax.jit(step_all)
    params = {key: jnp.asarray(values[key[1]]) for key in keys}
    states = {key: row.factory(**static[key[0]], **numbers[key[0]]).init(params[key])
              for key in keys}
    for t in range(max(start[label] + len(steps) for label, steps in local.items())):
        given = {(label, i): local[label][t - start[label]][i]
                 if 0 <= t - start[label] < len(local[label]) else None for label, i in keys}
        out = step(numbers, {key: jnp.zeros_like(params[key]) if g is None else jnp.asarray(g)
                             for key, g in given.items()},
                   {key: g is not None for key, g in given.items()}, states, params)
        params = {key: value for key, (value, _) in out.items()}
        states = {key: state for key, (_, state) in out.items()}
    assert step._cache_size() == 1
    return {key: (np.array(params[key]), {k: np.array(v) for k, v in states[key]._asdict().items()
                                           if v is not None})
            for key in keys}


# ------------------------------------------------------------------ compilations


# Backend compilations are announced under this jax.monitoring event
# (jax/_src/dispatch.py: BACKEND_COMPILE_EVENT); a test below checks that it still fires.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

class CompileCounter:
    """Counts XLA backend compilations while active; ``names`` lists the compiled functions."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def _listen(self, event: str, duration: float, **kwargs: Any) -> None:
        del duration
        if event == BACKEND_COMPILE_EVENT:
            self.names.append(str(kwargs.get("fun_name", "?")))

    @property
    def count(self) -> int:
        return len(self.names)

    def __enter__(self) -> CompileCounter:  # noqa: PYI034 - not subclassed
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc: object) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listen)


# ------------------------------------------------------------------ property-test trees


class Shape(tuple):
    """A leaf marker, so that shapes are not mistaken for pytree tuples."""


# A few shapes (a scalar, zero-size, odd sizes): eager ops compile once per shape.
shape_trees = st.recursive(
    st.sampled_from([(), (0,), (3,), (2, 3), (1, 5)]).map(lambda s: Shape(s)),
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=3),
        st.dictionaries(st.sampled_from("abcd"), children, min_size=1, max_size=3),
    ),
    max_leaves=4,
)
