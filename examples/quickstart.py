"""Quickstart: least-squares regression with the functional ``fx.rmsprop``.

Fits y = X·w + b on scikit-learn's bundled diabetes data (no download) inside a
jitted training step, with the learning rate annealed along a cosine, and prints the
loss falling.

    python examples/quickstart.py --steps 300
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_diabetes

import lucid_fx as fx


def main(argv: list[str] | None = None) -> float:
    """Trains and returns the final R² on the training data."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args(argv)

    x, y = load_diabetes(return_X_y=True)
    x = jnp.asarray((x - x.mean(0)) / x.std(0), jnp.float32)
    y = jnp.asarray((y - y.mean()) / y.std(), jnp.float32)
    params = {"w": jnp.zeros(x.shape[1]), "b": jnp.zeros(())}

    def loss_fn(p: dict[str, jax.Array]) -> jax.Array:
        return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    # η falls from --lr to 0 along a cosine, torch's CosineAnnealingLR as a schedule, so
    # the steps shrink as the fit closes in and the loss settles instead of hovering.
    lr = fx.schedules.cosine_annealing_lr(args.lr, T_max=args.steps)
    tx = fx.chain(fx.clip_by_global_norm(1.0), fx.rmsprop(lr=lr, momentum=0.9))
    state = tx.init(params)

    @jax.jit
    def train_step(p, s):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(grads, s, p)
        return fx.apply_updates(p, updates), s, loss

    for step in range(args.steps):
        params, state, loss = train_step(params, state)
        if step % max(1, args.steps // 10) == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {float(loss):.4f}")
    r2 = 1 - float(loss_fn(params)) / float(np.var(np.asarray(y)))
    print(f"final R^2: {r2:.3f}")
    return r2


if __name__ == "__main__":
    main()
