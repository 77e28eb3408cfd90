"""The family case: every optimizer's step against optax's and torch's, side by side.

Two rows per optimizer:

- the functional step (jitted, donated) on one large float32 tensor, against
  optax's transform for the same algorithm and torch's single-tensor step; in the
  notes, for Adam and AdamW torch's ``fused=True`` CPU kernel, on CPU the same jitted
  step compiled with ``lucid_fx._src.stateful.steps.CPU_COMPILER_OPTIONS``, and the stateful
  ``step()`` over the same tensor (which compiles with those options on CPU);
- the stateful ``step()`` over many small tensors with gradients assigned by hand,
  against optax's jitted tree step and torch's ``foreach=True`` step.

Hyper-parameters are each library's defaults where they agree, and set equal
where they do not; optax's transforms that differ from torch's math (its NAdam,
Adagrad's ε) are marked "similar" in the notes: the same memory traffic, not the
same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from harness import (
    Row,
    Settings,
    copy_tree,
    jax_loop,
    timed,
    torch,
    torch_tensors,
    transform_step,
    wait_for_step,
)

import lucid_fx as fx
from lucid_fx._src.stateful.steps import CPU_COMPILER_OPTIONS

WITH_CPU_OPTIONS = "lucid_fx (CPU_COMPILER_OPTIONS)"


@dataclass(frozen=True)
class Member:
    """One optimizer: its fx names, the same configuration for each library."""

    name: str  # fx.<name> and fx.<Stateful>
    stateful: str
    kwargs: dict[str, Any]
    optax: Callable[[], optax.GradientTransformation] | None
    same_math: bool  # optax's transform computes torch's numbers
    torch_kwargs: dict[str, Any] = field(default_factory=dict)
    fused: bool = False  # torch has a fused CPU kernel to compare with


FAMILY = [
    Member("sgd", "SGD", {"lr": 0.01, "momentum": 0.9},
           lambda: optax.sgd(0.01, momentum=0.9), True),
    Member("adam", "Adam", {"lr": 1e-3}, lambda: optax.adam(1e-3, eps_root=0.0), True,
           fused=True),
    Member("adamw", "AdamW", {"lr": 1e-3, "weight_decay": 1e-2},
           lambda: optax.adamw(1e-3, eps_root=0.0, weight_decay=1e-2), True, fused=True),
    Member("adagrad", "Adagrad", {"lr": 1e-2},
           lambda: optax.adagrad(1e-2, initial_accumulator_value=0.0, eps=1e-10), False),
    Member("adadelta", "Adadelta", {"lr": 1.0}, lambda: optax.adadelta(1.0, eps=1e-6), False),
    Member("adamax", "Adamax", {"lr": 2e-3}, lambda: optax.adamax(2e-3), False),
    Member("nadam", "NAdam", {"lr": 2e-3}, lambda: optax.nadam(2e-3), False),
    Member("radam", "RAdam", {"lr": 1e-3}, lambda: optax.radam(1e-3), False),
    Member("asgd", "ASGD", {"lr": 1e-2}, None, False),
    Member("rprop", "Rprop", {"lr": 1e-2}, lambda: optax.rprop(1e-2), False),
]


def _members() -> list[Member]:
    """The members this lucid_fx has (both faces)."""
    return [m for m in FAMILY if hasattr(fx, m.name) and hasattr(fx, m.stateful)]



def _torch_run(member: Member, params: list[Any], grads: list[Any],
               **options: Any) -> Callable[[int], None]:
    for p, g in zip(params, grads):
        p.grad = g
    optimizer = getattr(torch.optim, member.stateful)(params, **member.kwargs, **options)

    def run(n: int) -> None:
        for _ in range(n):
            optimizer.step()

    return run



def _stateful_run(member: Member, params: list[jax.Array],
                  grads: list[jax.Array]) -> Callable[[int], None]:
    model = [fx.Parameter(p) for p in params]
    optimizer = getattr(fx, member.stateful)(model, **member.kwargs)

    def run(n: int) -> None:
        for _ in range(n):
            for p, g in zip(model, grads):
                p.grad = g
            optimizer.step()
        wait_for_step(optimizer)

    return run



def family(settings: Settings) -> list[Row]:
    """Each optimizer's functional step on a large tensor and stateful step on many small ones."""
    n = 2**20 if settings.quick else 16 * 2**20
    count, size = (100, 100) if settings.quick else (1000, 100)
    p0 = jax.random.normal(jax.random.key(0), (n,), jnp.float32)
    g0 = 0.01 * jax.random.normal(jax.random.key(1), (n,), jnp.float32)
    rng = np.random.default_rng(5)
    small = [jnp.asarray(rng.normal(size=size), jnp.float32) for _ in range(count)]
    small_grads = [jnp.asarray(0.01 * rng.normal(size=size), jnp.float32) for _ in range(count)]
    rows = []
    for member in _members():
        similar = ("" if member.same_math or member.optax is None
                   else " (optax: similar algorithm, not torch's numbers)")
        # -- functional, one large tensor
        tx = getattr(fx, member.name)(**member.kwargs)
        runs = {"lucid_fx": jax_loop(transform_step(tx, fx.apply_updates),
                                     (copy_tree(p0), tx.init(p0)), g0)}
        if jax.default_backend() == "cpu":
            runs[WITH_CPU_OPTIONS] = jax_loop(
                transform_step(tx, fx.apply_updates, CPU_COMPILER_OPTIONS),
                (copy_tree(p0), tx.init(p0)), g0)
        runs[f"fx.{member.stateful}.step()"] = _stateful_run(member, [copy_tree(p0)], [g0])
        if member.optax is not None:
            otx = member.optax()
            runs["optax"] = jax_loop(transform_step(otx, optax.apply_updates),
                                     (copy_tree(p0), otx.init(p0)), g0)
        if torch is not None:
            runs["torch"] = _torch_run(member, torch_tensors([p0]), torch_tensors([g0]),
                                       foreach=False)
            if member.fused:
                runs["torch fused"] = _torch_run(member, torch_tensors([p0]),
                                                 torch_tensors([g0]), fused=True)
        times = timed(runs, settings)
        notes = "; ".join(
            f"{label} takes {times[key] / times['lucid_fx']:.2f}× ours"
            for key, label in (("torch fused", "torch fused=True"),
                               (WITH_CPU_OPTIONS, "jitted with CPU_COMPILER_OPTIONS"),
                               (f"fx.{member.stateful}.step()", f"fx.{member.stateful}.step()"))
            if key in times)
        rows.append(Row(
            case=f"{n // 2**20}M f32, fx.{member.name} jitted step", unit="s",
            lucid_fx=times["lucid_fx"], optax=times.get("optax"), torch=times.get("torch"),
            notes=(notes + similar).strip(),
            extra={"elements": n, "times_s": times, "optax_same_math": member.same_math},
        ))
        # -- stateful, many small tensors, gradients assigned by hand
        runs = {"lucid_fx": _stateful_run(member, small, small_grads)}
        if member.optax is not None:
            otx = member.optax()
            runs["optax"] = jax_loop(transform_step(otx, optax.apply_updates),
                                     (copy_tree(small), otx.init(small)), small_grads)
        if torch is not None:
            runs["torch"] = _torch_run(member, torch_tensors(small), torch_tensors(small_grads),
                                       foreach=True)
        times = timed(runs, settings)
        rows.append(Row(
            case=f"{count} × {size} f32, fx.{member.stateful}.step() (grads by hand)", unit="s",
            lucid_fx=times["lucid_fx"], optax=times.get("optax"), torch=times.get("torch"),
            notes=("torch foreach=True" + similar),
            extra={"tensors": count, "elements": count * size, "times_s": times,
                   "optax_same_math": member.same_math},
        ))
    assert all(math.isfinite(r.lucid_fx or math.nan) for r in rows), "a contender did not run"
    return rows
