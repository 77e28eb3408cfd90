"""The shape-aware cases: Muon and Adafactor against torch's and optax's, side by side.

Both run on the matrices of a transformer: ``layers`` blocks of four d×d
attention matrices, one d×4d and one 4d×d (d = 768 as in GPT-2 small on an
accelerator; d = 256 on a CPU, where 768 would take tens of seconds a step,
and the row says which).

- ``muon``: the functional step (jitted, donated), whose Newton–Schulz runs once
  per stack of equal shapes (the four attention matrices of all layers are one
  stack of 4·layers); in the notes the same step with one iteration per matrix
  (each matrix its own ``fx.muon``, through ``optax.partition``), with the
  iteration in float32, and ``fx.Muon.step()``. torch's ``Muon`` (bfloat16, one
  iteration per matrix) and ``optax.contrib.muon`` (float32, one per matrix, its
  own Nesterov form and scaling: similar, not torch's numbers) alongside.
- ``adafactor``: the functional step against torch's ``Adafactor`` (foreach) and
  ``optax.adafactor`` (the paper's algorithm: similar, not torch's numbers), the
  matrices with a bias each; and a memory row: the bytes of each library's
  optimizer state, with Adam's beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from harness import Row, Settings, copy_tree, jax_loop, timed, torch, transform_step, wait_for_step

import lucid_fx as fx

MUON = {"lr": 0.02, "weight_decay": 0.1}
ADAFACTOR = {"lr": 1e-2}


def transformer_shapes(settings: Settings) -> tuple[str, list[tuple[int, ...]]]:
    """A label and the matrices of ``layers`` transformer blocks of width d."""
    if settings.quick:
        d, layers = 64, 2
    else:
        d, layers = (256, 12) if jax.default_backend() == "cpu" else (768, 12)
    block = [(d, d)] * 4 + [(d, 4 * d), (4 * d, d)]
    return f"{layers} layers of 4 × {d}², {d}×{4 * d}, {4 * d}×{d}", block * layers


def _arrays(shapes: list[tuple[int, ...]], seed: int, scale: float = 1.0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    return {f"p{i:03d}": jnp.asarray(scale * rng.standard_normal(s), jnp.float32)
            for i, s in enumerate(shapes)}



def _functional(tx: Any, params: Any, grads: Any) -> Callable[[int], None]:
    return jax_loop(transform_step(tx, optax.apply_updates), (copy_tree(params), tx.init(params)),
                    grads)


def _stateful(cls: Any, params: dict[str, jax.Array], grads: dict[str, jax.Array],
              **kwargs: Any) -> Callable[[int], None]:
    model = {k: fx.Parameter(jnp.array(v, copy=True)) for k, v in params.items()}
    optimizer = cls(fx.parameters(model), **kwargs)

    def run(n: int) -> None:
        for _ in range(n):
            for k, p in model.items():
                p.grad = grads[k]
            optimizer.step()
        wait_for_step(optimizer)

    return run


def _torch(cls_name: str, params: dict[str, jax.Array], grads: dict[str, jax.Array],
           **kwargs: Any) -> tuple[Callable[[int], None], Any]:
    tensors = [torch.nn.Parameter(torch.from_numpy(np.array(v))) for v in params.values()]
    for t, g in zip(tensors, grads.values()):
        t.grad = torch.from_numpy(np.array(g))
    optimizer = getattr(torch.optim, cls_name)(tensors, **kwargs)

    def run(n: int) -> None:
        for _ in range(n):
            optimizer.step()

    return run, optimizer



def _notes(times: dict[str, float], labels: dict[str, str]) -> str:
    return "; ".join(f"{text}: {times[key] / times['lucid_fx']:.2f}× ours"
                     for key, text in labels.items() if key in times)


def muon(settings: Settings) -> list[Row]:
    """Muon's step with one batched Newton–Schulz per shape, and the alternatives."""
    label, shapes = transformer_shapes(settings)
    params = _arrays(shapes, 0, 0.02)
    grads = _arrays(shapes, 1, 0.01)
    one_by_one = optax.partition({k: fx.muon(**MUON) for k in params}, {k: k for k in params})
    runs = {
        "lucid_fx": _functional(fx.muon(**MUON), params, grads),
        "one by one": _functional(one_by_one, params, grads),
        "float32": _functional(fx.muon(**MUON, ns_dtype=jnp.float32), params, grads),
        "stateful": _stateful(fx.Muon, params, grads, **MUON),
        "optax": _functional(optax.contrib.muon(MUON["lr"], weight_decay=MUON["weight_decay"]),
                             params, grads),
    }
    if torch is not None:
        runs["torch"] = _torch("Muon", params, grads, **MUON)[0]
    times = timed(runs, settings)
    notes = _notes(times, {"one by one": "one Newton–Schulz per matrix",
                           "float32": "ns_dtype=float32", "stateful": "fx.Muon.step()"})
    return [Row(
        case=f"Muon, {label}: jitted step, batched Newton–Schulz", unit="s",
        lucid_fx=times["lucid_fx"], optax=times.get("optax"), torch=times.get("torch"),
        notes=f"{notes} (optax.contrib.muon: float32 iteration, its own scaling)",
        extra={"matrices": len(shapes), "elements": sum(int(np.prod(s)) for s in shapes),
               "times_s": times},
    )]


def _state_bytes(tree: Any) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(tree) if hasattr(x, "nbytes"))


def adafactor(settings: Settings) -> list[Row]:
    """Adafactor's step and the bytes of its factored state."""
    label, shapes = transformer_shapes(settings)
    shapes = shapes + [(s[1],) for s in shapes]  # a bias per matrix: Adafactor's unfactored V
    params = _arrays(shapes, 2, 0.02)
    grads = _arrays(shapes, 3, 0.01)
    paper = optax.adafactor(ADAFACTOR["lr"])
    runs = {
        "lucid_fx": _functional(fx.adafactor(**ADAFACTOR), params, grads),
        "stateful": _stateful(fx.Adafactor, params, grads, **ADAFACTOR),
        "optax": _functional(paper, params, grads),
    }
    torch_optimizer = None
    if torch is not None:
        runs["torch"], torch_optimizer = _torch("Adafactor", params, grads, foreach=True,
                                                **ADAFACTOR)
    times = timed(runs, settings)
    elements = sum(int(np.prod(s)) for s in shapes)
    rows = [Row(
        case=f"Adafactor, {label} and their biases: jitted step", unit="s",
        lucid_fx=times["lucid_fx"], optax=times.get("optax"), torch=times.get("torch"),
        notes=(_notes(times, {"stateful": "fx.Adafactor.step()"}) + "; torch foreach=True "
               "(optax.adafactor: the paper's algorithm, similar, not torch's numbers)"),
        extra={"elements": elements, "times_s": times},
    )]
    ours = _state_bytes(fx.adafactor(**ADAFACTOR).init(params))
    adam = _state_bytes(fx.adam().init(params))
    theirs = _state_bytes(paper.init(params))
    torch_bytes = None
    if torch_optimizer is not None:
        torch_bytes = sum(t.nbytes for state in torch_optimizer.state.values()
                          for t in state.values() if hasattr(t, "nbytes"))
    rows.append(Row(
        case=f"Adafactor's state, {label} and their biases", unit="bytes", lucid_fx=ours,
        optax=theirs, torch=torch_bytes,
        notes=f"fx.adam's state: {adam / ours:.0f}× ours ({adam / 2**20:.0f} MiB)",
        extra={"state_bytes": {"lucid_fx": ours, "optax": theirs, "torch": torch_bytes,
                               "fx.adam": adam}, "param_bytes": 4 * elements},
    ))
    return rows
