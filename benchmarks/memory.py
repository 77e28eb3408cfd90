"""Child process of the memory case: peak RSS of steady-state steps over big parameters.

Run by ``benchmarks/run.py`` in a fresh interpreter per library, so that each
RSS belongs to one library alone. Prints one JSON line:

- ``baseline_rss``: resident bytes after importing the library and running a
  tiny computation (the runtime itself), before any big array exists;
- ``live_bytes``: parameters + gradients + optimizer state, counted from the arrays;
- ``peak_step_rss``: the resident high-water mark over three steps after a
  warm-up step (Linux: reset through ``/proc/self/clear_refs``); where the
  reset is not allowed, the whole-process peak is reported and ``reset`` is false.

Usage: ``python benchmarks/memory.py --impl lucid_fx --bytes 1073741824``
(impl: lucid_fx, lucid_fx-no-donation, optax, torch).
"""

from __future__ import annotations

import argparse
import json
import resource
from typing import Any

LR, ALPHA, EPS = 0.01, 0.99, 1e-8
STEPS = 3


def _status(field: str) -> int:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak(reset: bool) -> int:
    if reset:
        return _status("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_jax(impl: str, n: int) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import optax

    import lucid_fx as fx

    jax.block_until_ready(jax.jit(lambda x: x + 1)(jnp.zeros(8)))
    baseline = _status("VmRSS")
    if impl == "optax":
        tx, apply = optax.rmsprop(LR, decay=ALPHA, eps=EPS, eps_in_sqrt=False), optax.apply_updates
    else:
        tx, apply = fx.rmsprop(lr=LR, alpha=ALPHA, eps=EPS), fx.apply_updates

    def step(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
        updates, state = tx.update(grads, state, params)
        return apply(params, updates), state

    donate = (0, 1) if impl != "lucid_fx-no-donation" else ()
    params = jnp.full((n,), 0.5, jnp.float32)
    grads = jnp.full((n,), 1e-3, jnp.float32)
    state = tx.init(params)
    compiled = jax.jit(step, donate_argnums=donate).lower(params, state, grads).compile()
    params, state = jax.block_until_ready(compiled(params, state, grads))
    live = sum(x.nbytes for x in jax.tree.leaves((params, grads, state)))
    reset = _reset_peak()
    for _ in range(STEPS):
        params, state = jax.block_until_ready(compiled(params, state, grads))
    return {"baseline_rss": baseline, "live_bytes": live, "peak_step_rss": _peak(reset),
            "reset": reset}


def run_torch(n: int) -> dict[str, Any]:
    import torch

    torch.zeros(8).add_(1)
    baseline = _status("VmRSS")
    params = torch.full((n,), 0.5)
    params.grad = torch.full((n,), 1e-3)
    optimizer = torch.optim.RMSprop([params], lr=LR, alpha=ALPHA, eps=EPS, foreach=True)
    optimizer.step()  # creates the state
    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    live = sum(t.numel() * t.element_size() for t in [params, params.grad, *state])
    reset = _reset_peak()
    for _ in range(STEPS):
        optimizer.step()
    return {"baseline_rss": baseline, "live_bytes": live, "peak_step_rss": _peak(reset),
            "reset": reset}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", required=True,
                        choices=["lucid_fx", "lucid_fx-no-donation", "optax", "torch"])
    parser.add_argument("--bytes", type=int, default=2**30, help="bytes of float32 parameters")
    args = parser.parse_args()
    n = args.bytes // 4
    result = run_torch(n) if args.impl == "torch" else run_jax(args.impl, n)
    print(json.dumps({"impl": args.impl, **result}))


if __name__ == "__main__":
    main()
