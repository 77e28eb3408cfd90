"""``fx.rmsprop`` inside ``flax.nnx.Optimizer``: fit a small Flax NNX MLP to sin(x).

lucid_fx transforms speak optax's ``init``/``update`` protocol, so Flax's own
optimizer wrapper takes them as they are.

    python examples/flax_nnx.py --steps 1000
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from flax import nnx

import lucid_fx as fx


class MLP(nnx.Module):
    def __init__(self, hidden: int, rngs: nnx.Rngs) -> None:
        self.hidden = nnx.Linear(1, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jnp.tanh(self.hidden(x)))


def loss_fn(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((model(x) - y) ** 2)


@nnx.jit
def train_step(model: MLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)
    return loss


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--momentum", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few steps, for CI")
    args = parser.parse_args(argv)
    steps = 20 if args.smoke else args.steps

    x = jnp.linspace(-3, 3, 256)[:, None]
    y = jnp.sin(x)
    model = MLP(32, nnx.Rngs(args.seed))
    optimizer = nnx.Optimizer(model, fx.rmsprop(lr=args.lr, momentum=args.momentum), wrt=nnx.Param)

    first = float(loss_fn(model, x, y))
    print(f"step    0  loss {first:.4f}")
    for step in range(1, steps + 1):
        loss = train_step(model, optimizer, x, y)
        if step % max(1, steps // 5) == 0:
            print(f"step {step:4d}  loss {float(loss):.4f}")
    final = float(loss_fn(model, x, y))
    print(f"final loss: {final:.4f} (from {first:.4f})")
    return final


if __name__ == "__main__":
    main()
