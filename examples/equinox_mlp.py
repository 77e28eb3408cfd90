"""``fx.rmsprop`` in an Equinox ``filter_jit`` loop: fit an ``eqx.nn.MLP`` to sin(x).

The optimizer state is initialised from the model's array leaves only
(``eqx.filter(model, eqx.is_array)``); updates go back in with ``eqx.apply_updates``.

    python examples/equinox_mlp.py --steps 1000
"""

from __future__ import annotations

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp

import lucid_fx as fx


def loss_fn(model: eqx.nn.MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


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
    model = eqx.nn.MLP(1, 1, 32, 1, activation=jnp.tanh, key=jax.random.PRNGKey(args.seed))
    tx = fx.rmsprop(lr=args.lr, momentum=args.momentum)
    opt_state = tx.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def train_step(model, opt_state, x, y):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, x, y)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    first = float(loss_fn(model, x, y))
    print(f"step    0  loss {first:.4f}")
    for step in range(1, steps + 1):
        model, opt_state, loss = train_step(model, opt_state, x, y)
        if step % max(1, steps // 5) == 0:
            print(f"step {step:4d}  loss {float(loss):.4f}")
    final = float(loss_fn(model, x, y))
    print(f"final loss: {final:.4f} (from {first:.4f})")
    return final


if __name__ == "__main__":
    main()
