"""Reliability: bad input, non-finite gradients, rounding, a long soak, and fuzzing.

Every bad input lives in one registry, ``BAD_INPUTS``: each row says what the user
does wrong, which exception they get and what its message says. Its hyper-parameter
rows are every optimizer's ``bad_inputs`` (tests/optimizers_under_test.py), on the
factory and on the class; the others are written here. One test body runs
every row against a fresh, already-trained :class:`World` and checks that the error
is the promised one *and that nothing changed* (parameters, gradients, every buffer,
hyper-parameters, the caller's state dict). ``docs/errors.md`` is generated from the
same registry (``python tests/test_reliability.py``) and a test checks it is current,
so the published table and the tests cannot drift apart.
"""

from __future__ import annotations

import copy
import dataclasses
import linecache
import math
import re
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import Phase, given, settings
from optimizers_under_test import ROWS
from reference import RMSpropReference, max_rel_error, reference_run

import lucid_fx as fx

RTOL_F32 = 2e-5  # float32 against the float64 reference over a few dozen steps
PACKAGE_DIR = Path(fx.__file__).resolve().parent
DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "errors.md"

try:  # torch is a test dependency; rows that need it say so and skip without it
    import torch
except ImportError:  # pragma: no cover - torch is in the test extra
    torch = None
NO_TORCH = "torch is not installed (pip install 'lucid_fx[test]')"


# ------------------------------------------------------------------ the world we break


def _canonical(x: Any) -> Any:
    """A comparable, exact image of nested dicts/lists of arrays, Parameters and numbers."""
    if isinstance(x, Mapping):
        return sorted(((repr(k), _canonical(v)) for k, v in x.items()), key=lambda kv: kv[0])
    if isinstance(x, (list, tuple)):
        return [type(x).__name__, [_canonical(v) for v in x]]
    if isinstance(x, fx.Parameter):
        return ("Parameter", id(x))
    if isinstance(x, (jax.Array, np.ndarray, np.generic)):
        array = np.asarray(x)
        return (array.dtype.str, array.shape, array.tobytes())
    if isinstance(x, float):
        return ("float", x.hex())
    return repr(x)


class World:
    """A small, already-trained setup on both faces, plus a saved state dict.

    After the last step the first group's lr is changed and fresh gradients are
    set, so a half-applied load (hyper-parameters or state) or a half-applied
    step shows up as a difference in :meth:`snapshot`.
    """

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.w = fx.Parameter(rng.standard_normal((3, 2)).astype(np.float32))
        self.b = fx.Parameter(rng.standard_normal(2).astype(np.float32))
        self.optimizer = fx.RMSprop(
            [{"params": [self.w]}, {"params": [self.b], "lr": 0.05}],
            lr=0.1, momentum=0.9, centered=True, weight_decay=0.01,
        )
        for step in range(3):
            self.set_grads(rng)
            self.optimizer.step()
            if step == 1:
                self.saved = self.optimizer.state_dict()
        self.optimizer.param_groups[0]["lr"] = 0.2
        self.set_grads(rng)
        self.params = {"w": jnp.asarray(self.w.value), "b": jnp.asarray(self.b.value)}
        self.grads = {"w": jnp.asarray(self.w.grad), "b": jnp.asarray(self.b.grad)}
        self.tx = fx.rmsprop(lr=0.1, momentum=0.9, centered=True)
        _, self.state = self.tx.update(self.grads, self.tx.init(self.params), self.params)
        self.extra: Any = None  # what a row's prepare() builds for itself

    def set_grads(self, rng: np.random.Generator) -> None:
        for p in (self.w, self.b):
            p.grad = jnp.asarray(rng.standard_normal(p.shape).astype(np.float32))

    def edited(self, edit: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
        """A deep copy of the saved state dict, changed by ``edit``."""
        sd = copy.deepcopy(self.saved)
        edit(sd)
        return sd

    def snapshot(self) -> Any:
        return _canonical({
            "values": [self.w.value, self.b.value],
            "grads": [self.w.grad, self.b.grad],
            "state_dict": self.optimizer.state_dict(),
            "param_groups": self.optimizer.param_groups,
            "saved": self.saved,
            "params": self.params,
            "grads_fn": self.grads,
            "state": list(jax.tree.leaves(self.state)),
        })


# ------------------------------------------------------------------ the registry


@dataclasses.dataclass(frozen=True)
class BadInput:
    """One bad input: what the user does, and the error they must get.

    ``act`` performs the bad call on a fresh World (after ``prepare``, whose own
    changes are part of the setup, not of the failure). ``match`` is searched in
    the message.
    """

    id: str
    face: str
    given: str
    error: type[Exception]
    match: str
    act: Callable[[World], Any]
    prepare: Callable[[World], Any] | None = None
    needs_torch: bool = False


def _given(kwargs: Mapping[str, Any]) -> str:
    """``name=value`` as a user writes it (a dtype by its name)."""
    return ", ".join(f"{k}={getattr(v, '__name__', None) or repr(v)}" for k, v in kwargs.items())


def _hyper_rows() -> list[BadInput]:
    """Every optimizer's invalid hyper-parameters (its row's ``bad_inputs`` in
    tests/optimizers_under_test.py), on the functional factory and the class alike."""
    rows = []
    for row in ROWS.values():
        cls = row.stateful.__name__
        for bad in row.bad_inputs:
            given = f"`{_given(bad.kwargs)}`"
            rows.append(BadInput(
                f"{row.name}-{bad.label}", f"fx.{row.name}(...)", given, ValueError, bad.pattern,
                lambda w, f=row.factory, kw=bad.kwargs: f(**kw)))
            rows.append(BadInput(
                f"{cls}-{bad.label}", f"fx.{cls}(params, ...)", given, ValueError, bad.pattern,
                lambda w, c=row.stateful, kw=bad.kwargs: c([fx.Parameter(jnp.ones(2))], **kw)))
    return rows


def _group_write(key: str, value: Any) -> Callable[[World], None]:
    def prepare(w: World) -> None:
        w.optimizer.param_groups[0][key] = value
    return prepare


def _set(sd: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        sd = sd[key]
    sd[path[-1]] = value


def _delete(sd: Any, path: tuple[Any, ...]) -> None:
    for key in path[:-1]:
        sd = sd[key]
    del sd[path[-1]]


def _load(edit: Callable[[dict[str, Any]], Any]) -> Callable[[World], None]:
    return lambda w: w.optimizer.load_state_dict(w.edited(edit))


def _set_grad(p: str, value: Callable[[World], Any]) -> Callable[[World], None]:
    def prepare(w: World) -> None:
        getattr(w, p).grad = value(w)
    return prepare


def _other_optimizer_state_dict(make: Callable[[], fx.RMSprop]) -> dict[str, Any]:
    optimizer = make()
    for p in fx.parameters([g["params"] for g in optimizer.param_groups]):
        p.grad = jnp.ones_like(p.value)
    optimizer.step()
    return optimizer.state_dict()


def _torch_state_dict(lr: float = 0.1, dtype: Any = None, complex_param: bool = False) -> Any:
    """torch.optim.RMSprop's state dict for parameters shaped like World's, after two steps."""
    dtype = dtype or torch.float32
    if complex_param:
        params = [torch.nn.Parameter(torch.ones(2, dtype=torch.complex64))]
        groups: Any = [{"params": params}]
    else:
        params = [torch.nn.Parameter(torch.ones(3, 2, dtype=dtype)),
                  torch.nn.Parameter(torch.ones(2, dtype=dtype))]
        groups = [{"params": [params[0]]}, {"params": [params[1]], "lr": 0.05}]
    optimizer = torch.optim.RMSprop(groups, lr=lr, momentum=0.9, centered=True)
    for _ in range(2):
        for p in params:
            p.grad = torch.full_like(p, 0.5)
        optimizer.step()
    return optimizer.state_dict()


def _complex_world(w: World) -> None:
    w.extra = fx.RMSprop([fx.Parameter(jnp.ones(2, jnp.complex64))], lr=0.1, momentum=0.9)
    w.extra.param_groups[0]["params"][0].grad = jnp.ones(2, jnp.complex64)
    w.extra.step()


def _state_rows() -> list[BadInput]:
    load = "opt.load_state_dict(sd)"
    one_group = lambda: fx.RMSprop([fx.Parameter(jnp.ones((3, 2))), fx.Parameter(jnp.ones(2))])
    shapes = lambda: fx.RMSprop(
        [{"params": [fx.Parameter(jnp.ones((2, 3)))]}, {"params": [fx.Parameter(jnp.ones(2))]}])
    three = lambda: fx.RMSprop(
        [{"params": [fx.Parameter(jnp.ones((3, 2))), fx.Parameter(jnp.ones(1))]},
         {"params": [fx.Parameter(jnp.ones(2))]}])
    return [
        BadInput("load-not-a-dict", load, "a list instead of a state dict", ValueError,
                 r"state dict must have exactly the keys 'state' and 'param_groups', got list",
                 lambda w: w.optimizer.load_state_dict([w.saved])),
        BadInput("load-missing-state", load, "no `state` key (truncated)", ValueError,
                 r"state dict must have exactly the keys 'state' and 'param_groups', "
                 r"got \['param_groups'\]", _load(lambda sd: _delete(sd, ("state",)))),
        BadInput("load-extra-top-key", load, "an extra top-level key", ValueError,
                 r"exactly the keys 'state' and 'param_groups', "
                 r"got \['extra', 'param_groups', 'state'\]",
                 _load(lambda sd: _set(sd, ("extra",), 1))),
        BadInput("load-named-into-unnamed", load,
                 "a state dict with `param_names` into an optimizer made without names",
                 ValueError, r"the state dict names its parameters \(param_names\), this "
                 r"optimizer's parameters have no names: create it with "
                 r"fx\.named_parameters\(model\)",
                 _load(lambda sd: [g.__setitem__("param_names", [f"p{i}" for i in g["params"]])
                                   for g in sd["param_groups"]])),
        BadInput("load-group-count", load, "from an optimizer with one group (ours has two)",
                 ValueError, r"state dict has 1 param group\(s\), the optimizer has 2",
                 lambda w: w.optimizer.load_state_dict(_other_optimizer_state_dict(one_group))),
        BadInput("load-group-size", load, "from a model with 3 parameters in group 0 (ours: 1)",
                 ValueError, r"param_groups\[0\] holds 2 parameter\(s\) in the state dict, 1 in "
                 r"the optimizer",
                 lambda w: w.optimizer.load_state_dict(_other_optimizer_state_dict(three))),
        BadInput("load-shapes", load, "from a model whose weight is (2, 3), ours (3, 2)",
                 ValueError, r"state\[0\]\['(step|square_avg)'\] has shape \(2, 3\), expected "
                 r"\(3, 2\)",
                 lambda w: w.optimizer.load_state_dict(_other_optimizer_state_dict(shapes))),
        BadInput("load-dtype", load, "float64 buffers for float32 parameters", ValueError,
                 r"state\[0\]\['square_avg'\] has dtype float64, expected float32",
                 _load(lambda sd: _set(sd, ("state", 0, "square_avg"),
                                       np.asarray(sd["state"][0]["square_avg"], np.float64)))),
        BadInput("load-truncated-array", load, "a buffer cut short", ValueError,
                 r"state\[1\]\['grad_avg'\] has shape \(1,\), expected \(2,\)",
                 _load(lambda sd: _set(sd, ("state", 1, "grad_avg"),
                                       sd["state"][1]["grad_avg"][:1]))),
        BadInput("load-missing-step", load, "an entry without `step`", ValueError,
                 r"state\[0\] is missing key\(s\) \['step'\]",
                 _load(lambda sd: _delete(sd, ("state", 0, "step")))),
        BadInput("load-missing-square-avg", load, "an entry without `square_avg`", ValueError,
                 r"state\[1\] is missing key\(s\) \['square_avg'\]",
                 _load(lambda sd: _delete(sd, ("state", 1, "square_avg")))),
        BadInput("load-unknown-state-key", load, "an entry with an unknown key", ValueError,
                 r"state\[0\] has unknown key\(s\) \['velocity'\]",
                 _load(lambda sd: _set(sd, ("state", 0, "velocity"),
                                       np.zeros((3, 2), np.float32)))),
        BadInput("load-missing-group-key", load, "a group without its `alpha`", ValueError,
                 r"param_groups\[1\] lacks key\(s\) \['alpha'\]",
                 _load(lambda sd: _delete(sd, ("param_groups", 1, "alpha")))),
        BadInput("load-invalid-lr", load, "a group with `lr=-1`", ValueError,
                 r"param_groups\[0\]: Invalid lr value: -1 \(expected a number >= 0\.0\)",
                 _load(lambda sd: _set(sd, ("param_groups", 0, "lr"), -1))),
        BadInput("load-invalid-alpha", load, "a group with `alpha=nan`", ValueError,
                 r"param_groups\[1\]: Invalid alpha value: nan",
                 _load(lambda sd: _set(sd, ("param_groups", 1, "alpha"), math.nan))),
        BadInput("load-unknown-index", load, "a state entry for index 7, which no group lists",
                 ValueError, r"state\[7\] names no parameter of the state dict's groups",
                 _load(lambda sd: _set(sd, ("state", 7), sd["state"][0]))),
        BadInput("load-entry-not-dict", load, "a state entry that is not a dict", ValueError,
                 r"state\[0\] must be a dict of arrays, got list",
                 _load(lambda sd: _set(sd, ("state", 0), [1, 2]))),
        BadInput("load-float-step", load, "`step` stored as a float (our own dict)", ValueError,
                 r"state\[0\]\['step'\] has dtype float32, expected int32",
                 _load(lambda sd: _set(sd, ("state", 0, "step"), np.float32(2.0)))),
        BadInput("load-negative-step", load, "a negative `step`", ValueError,
                 r"state\[0\]\['step'\] holds a negative value \(-2\); a step count is never "
                 r"negative", _load(lambda sd: _set(sd, ("state", 0, "step"), np.int32(-2)))),
        BadInput("load-negative-square-avg", load, "a negative value in `square_avg`", ValueError,
                 r"state\[1\]\['square_avg'\] holds a negative value \(-1\.0\); an average of "
                 r"squares is never negative",
                 _load(lambda sd: _set(sd, ("state", 1, "square_avg"),
                                       np.asarray([0.5, -1.0], np.float32)))),
        BadInput("load-groups-not-list", load, "`param_groups` that is not a list", ValueError,
                 r"state dict's 'param_groups' must be a list of dicts",
                 _load(lambda sd: _set(sd, ("param_groups",), 3))),
        BadInput("load-group-not-dict", load, "a group that is not a dict", ValueError,
                 r"state dict's 'param_groups' must be a list of dicts",
                 _load(lambda sd: _set(sd, ("param_groups", 1), [1]))),
        BadInput("load-state-not-dict", load, "`state` that is not a dict", ValueError,
                 r"state dict's 'state' must be a dict \{index: \{key: array\}\}, got int",
                 _load(lambda sd: _set(sd, ("state",), 3))),
        BadInput("load-duplicate-index", load, "the same index listed in both groups", ValueError,
                 r"param_groups\[1\] lists parameter index 0 again",
                 _load(lambda sd: _set(sd, ("param_groups", 1, "params"), [0]))),
        BadInput("load-flag-not-bool", load, "a group with `centered='no'`", ValueError,
                 r"param_groups\[0\]: Invalid centered value: 'no' \(expected True or False\)",
                 _load(lambda sd: _set(sd, ("param_groups", 0, "centered"), "no"))),
        # PyTorch migration: the momentum buffer needs lr (b = lr·b_torch).
        BadInput("torch-import-lr-0", load,
                 "`torch.optim.RMSprop.state_dict()` whose group has lr 0 and a non-zero "
                 "momentum buffer", ValueError,
                 r"param_groups\[0\] has lr 0 and state\[0\]\['momentum_buffer'\] is non-zero: "
                 r"lucid_fx keeps lr inside the momentum buffer",
                 lambda w: w.optimizer.load_state_dict(w.extra),
                 prepare=lambda w: setattr(w, "extra", _torch_state_dict(lr=0.0)),
                 needs_torch=True),
        BadInput("torch-import-fractional-step", load, "a torch state dict with `step=2.5`",
                 ValueError, r"state\[1\]\['step'\] is 2\.5; expected a whole number of steps",
                 lambda w: w.optimizer.load_state_dict(w.extra),
                 prepare=lambda w: (setattr(w, "extra", _torch_state_dict()),
                                    _set(w.extra, ("state", 1, "step"), torch.tensor(2.5))),
                 needs_torch=True),
        BadInput("torch-import-alpha>1", load, "a torch state dict with `alpha=1.5` (torch "
                 "accepts any alpha ≥ 0)", ValueError,
                 r"param_groups\[0\]: Invalid alpha value: 1\.5",
                 lambda w: w.optimizer.load_state_dict(w.extra),
                 prepare=lambda w: (setattr(w, "extra", _torch_state_dict()),
                                    _set(w.extra, ("param_groups", 0, "alpha"), 1.5)),
                 needs_torch=True),
        BadInput("torch-import-float64", load, "a torch state dict of float64 parameters",
                 ValueError,
                 r"state\[0\]\['(step|square_avg)'\] has dtype float64, expected float32",
                 lambda w: w.optimizer.load_state_dict(w.extra),
                 prepare=lambda w: setattr(w, "extra", _torch_state_dict(dtype=torch.float64)),
                 needs_torch=True),
        BadInput("torch-import-complex", "opt.load_state_dict(sd) (complex Parameter)",
                 "a torch state dict of a complex parameter", ValueError,
                 r"state\[0\]\['square_avg'\] is complex: torch treats a complex parameter's "
                 r"real and imaginary parts as separate elements, while this optimizer keeps "
                 r"real numbers for it",
                 lambda w: w.extra.load_state_dict(_torch_state_dict(complex_param=True)),
                 prepare=_complex_world, needs_torch=True),
        BadInput("torch-export-lr-0", "opt.torch_state_dict()",
                 "export after setting a group's lr to 0 (its momentum buffer is non-zero)",
                 ValueError, r"param_groups\[0\] has lr 0 and state\[0\]\['momentum_buffer'\] is "
                 r"non-zero: torch keeps lr out of the momentum buffer",
                 lambda w: w.optimizer.torch_state_dict(), prepare=_group_write("lr", 0.0),
                 needs_torch=True),
        BadInput("torch-export-schedule", "opt.torch_state_dict()",
                 "export while a group's lr is a schedule", ValueError,
                 r"param_groups\[1\]\['lr'\] is a schedule; torch's state dict holds a number",
                 lambda w: w.optimizer.torch_state_dict(),
                 prepare=lambda w: w.optimizer.param_groups[1].update(lr=lambda count: 0.01),
                 needs_torch=True),
        BadInput("torch-export-complex", "opt.torch_state_dict() (complex Parameter)",
                 "export of a complex parameter's state", ValueError,
                 r"state\[0\] belongs to a complex parameter: torch treats its real and "
                 r"imaginary parts as separate elements",
                 lambda w: w.extra.torch_state_dict(), prepare=_complex_world, needs_torch=True),
    ]


_STEP = "opt.step()"


def _other_rows() -> list[BadInput]:
    ctor = "fx.RMSprop(params, ...)"
    p = lambda: fx.Parameter(jnp.ones(2))
    return [
        # parameters
        BadInput("params-set", ctor, "params as a `set`", TypeError,
                 r"params must be an ordered iterable \(a list or tuple\), not a set",
                 lambda w: fx.RMSprop({p(), p()})),
        BadInput("params-empty", ctor, "an empty list", ValueError,
                 r"optimizer got an empty parameter list: pass fx\.parameters\(model\)",
                 lambda w: fx.RMSprop([])),
        BadInput("params-exhausted-generator", ctor,
                 "a generator already consumed (e.g. by an earlier optimizer)", ValueError,
                 r"optimizer got an empty parameter list", lambda w: fx.RMSprop(iter([]))),
        BadInput("params-one-parameter", ctor, "one Parameter, not a list", TypeError,
                 r"params must be an iterable of Parameters, not one Parameter: wrap it in a list",
                 lambda w: fx.RMSprop(w.w)),
        BadInput("params-none", ctor, "`None`", TypeError,
                 r"params must be an iterable of Parameters or of param-group dicts, got NoneType",
                 lambda w: fx.RMSprop(None)),
        BadInput("params-duplicated", ctor, "the same Parameter twice in one group", ValueError,
                 r"params\[1\] Parameter\(shape=\(2,\), dtype=float32\) appears more than once",
                 lambda w: fx.RMSprop([q := p(), q])),
        BadInput("params-duplicated-across-groups", ctor, "the same Parameter in two groups",
                 ValueError, r"params\[0\] Parameter\(shape=\(2,\), dtype=float32\) appears more "
                 r"than once \(in this group or an earlier one\)",
                 lambda w: fx.RMSprop([{"params": [q := p()]}, {"params": [q]}])),
        BadInput("step-after-takeover", _STEP,
                 "stepping an optimizer after a newer one took over its Parameters "
                 "(re-running `opt = fx.RMSprop(...)`)", RuntimeError,
                 r"Parameters were taken over by an optimizer created later over the same "
                 r"Parameters; step that one instead", lambda w: w.optimizer.step(),
                 prepare=lambda w: setattr(w, "extra", fx.RMSprop([w.w]))),
        BadInput("params-array", ctor, "a jax array instead of a Parameter", TypeError,
                 r"optimizer can only optimize fx\.Parameter objects, but params\[0\] is a "
                 r"ArrayImpl: wrap arrays in fx\.Parameter", lambda w: fx.RMSprop([w.params["w"]])),
        BadInput("params-dict", ctor, "the model dict itself instead of its Parameters",
                 TypeError, r"got a dict as params \(keys \['b', 'w'\]\): pass "
                 r"fx\.parameters\(model\) or fx\.named_parameters\(model\)",
                 lambda w: fx.RMSprop({"w": w.w, "b": w.b})),
        BadInput("unknown-keyword", ctor, "another optimizer's keyword (`betas=`)", TypeError,
                 r"RMSprop got unknown keyword argument\(s\) \['betas'\]; its arguments are "
                 r"params, lr, alpha, eps", lambda w: fx.RMSprop([p()], betas=(0.9, 0.999))),
        BadInput("params-names-mixed", ctor, "(name, Parameter) pairs mixed with Parameters",
                 ValueError, r"params mixes \(name, Parameter\) pairs and plain entries",
                 lambda w: fx.RMSprop([("a", p()), p()])),
        BadInput("step-under-jit", _STEP, "`optimizer.step()` inside `jax.jit`", RuntimeError,
                 r"RMSprop\.step\(\) was called under a JAX transformation .* use the "
                 r"functional face inside jit",
                 lambda w: jax.jit(lambda x: (w.optimizer.step(), x)[1])(1.0)),
        BadInput("value-in-loss", "fx.backward(loss_fn, model)",
                 "`m['w'].value` inside the loss function", AttributeError,
                 r"loss_fn receives the tree with every Parameter replaced by its plain array, "
                 r"so write m\['w'\], not m\['w'\]\.value",
                 lambda w: fx.backward(lambda m: jnp.sum(m["w"].value), {"w": w.w})),
        BadInput("params-int32", ctor, "an int32 Parameter", TypeError,
                 r"can only optimize floating-point Parameters, but params\[1\] has dtype int32",
                 lambda w: fx.RMSprop([p(), fx.Parameter(jnp.ones(2, jnp.int32))])),
        BadInput("params-bool", ctor, "a bool Parameter", TypeError,
                 r"can only optimize floating-point Parameters, but params\[0\] has dtype bool",
                 lambda w: fx.RMSprop([fx.Parameter(jnp.ones(2, jnp.bool_))])),
        BadInput("group-without-params", ctor, "a group dict without `params`", ValueError,
                 r"a param group must have a 'params' entry", lambda w: fx.RMSprop([{"lr": 0.1}])),
        BadInput("group-empty", ctor, "a group with no parameters", ValueError,
                 r"a param group must hold at least one Parameter",
                 lambda w: fx.RMSprop([{"params": [p()]}, {"params": []}])),
        BadInput("group-unknown-key", ctor, "a group with a misspelt key (`lr_`)", ValueError,
                 r"unknown hyper-parameter\(s\) \['lr_'\] in param group",
                 lambda w: fx.RMSprop([{"params": [p()], "lr_": 0.1}])),
        BadInput("add-group-duplicate", "opt.add_param_group(group)",
                 "a Parameter the optimizer already holds", ValueError,
                 r"params\[0\] Parameter\(shape=\(2,\), dtype=float32\) appears more than once",
                 lambda w: w.optimizer.add_param_group({"params": [w.b]})),
        BadInput("add-group-invalid-eps", "opt.add_param_group(group)", "`eps=nan` in the group",
                 ValueError, r"Invalid eps value: nan",
                 lambda w: w.optimizer.add_param_group({"params": [p()], "eps": math.nan})),
        BadInput("add-group-not-dict", "opt.add_param_group(group)", "a list instead of a dict",
                 TypeError, r"a param group must be a dict, got list",
                 lambda w: w.optimizer.add_param_group([p()])),
        BadInput("parameter-none", "fx.Parameter(value)", "`None`", TypeError,
                 r"Parameter needs an array of numbers, got NoneType",
                 lambda w: fx.Parameter(None)),
        BadInput("parameter-string", "fx.Parameter(value)", "a string", TypeError,
                 r"Parameter needs an array of numbers, got str",
                 lambda w: fx.Parameter("weights")),
        # hyper-parameters written into param_groups, seen at the next step
        BadInput("group-write-lr<0", _STEP, "`param_groups[0]['lr'] = -1`", ValueError,
                 r"Invalid lr value: -1 \(expected a number >= 0\.0\)",
                 lambda w: w.optimizer.step(), prepare=_group_write("lr", -1)),
        BadInput("group-write-alpha-nan", _STEP, "`param_groups[1]['alpha'] = nan`", ValueError,
                 r"Invalid alpha value: nan", lambda w: w.optimizer.step(),
                 prepare=lambda w: w.optimizer.param_groups[1].update(alpha=math.nan)),
        BadInput("group-write-momentum<0", _STEP, "`param_groups[0]['momentum'] = -0.5`",
                 ValueError, r"Invalid momentum value: -0\.5", lambda w: w.optimizer.step(),
                 prepare=_group_write("momentum", -0.5)),
        BadInput("group-write-lr-str", _STEP, "`param_groups[0]['lr'] = '0.1'`", ValueError,
                 r"Invalid lr value: '0\.1' \(expected a real number\)",
                 lambda w: w.optimizer.step(),
                 prepare=_group_write("lr", "0.1")),
        BadInput("group-write-centered-int", _STEP, "`param_groups[0]['centered'] = 1`",
                 ValueError, r"Invalid centered value: 1 \(expected True or False\)",
                 lambda w: w.optimizer.step(), prepare=_group_write("centered", 1)),
        # gradients of the stateful face (the other Parameter's gradient is fine)
        BadInput("grad-shape", _STEP, "a gradient of the wrong shape", ValueError,
                 r"Parameter\(shape=\(2,\), dtype=float32\) has a gradient of shape \(3,\); "
                 r"expected \(2,\)", lambda w: w.optimizer.step(),
                 prepare=_set_grad("b", lambda w: jnp.ones(3))),
        BadInput("grad-dtype-float16", _STEP, "a float16 gradient for a float32 Parameter",
                 ValueError, r"has a gradient of dtype float16; expected float32 \(cast the "
                 r"gradient", lambda w: w.optimizer.step(),
                 prepare=_set_grad("w", lambda w: jnp.ones((3, 2), jnp.float16))),
        BadInput("grad-dtype-int32", _STEP, "an int32 gradient", ValueError,
                 r"has a gradient of dtype int32; expected float32", lambda w: w.optimizer.step(),
                 prepare=_set_grad("b", lambda w: jnp.ones(2, jnp.int32))),
        BadInput("grad-numpy", _STEP, "a NumPy array as `.grad`", TypeError,
                 r"has a \.grad of type ndarray; expected a jax\.Array",
                 lambda w: w.optimizer.step(),
                 prepare=_set_grad("b", lambda w: np.ones(2, np.float32))),
        BadInput("grad-list", _STEP, "a Python list as `.grad`", TypeError,
                 r"has a \.grad of type list; expected a jax\.Array",
                 lambda w: w.optimizer.step(), prepare=_set_grad("w", lambda w: [1.0] * 6)),
    ]


_UPDATE = "tx.update(grads, state, params)"
_INIT = "tx.init(params)"


def _functional_rows() -> list[BadInput]:
    def update_with(grads: Callable[[World], Any], tx: Callable[[World], Any] = lambda w: w.tx,
                    state: Callable[[World], Any] = lambda w: w.state) -> Callable[[World], Any]:
        return lambda w: tx(w).update(grads(w), state(w), w.params)

    g = lambda **kw: (lambda w: {**w.grads, **kw})
    return [
        BadInput("init-int32", _INIT, "an int32 leaf", TypeError,
                 r"rmsprop optimizes floating-point parameters only; \['n'\] has dtype int32\. "
                 r"Cast it", lambda w: w.tx.init({**w.params, "n": jnp.ones(2, jnp.int32)})),
        BadInput("init-bool", _INIT, "a bool leaf", TypeError,
                 r"floating-point parameters only; \['mask'\] has dtype bool",
                 lambda w: w.tx.init({**w.params, "mask": jnp.ones(2, jnp.bool_)})),
        BadInput("init-string", _INIT, "a string leaf", TypeError,
                 r"rmsprop: parameters must be arrays; \['name'\] is a str",
                 lambda w: w.tx.init({**w.params, "name": "layer1"})),
        BadInput("init-object", _INIT, "an arbitrary object as a leaf", TypeError,
                 r"rmsprop: parameters must be arrays; \['act'\] is a object",
                 lambda w: w.tx.init({**w.params, "act": object()})),
        BadInput("update-renamed-key", _UPDATE, "gradients with a renamed key", ValueError,
                 r"gradients do not match the state: first difference at \['bias'\] "
                 r"\(expected \['b'\]\)",
                 update_with(lambda w: {"bias": w.grads["b"], "w": w.grads["w"]})),
        BadInput("update-missing-leaf", _UPDATE, "gradients missing a leaf", ValueError,
                 r"gradients do not match the state: \['w'\] is missing from gradients",
                 update_with(lambda w: {"b": w.grads["b"]})),
        BadInput("update-extra-leaf", _UPDATE, "gradients with an extra leaf", ValueError,
                 r"gradients do not match the state: \['z'\] is unexpected in gradients",
                 update_with(g(z=jnp.ones(1)))),
        BadInput("update-shape", _UPDATE, "a gradient of the wrong shape", ValueError,
                 r"gradients do not match the state: \['w'\] has shape \(2, 3\), expected \(3, 2\)",
                 update_with(g(w=jnp.ones((2, 3))))),
        BadInput("update-none-leaf", _UPDATE, "`None` for an array gradient", ValueError,
                 r"gradients do not match the state: first difference at \['w'\] "
                 r"\(expected \['b'\]\)", update_with(g(b=None))),
        BadInput("update-int32-grads", _UPDATE, "int32 gradients (silently zero updates today)",
                 TypeError, r"rmsprop optimizes floating-point gradients only; \['b'\] has dtype "
                 r"int32", update_with(g(b=jnp.ones(2, jnp.int32)))),
        BadInput("update-wrong-state-type", _UPDATE,
                 "`None` (or another transform's state) as state",
                 TypeError, r"rmsprop: state must be the RMSpropState made by this transform's "
                 r"init, got NoneType", update_with(lambda w: w.grads, state=lambda w: None)),
        BadInput("update-state-other-config", _UPDATE,
                 "a plain state given to a centered transform (it would silently run plain)",
                 ValueError, r"rmsprop: the state lacks grad_avg, so it was made by an rmsprop "
                 r"with a different centered",
                 update_with(lambda w: w.grads,
                             state=lambda w: fx.rmsprop(momentum=0.9).init(w.params))),
        BadInput("update-state-extra-buffer", _UPDATE,
                 "a centered state given to a plain transform", ValueError,
                 r"rmsprop: the state has grad_avg, so it was made by an rmsprop with a different "
                 r"centered", update_with(lambda w: w.grads, tx=lambda w: fx.rmsprop(momentum=0.9))),
        BadInput("update-weight-decay-no-params", "tx.update(grads, state)",
                 "no params while weight_decay ≠ 0", ValueError,
                 r"rmsprop: weight_decay is non-zero, so update\(\) needs params",
                 lambda w: fx.rmsprop(weight_decay=0.1).update(
                     w.grads, fx.rmsprop(weight_decay=0.1).init(w.params))),
        BadInput("update-params-shape", _UPDATE, "params of the wrong shape (weight decay on)",
                 ValueError, r"params do not match the state: \['b'\] has shape \(3,\), expected "
                 r"\(2,\)", lambda w: fx.rmsprop(weight_decay=0.1).update(
                     w.grads, fx.rmsprop(weight_decay=0.1).init(w.params),
                     {**w.params, "b": jnp.ones(3)})),
    ]


HYPER_ROWS = _hyper_rows()
HYPER_IDS = {row.id for row in HYPER_ROWS}
BAD_INPUTS: list[BadInput] = HYPER_ROWS + _functional_rows() + _other_rows() + _state_rows()


def _run_row(row: BadInput) -> tuple[BaseException | None, bool]:
    """Runs a row on a fresh World: (the exception raised or None, whether anything changed)."""
    world = World()
    if row.prepare is not None:
        row.prepare(world)
    before = world.snapshot()
    try:
        row.act(world)
    except Exception as error:  # noqa: BLE001 - the row decides what was expected
        return error, world.snapshot() != before
    return None, world.snapshot() != before


def raised_by_lucid_fx(error: BaseException) -> bool:
    """True when ``error`` comes from an explicit ``raise`` in lucid_fx (not deep in jax/XLA)."""
    frame = traceback.extract_tb(error.__traceback__)[-1]
    inside = Path(frame.filename).resolve().is_relative_to(PACKAGE_DIR)
    return inside and linecache.getline(frame.filename, frame.lineno).strip().startswith("raise")


def _params(row: BadInput) -> Any:
    marks = []
    if row.needs_torch and torch is None:
        marks.append(pytest.mark.skip(reason=NO_TORCH))
    if row.id in HYPER_IDS:  # the fast tier has them in tests/test_family.py
        marks.append(pytest.mark.slow)
    return pytest.param(row, id=row.id, marks=marks)


def test_registry_ids_are_unique() -> None:
    ids = [row.id for row in BAD_INPUTS]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


@pytest.mark.parametrize("row", [_params(row) for row in BAD_INPUTS])
def test_bad_input_gets_a_clear_error_and_changes_nothing(row: BadInput) -> None:
    error, changed = _run_row(row)
    assert error is not None, f"{row.given}: accepted, expected {row.error.__name__}"
    assert type(error) is row.error, f"{type(error).__name__}: {error}"
    assert row.match and re.search(row.match, str(error)), str(error)
    assert raised_by_lucid_fx(error), "the error must come from lucid_fx's own checks"
    assert not changed, "a failed call changed parameters, gradients, state or hyper-parameters"


# ------------------------------------------------------------------ docs/errors.md


_DOC_HEADER = """\
# Bad input: what you get

Every row is a test (`tests/test_reliability.py::BAD_INPUTS`, id in the first
column): the call fails with this exception and message, and **nothing
changes** — parameters, gradients, every optimizer buffer, hyper-parameters and
the state dict you passed are checked bit for bit after the failure. The table
is generated from the tests (`python tests/test_reliability.py`) and a test
fails when it is out of date.

Not errors, on purpose:

- Loading a state dict saved with other hyper-parameters (another lr, centered,
  momentum) restores those hyper-parameters, as `torch.optim` does. A state dict
  of another *model* (group count, group sizes, shapes, dtypes) is an error.
- A state entry without `grad_avg` or `momentum_buffer` loads; the buffer starts
  at zero, exactly as when `centered` or momentum is switched on mid-run.
- `lr=inf` is accepted (as in torch); non-finite gradients propagate unless
  `skip_nonfinite=True` (see [reliability](reliability.md)).
- Traced hyper-parameters (inside `jax.jit`) and schedules are not checked:
  their values are unknown until the step runs.
- torch's implementation options (`foreach`, `fused`, `capturable`) are accepted
  wherever torch's signature has them, and change nothing.

The exception types are torch's wherever torch raises for the same input
(`ValueError` for a bad value, `TypeError` for a wrong type or an unknown
argument, `RuntimeError` for `fused=True` with `foreach=True`). Where lucid_fx
refuses what torch accepts, on purpose:

- a Parameter given twice in one group (torch warns, and steps it twice);
- a hyper-parameter key the optimizer does not have, in a group (torch keeps
  it silently, so a misspelt `"weight_decy"` is lost);
- values torch takes but that no run can use: `alpha > 1` for RMSprop,
  `lambd`, `alpha` or `t0` below 0 for ASGD, a non-pair `step_sizes` for
  Rprop, a negative `eps` for Muon, a negative `step` in a state dict, and the
  like (the table below);
- in the constructor, what torch refuses only at the first step: Muon's
  `ns_steps` of 100 or more and malformed `ns_coefficients` (`ValueError`),
  and a complex Parameter given to Muon or Adafactor (`RuntimeError`, torch's
  types);
- `differentiable=True`: a stateful step writes its Parameters in place, so
  there is nothing to differentiate; the functional face is the
  differentiable one (`jax.grad` through `tx.update`);
- a torch state dict whose step is not a whole number, or that does not fit
  the optimizer's parameters (torch would fail at its next step).

| id | call | bad input | exception | message |
|---|---|---|---|---|
"""


def _cell(text: str) -> str:
    text = re.sub(r" at 0x[0-9a-f]+", " at 0x…", text)  # object addresses change per run
    return " ".join(text.split()).replace("|", "\\|")


def render_errors_doc() -> str:
    """docs/errors.md, from BAD_INPUTS and the messages the code raises now."""
    lines = []
    for row in BAD_INPUTS:
        if row.needs_torch and torch is None:
            raise RuntimeError(f"rendering the table needs torch ({row.id})")
        error, _ = _run_row(row)
        matched = (
            error is not None and type(error) is row.error
            and re.search(row.match, str(error)) is not None
        )
        if not matched:
            got = "accepted" if error is None else f"{type(error).__name__}: {error}"
            raise RuntimeError(f"{row.id}: expected /{row.match}/, got {got}")
        message = f"`{_cell(str(error))}`"
        lines.append(
            f"| `{row.id}` | `{row.face}` | {_cell(row.given)} | {row.error.__name__} | {message} |"
        )
    return _DOC_HEADER + "\n".join(lines) + "\n"


@pytest.mark.slow  # every row of BAD_INPUTS again
@pytest.mark.skipif(torch is None, reason=NO_TORCH)
def test_errors_doc_is_current() -> None:
    expected = render_errors_doc()
    actual = DOC_PATH.read_text(encoding="utf-8") if DOC_PATH.exists() else ""
    assert actual == expected, "docs/errors.md is out of date: run python tests/test_reliability.py"


# ------------------------------------------------------------------ non-finite gradients


# RMSprop's flags one by one, and the two buffers together (its row's grid).
CONFIGS = {label: ROWS["rmsprop"].grid[label] for label in (
    "defaults", "momentum=0.9", "centered=True", "momentum=0.9,centered=True", "weight_decay=0.1")}


def _problem(seed: int) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(shape).astype(np.float32) for shape in ((3, 2), (2,))]
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in params] for _ in range(3)]
    return params, grads


def _without_skipped(state: Mapping[int, Mapping[str, Any]]) -> Any:
    return _canonical({i: {k: v for k, v in e.items() if k != "skipped"} for i, e in state.items()})


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
def test_stateful_skip_nonfinite_keeps_everything_and_counts(config: str, bad: float) -> None:
    hyper = {**CONFIGS[config], "lr": 0.1}
    params0, (g1, g2, g3) = _problem(1)
    params = [fx.Parameter(p) for p in params0]
    optimizer = fx.RMSprop([{"params": [params[0]]}, {"params": [params[1]]}],
                           skip_nonfinite=True, **hyper)

    def step(grads: list[np.ndarray]) -> dict[int, dict[str, np.ndarray]]:
        for p, g in zip(params, grads):
            p.grad = jnp.asarray(g)
        optimizer.step()
        return optimizer.state_dict()["state"]

    state1 = step(g1)
    values1 = _canonical([p.value for p in params])
    broken = [g.copy() for g in g2]
    broken[1][0] = bad  # one element of the second group's gradient skips the whole step
    state2 = step(broken)
    assert _canonical([p.value for p in params]) == values1, "parameters changed"
    assert _without_skipped(state2) == _without_skipped(state1), "a buffer or step changed"
    assert [int(e["skipped"]) for e in state2.values()] == [1, 1]
    state3 = step(g3)
    history, _ = reference_run(params0, [g1, g3], **hyper)
    for p, expected in zip(params, history[-1]):
        assert max_rel_error(p.value, expected) <= RTOL_F32
    assert [(int(e["step"]), int(e["skipped"])) for e in state3.values()] == [(2, 1), (2, 1)]


@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
def test_functional_skip_nonfinite_keeps_everything_and_counts(config: str) -> None:
    hyper = {**CONFIGS[config], "lr": 0.1}
    params0, (g1, g2, g3) = _problem(2)
    tx = fx.rmsprop(**hyper, skip_nonfinite=True)
    update = jax.jit(tx.update)
    params = [jnp.asarray(p) for p in params0]
    updates, state1 = update(g1, tx.init(params), params)
    params = fx.apply_updates(params, updates)
    broken = [g.copy() for g in g2]
    broken[0][1, 1] = math.nan
    zeros, state2 = update(broken, state1, params)
    assert all(not np.any(np.asarray(u)) for u in zeros)
    assert _canonical(list(state2._replace(skipped=None))) == _canonical(
        list(state1._replace(skipped=None)))
    assert int(state2.skipped) == 1
    updates, state3 = update(g3, state2, params)
    history, _ = reference_run(params0, [g1, g3], **hyper)
    for p, expected in zip(fx.apply_updates(params, updates), history[-1]):
        assert max_rel_error(p, expected) <= RTOL_F32
    assert (int(state3.step), int(state3.skipped)) == (2, 1)


@pytest.mark.skipif(torch is None, reason=NO_TORCH)
@pytest.mark.parametrize("config", ["defaults", "momentum=0.9,centered=True"])
def test_nonfinite_gradients_propagate_by_default_like_torch(config: str) -> None:
    hyper = {**CONFIGS[config], "lr": 0.1}
    params0, (g1, g2, _) = _problem(3)
    g2 = [g.copy() for g in g2]
    g2[0][0, 0], g2[0][2, 1], g2[1][1] = math.nan, math.inf, -math.inf
    ours = [fx.Parameter(p) for p in params0]
    theirs = [torch.nn.Parameter(torch.tensor(p)) for p in params0]
    optimizer = fx.RMSprop(ours, **hyper)
    torch_optimizer = torch.optim.RMSprop(theirs, **hyper)
    for grads in (g1, g2):
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = jnp.asarray(g), torch.tensor(g)
        optimizer.step()
        torch_optimizer.step()
    for p, q in zip(ours, theirs):
        mine, torch_value = np.asarray(p.value), q.detach().numpy()
        assert np.array_equal(np.isnan(mine), np.isnan(torch_value))
        assert np.isnan(mine).any()
        finite = np.isfinite(torch_value)
        assert max_rel_error(mine[finite], torch_value[finite]) <= RTOL_F32
    assert all(int(e["step"]) == 2 for e in optimizer.state_dict()["state"].values())


# ------------------------------------------------------------------ no NaN from rounding

# alpha = 0.5 and a gradient that is the same at every step: v - ḡ² is g²·α^t·(1 - α^t)
# mathematically, but in float32 it rounds below zero once α^t is tiny.
CLAMP_ALPHA, CLAMP_LR, CLAMP_STEPS = 0.5, 0.01, 200


def _constant_gradient() -> np.ndarray:
    return np.random.default_rng(7).uniform(0.5, 2.0, size=256).astype(np.float32)


@pytest.mark.skipif(torch is None, reason=NO_TORCH)
def test_torch_centered_rmsprop_turns_nan_on_constant_gradients() -> None:
    """The fact lucid_fx's clamp guards against, measured on torch itself (~22 steps in 2.13)."""
    g = torch.tensor(_constant_gradient())
    p = torch.nn.Parameter(torch.zeros_like(g))
    optimizer = torch.optim.RMSprop([p], lr=CLAMP_LR, alpha=CLAMP_ALPHA, centered=True)
    first_nan = None
    for step in range(1, 41):
        p.grad = g.clone()
        optimizer.step()
        if first_nan is None and bool(torch.isnan(p).any()):
            first_nan = step
    assert first_nan is not None and 10 <= first_nan <= 40, first_nan


def test_lucid_fx_centered_stays_finite_on_the_same_gradients() -> None:
    g = _constant_gradient()
    p = fx.Parameter(np.zeros_like(g))
    optimizer = fx.RMSprop([p], lr=CLAMP_LR, alpha=CLAMP_ALPHA, centered=True, momentum=0.5)
    tx = fx.rmsprop(lr=CLAMP_LR, alpha=CLAMP_ALPHA, centered=True)
    params, state, update = jnp.zeros_like(g), tx.init(jnp.zeros_like(g)), jax.jit(tx.update)
    reference = RMSpropReference([np.zeros_like(g)], lr=CLAMP_LR, alpha=CLAMP_ALPHA, centered=True)
    for step in range(CLAMP_STEPS):
        p.grad = jnp.asarray(g)
        optimizer.step()
        updates, state = update(jnp.asarray(g), state, params)
        params = fx.apply_updates(params, updates)
        # v - ḡ² = g²·α^t·(1-α^t) loses t bits to cancellation: compare while that is small.
        if step < 5:
            assert max_rel_error(params, reference.update([g])[0]) <= RTOL_F32
    assert bool(jnp.all(jnp.isfinite(params))) and bool(jnp.all(jnp.isfinite(p.value)))
    for leaf in [*jax.tree.leaves(state), *optimizer.state_dict()["state"][0].values()]:
        assert np.all(np.isfinite(np.asarray(leaf)))


# ------------------------------------------------------------------ soak

SOAK_STEPS = 20_000
RTOL_SOAK = 1e-4  # float32 against float64 after 20,000 steps (measured 6e-6)


def _soak_gradient(t: jax.Array) -> jax.Array:
    """Step t's gradient: zeros first, 1e6× spikes, and a run of zeros right after a spike."""
    base = jax.random.normal(jax.random.fold_in(jax.random.key(0), t), (16,))
    spike = jnp.where(t % 1000 == 300, 1e6, 1.0)  # the first non-zero gradient is a spike
    zero = (t < 300) | ((t % 4000 > 2300) & (t % 4000 <= 2900))
    return jnp.where(zero, 0.0, base * spike)


@pytest.mark.parametrize("config", ["defaults", "momentum=0.9,centered=True"])
def test_soak_spikes_and_zero_runs_stay_finite_and_exact(config: str) -> None:
    hyper = {**CONFIGS[config], "lr": 1e-3, "weight_decay": 1e-3}
    tx = fx.rmsprop(**hyper)
    params0 = jnp.linspace(-1.0, 1.0, 16)

    def body(carry: Any, t: jax.Array) -> tuple[Any, None]:
        params, state, finite, v_min = carry
        updates, state = tx.update(_soak_gradient(t), state, params)
        params = fx.apply_updates(params, updates)
        for leaf in jax.tree.leaves((params, state)):
            finite &= jnp.all(jnp.isfinite(leaf))
        return (params, state, finite, jnp.minimum(v_min, jnp.min(state.square_avg))), None

    init = (params0, tx.init(params0), jnp.array(True), jnp.array(jnp.inf))
    run = jax.jit(lambda c: jax.lax.scan(body, c, jnp.arange(SOAK_STEPS))[0])
    params, state, finite, v_min = run(init)
    assert bool(finite), "a parameter or buffer became NaN/Inf during the soak"
    assert float(v_min) >= 0
    assert int(state.step) == SOAK_STEPS
    # ... and the run is the formula's, not merely finite.
    grads = np.asarray(jax.jit(jax.vmap(_soak_gradient))(jnp.arange(SOAK_STEPS)))
    reference = RMSpropReference([np.asarray(params0)], **hyper)
    for g in grads:
        reference.update([g])
    assert max_rel_error(params, reference.params[0]) <= RTOL_SOAK
    assert max_rel_error(state.square_avg, reference.square_avg[0]) <= RTOL_SOAK


# ------------------------------------------------------------------ fuzzing


# A failure here is a missing check in lucid_fx; the first example already shows it,
# and shrinking would only cost CI time.
FUZZ_PHASES = (Phase.explicit, Phase.reuse, Phase.generate)


def assert_clear_error(error: BaseException) -> None:
    """A ValueError/TypeError from one of lucid_fx's own checks, with a message."""
    assert isinstance(error, (ValueError, TypeError)), f"{type(error).__name__}: {error}"
    assert raised_by_lucid_fx(error), f"raised outside lucid_fx's checks: {error!r}"
    assert len(str(error)) >= 20, repr(error)


RTOL_ONE_STEP = {jnp.dtype(jnp.bfloat16): 3e-2, jnp.dtype(jnp.float16): 4e-3,
                 jnp.dtype(jnp.float32): 1e-5}


def assert_matches(actual: Any, expected: np.ndarray, rtol: float = RTOL_F32) -> None:
    """Equal NaN/Inf pattern (with signs) and finite values within ``rtol`` of the reference."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(np.asarray(expected).astype(actual.dtype if actual.dtype != np.float64
                                                       else np.float64))
    assert np.array_equal(np.isnan(actual), np.isnan(expected)), (actual, expected)
    assert np.array_equal(np.isposinf(actual), np.isposinf(expected)), (actual, expected)
    assert np.array_equal(np.isneginf(actual), np.isneginf(expected)), (actual, expected)
    finite = np.isfinite(expected)
    assert max_rel_error(actual[finite], expected[finite]) <= rtol, (actual, expected)


HYPER_NAMES = ["lr", "alpha", "eps", "weight_decay", "momentum"]
FLAG_NAMES = ["centered", "maximize", "skip_nonfinite"]
# Moderate magnitudes (float32 arithmetic would overflow where float64 does not),
# plus the values that must be rejected or handled: NaN, ±Inf, 0, negatives, bools.
NUMBERS = st.one_of(
    st.floats(-1e3, 1e3, width=32), st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1.0]),
    st.integers(-2, 3), st.booleans(), st.complex_numbers(max_magnitude=2, allow_nan=False),
)
_P0 = np.array([1.0, 2.0, -3.0], np.float32)
_G = np.array([0.5, -1.0, 0.0], np.float32)


def _one_step(face: str, **hyper: Any) -> Any:
    if face == "functional":
        tx = fx.rmsprop(**hyper)
        updates, _ = tx.update(jnp.asarray(_G), tx.init(jnp.asarray(_P0)), jnp.asarray(_P0))
        return fx.apply_updates(jnp.asarray(_P0), updates)
    p = fx.Parameter(_P0)
    optimizer = fx.RMSprop([p], **hyper)
    p.grad = jnp.asarray(_G)
    optimizer.step()
    return p.value


@settings(max_examples=60)
@given(name=st.sampled_from(HYPER_NAMES), value=NUMBERS,
       face=st.sampled_from(["functional", "stateful"]))
def test_fuzz_numeric_hyperparameters(name: str, value: Any, face: str) -> None:
    try:
        result = _one_step(face, **{name: value})
    except Exception as error:  # noqa: BLE001
        assert_clear_error(error)
        assert (isinstance(value, (bool, complex)) or math.isnan(value) or value < 0
                or (name == "alpha" and value > 1)), f"{name}={value!r} rejected: {error}"
        return
    assert not isinstance(value, (bool, complex)) and value >= 0
    with np.errstate(all="ignore"):  # eps = 0 with g = 0 is 0/0 in the formula too
        expected, _ = reference_run([_P0], [[_G]], **{name: float(value)})
    assert_matches(result, expected[-1][0])


@settings(max_examples=30, phases=FUZZ_PHASES)
@given(name=st.sampled_from(HYPER_NAMES + FLAG_NAMES + ["state_dtype"]), data=st.data(),
       face=st.sampled_from(["functional", "stateful"]))
def test_fuzz_non_numbers_and_non_bool_flags(name: str, data: Any, face: str) -> None:
    junk = [st.text(max_size=3), st.lists(st.floats(0, 1), max_size=2), st.just(object()),
            st.just(np.ones(2, np.float32)), st.just({})]
    if name != "state_dtype":
        junk.append(st.none())
    if name in FLAG_NAMES:
        junk.append(st.integers(0, 1))
    value = data.draw(st.one_of(junk), label="value")
    with pytest.raises((ValueError, TypeError)) as info:
        _one_step(face, **{name: value})
    assert_clear_error(info.value)
    assert name in str(info.value)


_FLOAT_DTYPES = [jnp.float32, jnp.float16, jnp.bfloat16]


@st.composite
def _leaf(draw: Any, kinds: tuple[str, ...]) -> Any:
    kind = draw(st.sampled_from(kinds))
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=2)))
    seed = draw(st.integers(0, 2**16))
    values = np.random.default_rng(seed).standard_normal(shape)
    if kind == "float":
        return jnp.asarray(values, draw(st.sampled_from(_FLOAT_DTYPES)))
    if kind == "int":
        return jnp.asarray(values, draw(st.sampled_from([jnp.int32, jnp.bool_, jnp.uint8])))
    return {"none": None, "str": "relu", "pyfloat": 1.5, "object": object()}[kind]


def _trees(kinds: tuple[str, ...]) -> Any:
    return st.recursive(
        _leaf(kinds),
        lambda children: st.one_of(
            st.lists(children, max_size=3), st.tuples(children, children),
            st.dictionaries(st.text("abc", min_size=1, max_size=2), children, max_size=3)),
        max_leaves=5,
    )


def _mutated(tree: Any, mutation: str, seed: int) -> Any:
    """``tree`` with one leaf broken by ``mutation`` (``none`` leaves it intact)."""
    leaves, treedef = jax.tree.flatten(tree)
    if mutation == "none" or not leaves:
        return tree
    i = seed % len(leaves)
    if mutation == "shape":
        leaves[i] = jnp.zeros((*np.shape(leaves[i]), 2), jnp.result_type(leaves[i]))
    elif mutation == "int":
        leaves[i] = jnp.zeros(np.shape(leaves[i]), jnp.int32)
    elif mutation == "drop":
        return [leaves[:i] + leaves[i + 1:]] if len(leaves) > 1 else {"other": leaves[0]}
    elif mutation == "extra":
        return {"params": tree, "extra": jnp.zeros(1)}
    return jax.tree.unflatten(treedef, leaves)


def _fuzz_tree_update(params: Any, mutation: str, seed: int) -> None:
    tx = fx.rmsprop(lr=0.1, momentum=0.9, centered=True)
    has_non_float = any(not isinstance(x, (jax.Array, float)) or not jnp.issubdtype(
        jnp.result_type(x), jnp.inexact) for x in jax.tree.leaves(params))
    try:
        state = tx.init(params)
    except Exception as error:  # noqa: BLE001
        assert_clear_error(error)
        assert has_non_float, f"a tree of float arrays was rejected: {error}"
        return
    assert not has_non_float, "init accepted a non-float leaf"
    grads = jax.tree.map(lambda p: jnp.asarray(np.random.default_rng(seed).standard_normal(
        np.shape(p)), jnp.result_type(p)), params)
    broken = _mutated(grads, mutation, seed)
    try:
        updates, _ = tx.update(broken, state, params)
    except Exception as error:  # noqa: BLE001
        assert_clear_error(error)
        assert broken is not grads, f"correct gradients were rejected: {error}"
        return
    assert mutation == "none" or not jax.tree.leaves(grads), f"{mutation} was accepted"
    leaves = jax.tree.leaves(params)
    expected, _ = reference_run(
        [np.asarray(p, np.float64) for p in leaves],
        [[np.asarray(g, np.float64) for g in jax.tree.leaves(grads)]],
        lr=0.1, momentum=0.9, centered=True)
    for p, u, e in zip(leaves, jax.tree.leaves(updates), expected[-1]):
        assert u.dtype == jnp.result_type(p) and u.shape == np.shape(p)
        want = e - np.asarray(p, np.float64)
        scale = max(1.0, float(np.max(np.abs(want), initial=0)))
        error = float(np.max(np.abs(np.asarray(u, np.float64) - want), initial=0)) / scale
        assert error <= RTOL_ONE_STEP[jnp.result_type(p)], (jnp.result_type(p), error)


@settings(max_examples=40)
@given(params=_trees(("float", "float", "int", "none")),
       mutation=st.sampled_from(["none", "none", "shape", "drop", "extra"]),
       seed=st.integers(0, 100))
def test_fuzz_pytrees_through_init_and_update(params: Any, mutation: str, seed: int) -> None:
    _fuzz_tree_update(params, mutation, seed)


@settings(max_examples=30, phases=FUZZ_PHASES)
@given(params=_trees(("float", "str", "object", "pyfloat")),
       mutation=st.sampled_from(["none", "int"]), seed=st.integers(0, 100))
def test_fuzz_odd_leaves_and_integer_gradients(params: Any, mutation: str, seed: int) -> None:
    _fuzz_tree_update(params, mutation, seed)


_GRAD_KINDS = ["ok", "ok", "none", "shape", "float16", "int32", "bool", "numpy", "list", "pyfloat"]


def _bad_grad(kind: str, p: fx.Parameter, rng: np.random.Generator) -> Any:
    good = rng.standard_normal(p.shape).astype(np.float32)
    return {
        "ok": jnp.asarray(good), "none": None, "shape": jnp.asarray(good.reshape(-1)[:-1]),
        "float16": jnp.asarray(good, jnp.float16), "int32": jnp.asarray(good, jnp.int32),
        "bool": jnp.asarray(good > 0), "numpy": good, "list": good.tolist(), "pyfloat": 0.5,
    }[kind]


@settings(max_examples=40)
@given(kinds=st.lists(st.sampled_from(_GRAD_KINDS), min_size=2, max_size=2),
       seed=st.integers(0, 100), skip=st.booleans())
def test_fuzz_stateful_gradients(kinds: list[str], seed: int, skip: bool) -> None:
    rng = np.random.default_rng(seed)
    params0 = [rng.standard_normal(shape).astype(np.float32) for shape in ((2, 2), (3,))]
    params = [fx.Parameter(p) for p in params0]
    optimizer = fx.RMSprop(params, lr=0.1, momentum=0.9, skip_nonfinite=skip)
    grads = [_bad_grad(kind, p, rng) for kind, p in zip(kinds, params)]
    for p, g in zip(params, grads):
        p.grad = g
    before = _canonical([[p.value for p in params], optimizer.state_dict()])
    try:
        optimizer.step()
    except Exception as error:  # noqa: BLE001
        assert_clear_error(error)
        assert set(kinds) - {"ok", "none"}, f"good gradients were rejected: {error}"
        assert _canonical([[p.value for p in params], optimizer.state_dict()]) == before
        return
    assert set(kinds) <= {"ok", "none"}, f"{kinds} was accepted"
    for p, p0, g, kind in zip(params, params0, grads, kinds):
        if kind == "none":
            assert np.array_equal(p.value, p0) and p not in optimizer.state
        else:
            expected, _ = reference_run([p0], [[np.asarray(g)]], lr=0.1, momentum=0.9)
            assert max_rel_error(p.value, expected[-1][0]) <= RTOL_F32


def _paths(tree: Any, containers: bool, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into the nested dicts/lists of a state dict (without ``containers``, not
    into the lists of parameter indices, which are structure)."""
    out = [prefix] if prefix else []
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _paths(v, containers, prefix + (k,))
    elif isinstance(tree, list) and (containers or prefix[-1:] != ("params",)):
        for i, v in enumerate(tree):
            out += _paths(v, containers, prefix + (i,))
    return out


JUNK_VALUES = st.one_of(
    st.floats(-2, 2, width=32), st.sampled_from([math.nan, -1.0, 0, 7]),
    st.builds(lambda shape, dtype: np.zeros(shape, dtype),
              st.lists(st.integers(0, 3), max_size=2).map(tuple),
              st.sampled_from([np.float32, np.float64, np.int32])),
)


def _fuzz_load(edits: list[tuple[int, str, Any]], *, containers: bool,
               from_torch: bool = False) -> None:
    """Loads the World's saved state dict (or a torch one) after ``edits``; ``containers``
    lets junk replace dicts and lists too (not only arrays and numbers)."""
    world = World()
    sd = _torch_state_dict() if from_torch else copy.deepcopy(world.saved)
    for choice, op, junk in edits:
        paths = _paths(sd, containers)
        path = paths[choice % len(paths)]
        parent = sd
        for key in path[:-1]:
            parent = parent[key]
        if op == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif op == "extra" and isinstance(parent, dict):
            parent[f"unknown_{choice}"] = junk
        elif containers or not isinstance(parent[path[-1]], (dict, list)):
            parent[path[-1]] = junk
    before = world.snapshot()
    try:
        world.optimizer.load_state_dict(sd)
    except Exception as error:  # noqa: BLE001
        assert_clear_error(error)
        assert world.snapshot() == before, "a failed load changed the optimizer"
        return
    # Accepted: the optimizer now holds exactly what was loaded (for a torch dict, its
    # conversion: tests/test_torch_migration.py), and can step.
    if not from_torch:
        loaded = world.optimizer.state_dict()
        for i, entry in sd["state"].items():
            for key, value in entry.items():
                assert _canonical(loaded["state"][i][key]) == _canonical(np.asarray(value)), key
        for group, saved in zip(loaded["param_groups"], sd["param_groups"]):
            assert _canonical({k: group[k] for k in saved}) == _canonical(saved)
    world.set_grads(np.random.default_rng(1))
    try:
        world.optimizer.step()
    except Exception as error:  # noqa: BLE001
        assert_clear_error(error)  # e.g. an lr edited into an invalid value is reported here


@settings(max_examples=25)
@given(edits=st.lists(st.tuples(st.integers(0, 1000), st.sampled_from(["delete", "extra", "set"]),
                                 JUNK_VALUES), min_size=1, max_size=3))
def test_fuzz_edited_state_dicts(edits: list[tuple[int, str, Any]]) -> None:
    _fuzz_load(edits, containers=False)


@pytest.mark.skipif(torch is None, reason=NO_TORCH)
@settings(max_examples=25)
@given(edits=st.lists(st.tuples(st.integers(0, 1000), st.sampled_from(["delete", "extra", "set"]),
                                 JUNK_VALUES), min_size=1, max_size=3))
def test_fuzz_edited_torch_state_dicts(edits: list[tuple[int, str, Any]]) -> None:
    _fuzz_load(edits, containers=False, from_torch=True)


@settings(max_examples=25, phases=FUZZ_PHASES)
@given(edits=st.lists(st.tuples(
    st.integers(0, 1000), st.sampled_from(["set"]),
    st.one_of(st.none(), st.text(max_size=2), st.just([]), st.just({}), st.integers(0, 1))),
    min_size=1, max_size=2))
def test_fuzz_state_dicts_with_junk_structure(edits: list[tuple[int, str, Any]]) -> None:
    _fuzz_load(edits, containers=True)


if __name__ == "__main__":
    DOC_PATH.parent.mkdir(exist_ok=True)
    DOC_PATH.write_text(render_errors_doc(), encoding="utf-8")
    print(f"wrote {DOC_PATH} ({len(BAD_INPUTS)} rows)")
