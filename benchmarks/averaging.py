"""Weight averaging: ``AveragedModel.update_parameters`` against torch's and a jitted ``tree_map``.

One EMA update (decay 0.999, torch's ``get_ema_multi_avg_fn``) of the average of
a model's weights, per tensor set (``workloads.tensor_sets``, and a few large tensors):

- lucid_fx: ``swa_utils.AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.999))``
  with the model held by ``fx.SGD``, as in training: one compiled, donated call
  over the packed buffers;
- optax column: the jitted, donated ``tree_map`` a JAX user writes,
  ``optax.incremental_update(params, average, 1 - decay)``;
- torch: ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn``
  (``torch._foreach_lerp_`` under it, and its Python loop over the parameters).

The notes add lucid_fx's functional twin (``ema_average(0.999).update``, jitted
and donated), ``AveragedModel`` over Parameters no optimizer holds, torch's bare
``_foreach_lerp_`` without ``AveragedModel``'s loop, torch's ``AveragedModel`` on one thread, and each contender's
memory throughput (12 bytes per float32: read the average and the model, write the
average). On a shared, loaded machine torch's two-thread OpenMP regions can wait for a
core at every tensor (measured: 285 ms per ResNet-50 update at load 3-5 on 2 cores, 16 ms
on one thread), so both are shown.

    python benchmarks/run.py --cases averaging            # full sizes
    python benchmarks/run.py --cases averaging --quick    # small sizes, a smoke run

(This module imports ``cases`` only inside a function: ``cases`` lists this case.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax
from harness import (
    Row,
    Settings,
    copy_tree,
    timed,
    torch,
    torch_tensors,
)
from workloads import tensor_sets

import lucid_fx as fx
from lucid_fx import swa_utils

DECAY = 0.999
BYTES_PER_ELEMENT = 12  # float32: read the average and the model, write the average

TWIN = "fx.swa_utils.ema_average (jitted)"
PLAIN = "AveragedModel, no optimizer"
ONE_THREAD = "torch, 1 thread"
FOREACH = "torch._foreach_lerp_ alone"


def _sets(settings: Settings) -> dict[str, list[tuple[int, ...]]]:
    """The benchmarks' tensor sets (``workloads.tensor_sets``), and a few large tensors."""
    large = {"4 x 256K": [(2**18,)] * 4} if settings.quick else {"4 x 4M": [(4 * 2**20,)] * 4}
    return {**tensor_sets(settings), **large}


def _lucid(arrays: list[jax.Array], held: bool) -> Callable[[int], None]:
    model = {f"p{i:04d}": fx.Parameter(a) for i, a in enumerate(arrays)}
    if held:  # the Parameters move into the optimizer's packed storage, as in training
        fx.SGD(fx.parameters(model), lr=0.1)
    ema = swa_utils.AveragedModel(model, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(DECAY))
    ema.update_parameters(model)  # the first update copies; the next ones average
    first = fx.parameters(ema.module)[0]

    def run(n: int) -> None:
        for _ in range(n):
            ema.update_parameters(model)
        jax.block_until_ready(first.value)  # every buffer is an output of the same call

    return run


def _jax_tree(arrays: list[jax.Array], twin: bool) -> Callable[[int], None]:
    if twin:
        averaging = swa_utils.ema_average(DECAY)
        step = jax.jit(lambda state, p: averaging.update(p, state), donate_argnums=0)
        box: list[Any] = [step(averaging.init(arrays), arrays)]
    else:
        step = jax.jit(lambda avg, p: optax.incremental_update(p, avg, 1 - DECAY),
                       donate_argnums=0)
        box = [copy_tree(arrays)]

    def run(n: int) -> None:
        for _ in range(n):
            box[0] = step(box[0], arrays)
        jax.block_until_ready(box[0])

    return run


def _torch(arrays: list[jax.Array], threads: int | None = None) -> Callable[[int], None]:
    model = torch.nn.ParameterList([torch.nn.Parameter(t) for t in torch_tensors(arrays)])
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(DECAY))
    ema.update_parameters(model)

    def run(n: int) -> None:
        default = torch.get_num_threads()
        torch.set_num_threads(threads or default)
        try:
            for _ in range(n):
                ema.update_parameters(model)
        finally:
            torch.set_num_threads(default)

    return run


def _foreach(arrays: list[jax.Array]) -> Callable[[int], None]:
    average, current = torch_tensors(arrays), torch_tensors(arrays)

    def run(n: int) -> None:
        for _ in range(n):
            torch._foreach_lerp_(average, current, 1 - DECAY)

    return run


def averaging(settings: Settings) -> list[Row]:
    """One EMA update of the averaged weights, per tensor set: three libraries side by side."""
    rows = []
    for name, shapes in _sets(settings).items():
        keys = jax.random.split(jax.random.key(0), len(shapes))
        arrays = [jax.random.normal(k, s) for k, s in zip(keys, shapes)]
        runs = {"lucid_fx": _lucid(arrays, held=True), "optax": _jax_tree(arrays, twin=False),
                TWIN: _jax_tree(arrays, twin=True), PLAIN: _lucid(arrays, held=False)}
        if torch is not None:
            runs |= {"torch": _torch(arrays), ONE_THREAD: _torch(arrays, threads=1),
                     FOREACH: _foreach(arrays)}
        times = timed(runs, settings)
        elements = sum(a.size for a in arrays)
        rate = {k: BYTES_PER_ELEMENT * elements / t / 1e9 for k, t in times.items()}
        others = [k for k in times if k not in ("lucid_fx", "optax", "torch")]
        notes = [f"{k} {times[k] / times['lucid_fx']:.2f}×" for k in others]
        notes.append("GB/s " + " · ".join(f"{k} {rate[k]:.1f}" for k in ("lucid_fx", "optax", "torch")
                                         if k in rate))
        rows.append(Row(
            case=f"EMA update, {name}", unit="s", lucid_fx=times["lucid_fx"],
            optax=times["optax"], torch=times.get("torch"),
            notes="; ".join(notes) + " (times relative to lucid_fx)",
            extra={"times_s": times, "gb_per_s": rate, "elements": elements,
                   "tensors": len(shapes)},
        ))
        del runs
    return rows

