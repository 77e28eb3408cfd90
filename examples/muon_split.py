"""Muon for the hidden matrices, AdamW for the rest: torch's recipe, on both faces.

torch's ``Muon`` takes 2-D hidden weights only; the embedding (here the input
layer), the head and every bias go to AdamW. torch writes that as two
optimizers; the functional face writes it as one transform, ``optax.partition``
over labels, with lucid_fx's ``fx.muon`` and ``fx.adamw`` inside:

    labels = {"embed": "adamw", "hidden": [...matrices: "muon", biases: "adamw"...],
              "head": "adamw"}
    tx = optax.partition({"muon": fx.muon(lr=0.02), "adamw": fx.adamw(lr=3e-3)}, labels)

An MLP with three equal hidden matrices (their Newton–Schulz runs as one stack) on
scikit-learn's digits (shipped with it: nothing is downloaded):

    python examples/muon_split.py               # 15 epochs, functional face, test accuracy
    python examples/muon_split.py --stateful    # the same with fx.Muon + fx.AdamW
    python examples/muon_split.py --check-faces # both, and their largest difference

Both faces compute the same step: ``--check-faces`` prints the largest difference
of the weights after one step (float32 rounding, about 3e-8: XLA contracts a
multiply-add in one program and not in the other; the iteration runs in float32
there, so that bfloat16 cannot round such a difference up to its own ulp).
Hundreds of steps of training amplify any difference (ReLU boundaries move), so
the two runs' weights drift apart as two runs of differently compiled programs
do, and reach the same accuracy.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import lucid_fx as fx

WIDTH, HIDDEN = 128, 3


def init(key: jax.Array) -> dict[str, Any]:
    """Embedding 64→W, HIDDEN residual W×W matrices with biases, head W→10 (He-normal)."""
    keys = jax.random.split(key, HIDDEN + 2)

    def dense(k: jax.Array, n_in: int, n_out: int) -> jax.Array:
        return jax.random.normal(k, (n_in, n_out)) * math.sqrt(2.0 / n_in)

    return {
        "embed": {"w": dense(keys[0], 64, WIDTH), "b": jnp.zeros(WIDTH)},
        "hidden": [{"w": dense(k, WIDTH, WIDTH) / math.sqrt(HIDDEN), "b": jnp.zeros(WIDTH)}
                   for k in keys[1:-1]],
        "head": {"w": dense(keys[-1], WIDTH, 10), "b": jnp.zeros(10)},
    }


def labels(params: dict[str, Any]) -> dict[str, Any]:
    """torch's recipe: Muon for the hidden matrices, AdamW for everything else."""
    adamw = jax.tree.map(lambda _: "adamw", params)
    adamw["hidden"] = [{"w": "muon", "b": "adamw"} for _ in params["hidden"]]
    return adamw


def logits(params: dict[str, Any], x: jax.Array) -> jax.Array:
    h = jax.nn.relu(x @ params["embed"]["w"] + params["embed"]["b"])
    for layer in params["hidden"]:
        h = h + jax.nn.relu(h @ layer["w"] + layer["b"])
    return h @ params["head"]["w"] + params["head"]["b"]


def loss_fn(params: dict[str, Any], x: jax.Array, y: jax.Array) -> jax.Array:
    log_probs = jax.nn.log_softmax(logits(params, x))
    return -jnp.mean(jnp.take_along_axis(log_probs, y[:, None], axis=1))


def accuracy(params: dict[str, Any], x: jax.Array, y: jax.Array) -> float:
    return float(jnp.mean(jnp.argmax(logits(params, x), axis=1) == y))


def batches(n: int, batch_size: int, epochs: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [order[i:i + batch_size] for _ in range(epochs)
            for order in [rng.permutation(n)] for i in range(0, n - batch_size + 1, batch_size)]


def functional(params: dict[str, Any], data: Any, order: list[np.ndarray], args: Any) -> Any:
    """One transform over the whole tree, jitted with the gradient in one step."""
    tx = optax.partition({"muon": fx.muon(lr=args.muon_lr, ns_dtype=args.ns_dtype),
                          "adamw": fx.adamw(lr=args.adamw_lr)}, labels(params))
    state = tx.init(params)

    @jax.jit
    def step(params: Any, state: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    x, y = data
    for idx in order:
        params, state, _ = step(params, state, x[idx], y[idx])
    return params


def stateful(params: dict[str, Any], data: Any, order: list[np.ndarray], args: Any) -> Any:
    """torch's loop: two optimizers, zero_grad, backward, step."""
    model = jax.tree.map(fx.Parameter, params)
    named = jax.tree.leaves(model, is_leaf=lambda p: isinstance(p, fx.Parameter))
    route = jax.tree.leaves(labels(params))
    hidden = fx.Muon([p for p, r in zip(named, route) if r == "muon"], lr=args.muon_lr,
                     ns_dtype=args.ns_dtype)
    rest = fx.AdamW([p for p, r in zip(named, route) if r == "adamw"], lr=args.adamw_lr)
    x, y = data
    for idx in order:
        hidden.zero_grad()
        rest.zero_grad()
        fx.backward(loss_fn, model, x[idx], y[idx])
        hidden.step()
        rest.step()
    return jax.tree.map(lambda p: p.value, model, is_leaf=lambda p: isinstance(p, fx.Parameter))


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--muon-lr", type=float, default=0.02)
    parser.add_argument("--adamw-lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    face = parser.add_mutually_exclusive_group()
    face.add_argument("--stateful", action="store_true", help="fx.Muon + fx.AdamW, torch's loop")
    face.add_argument("--check-faces", action="store_true",
                      help="run both faces (float32 iteration) and print how far one step "
                           "of each differs")
    args = parser.parse_args(argv)
    args.ns_dtype = jnp.float32 if args.check_faces else jnp.bfloat16

    x_train, x_test, y_train, y_test = train_test_split(
        *load_digits(return_X_y=True), test_size=0.2, random_state=args.seed)
    data = (jnp.asarray(x_train / 16.0, jnp.float32), jnp.asarray(y_train, jnp.int32))
    test = (jnp.asarray(x_test / 16.0, jnp.float32), jnp.asarray(y_test, jnp.int32))
    order = batches(len(x_train), args.batch_size, args.epochs, args.seed)
    params = init(jax.random.key(args.seed))
    faces = {"functional": functional, "stateful": stateful}
    run = (["functional", "stateful"] if args.check_faces
           else ["stateful" if args.stateful else "functional"])
    results: dict[str, float] = {}
    trained = {}
    for name in run:
        start = time.perf_counter()
        trained[name] = faces[name](params, data, order, args)
        results[f"{name}_accuracy"] = accuracy(trained[name], *test)
        print(f"{name}: test accuracy {100 * results[f'{name}_accuracy']:.1f}% after "
              f"{args.epochs} epochs ({time.perf_counter() - start:.1f} s)")
    if args.check_faces:
        one_step = [faces[name](params, data, order[:1], args) for name in run]
        gaps = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), *one_step)
        results["faces_max_difference"] = max(jax.tree.leaves(gaps))
        print(f"largest difference between the faces' weights after one step: "
              f"{results['faces_max_difference']:.2e}")
    return results


if __name__ == "__main__":
    main()
