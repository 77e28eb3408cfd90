"""Train an MLP on scikit-learn's handwritten digits with ``fx.RMSprop``: the loop of Lucid's RMSprop example.

The data (1,797 8×8 images, 10 classes) ships inside scikit-learn: nothing is
downloaded. Training is written exactly as the ``lucid.optim.RMSprop`` page shows
it — ``optimizer.zero_grad()``, ``loss.backward()`` (here ``fx.backward``),
``optimizer.step()`` — and takes a few seconds on a laptop CPU.

    python examples/train_digits.py                      # 20 epochs, prints the test accuracy
    python examples/train_digits.py --momentum 0.9 --centered --lr 3e-4
    python examples/train_digits.py --schedule cosine   # or onecycle, step: fx.lr_scheduler
    python examples/train_digits.py --swa                # SWA: average the weights from mid-run
    python examples/train_digits.py --ema 0.99           # an EMA of the weights, every step
    python examples/train_digits.py --smoke              # a few steps, for CI
    python examples/train_digits.py --compile-cache ~/.cache/lucid_fx_jax   # compile once

It shows a progress bar per epoch with the loss, prints ``test accuracy: NN.N%``
and writes ``digits.png`` (train loss and test accuracy per epoch) to ``--out``.

``--schedule`` adds a torch-style learning-rate scheduler from ``fx.lr_scheduler``
beside ``optimizer.step()``: ``cosine`` (CosineAnnealingLR from ``--lr`` to 0 over the
run, stepped per batch), ``onecycle`` (OneCycleLR peaking at ``--lr``, per batch) or
``step`` (StepLR halving the lr every quarter of the epochs, per epoch). It only
writes ``optimizer.param_groups``, so the step still compiles once.

``--swa`` is torch's SWA recipe with ``fx.swa_utils``: after ``--swa-start`` epochs
(default: half of them) the scheduler, if any, stops, ``SWALR`` anneals the lr to
``--swa-lr`` (default ``--lr``) and an ``AveragedModel`` takes in the weights at the
end of every epoch. ``--ema DECAY`` keeps an exponential moving average of the
weights instead, updated after every step (``get_ema_multi_avg_fn(DECAY)``). Either
way the averaged model is evaluated too, and ``main`` returns its accuracy. Each
update of the average is one compiled call, whatever the number of Parameters.

``--compile-cache DIR`` turns on JAX's persistent compilation cache in ``DIR``: the
first run compiles and writes there, every later run with the same shapes, versions
and flags reads its compiled programs back instead of compiling them again.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import lucid_fx as fx
from lucid_fx import swa_utils

Model = list[dict[str, fx.Parameter]]


def init_mlp(key: jax.Array, sizes: list[int]) -> Model:
    """Layers ``{"w", "b"}`` with He-normal weights and zero biases, as Parameters."""
    layers = []
    for k, n_in, n_out in zip(jax.random.split(key, len(sizes) - 1), sizes[:-1], sizes[1:]):
        w = jax.random.normal(k, (n_in, n_out)) * math.sqrt(2.0 / n_in)
        layers.append({"w": fx.Parameter(w), "b": fx.Parameter(jnp.zeros(n_out))})
    return layers


def logits(model: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    """The MLP (ReLU between layers) on arrays: ``fx.backward`` passes it arrays."""
    for layer in model[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ model[-1]["w"] + model[-1]["b"]


def cross_entropy(model: list[dict[str, jax.Array]], x: jax.Array, y: jax.Array) -> jax.Array:
    log_probs = jax.nn.log_softmax(logits(model, x))
    return -jnp.mean(jnp.take_along_axis(log_probs, y[:, None], axis=1))


@jax.jit
def accuracy(model: list[dict[str, jax.Array]], x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(logits(model, x), axis=1) == y)


def values(model: Model) -> list[dict[str, jax.Array]]:
    """The model with each Parameter replaced by its current array."""
    return jax.tree.map(lambda p: p.value, model, is_leaf=lambda x: isinstance(x, fx.Parameter))


def load_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pixels scaled to [0, 1]; a stratified 80/20 train/test split."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    return train_test_split(x, y.astype(np.int32), test_size=0.2, stratify=y, random_state=seed)


def plot_curves(losses: list[float], accuracies: list[float], path: Path,
                averaged: list[float | None] | None = None, label: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(losses) + 1)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(7, 2.8), dpi=100)
    ax_loss.plot(epochs, losses, marker="o", ms=3)
    ax_loss.set(xlabel="epoch", ylabel="train loss", yscale="log", title="train loss")
    ax_acc.plot(epochs, [100 * a for a in accuracies], marker="o", ms=3, color="tab:green",
                label="model")
    if averaged is not None:
        ax_acc.plot(epochs, [np.nan if a is None else 100 * a for a in averaged], marker="s",
                    ms=3, color="tab:purple", label=f"{label} average")
        ax_acc.legend(fontsize=8)
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)",
               title=f"test accuracy ({100 * accuracies[-1]:.1f}% at the end)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.suptitle("MLP on sklearn digits, lucid_fx RMSprop", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


SCHEDULES = ("none", "cosine", "onecycle", "step")


def make_scheduler(
    name: str, optimizer: fx.Optimizer, epochs: int, steps_per_epoch: int, momentum: float
) -> tuple[fx.lr_scheduler.LRScheduler | None, bool]:
    """The scheduler for ``--schedule`` and whether it steps per batch (else per epoch)."""
    total = epochs * steps_per_epoch
    if name == "cosine":
        return fx.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total), True
    if name == "onecycle":
        # Cycling momentum needs momentum in use: with RMSprop's default 0 it stays off.
        max_lr = optimizer.param_groups[0]["lr"]
        return fx.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total,
                                          cycle_momentum=momentum > 0), True
    if name == "step":
        return fx.lr_scheduler.StepLR(optimizer, step_size=max(1, epochs // 4), gamma=0.5), False
    return None, False


def make_average(
    args: argparse.Namespace, model: Model, optimizer: fx.Optimizer, epochs: int
) -> tuple[swa_utils.AveragedModel | None, swa_utils.SWALR | None, int]:
    """The averaged model of ``--swa`` or ``--ema`` (or ``None``), SWA's SWALR, and the last
    epoch before SWA starts (``epochs`` without SWA: the scheduler runs throughout)."""
    if args.swa:
        start = epochs // 2 if args.swa_start is None else args.swa_start
        swa_lr = args.lr if args.swa_lr is None else args.swa_lr
        return (swa_utils.AveragedModel(model),
                swa_utils.SWALR(optimizer, swa_lr=swa_lr, anneal_epochs=2), start)
    if args.ema is not None:
        ema = swa_utils.get_ema_multi_avg_fn(args.ema)
        return swa_utils.AveragedModel(model, multi_avg_fn=ema), None, epochs
    return None, None, epochs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--alpha", type=float, default=0.99)
    parser.add_argument("--momentum", type=float, default=0.0)
    parser.add_argument("--centered", action="store_true")
    parser.add_argument("--schedule", choices=SCHEDULES, default="none",
                        help="learning-rate scheduler (default none: a constant --lr)")
    averaging = parser.add_mutually_exclusive_group()
    averaging.add_argument("--swa", action="store_true",
                           help="stochastic weight averaging (torch's recipe, with SWALR)")
    averaging.add_argument("--ema", type=float, default=None, metavar="DECAY",
                           help="an exponential moving average of the weights, e.g. 0.99")
    parser.add_argument("--swa-start", type=int, default=None, metavar="EPOCH",
                        help="--swa averages the epochs after this one (default: half)")
    parser.add_argument("--swa-lr", type=float, default=None,
                        help="the lr SWALR anneals to (default: --lr)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/digits"))
    parser.add_argument("--smoke", action="store_true", help="2 short epochs, for CI")
    parser.add_argument("--compile-cache", type=Path, default=None, metavar="DIR",
                        help="JAX's persistent compilation cache in DIR (default: none)")
    return parser.parse_args(argv)


def use_compile_cache(directory: Path) -> None:
    """Compiled programs are written to and read from ``directory`` across runs."""
    jax.config.update("jax_compilation_cache_dir", str(directory.expanduser()))
    # Every program: the step, backward and the evaluation each compile in well under
    # JAX's default threshold of one second on a CPU, and would not be cached.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def main(argv: list[str] | None = None) -> float:
    from tqdm import tqdm

    args = parse_args(argv)
    if args.compile_cache is not None:
        use_compile_cache(args.compile_cache)
    args.out.mkdir(parents=True, exist_ok=True)
    x_train, x_test, y_train, y_test = load_data(args.seed)
    steps_per_epoch = len(x_train) // args.batch_size  # drop the ragged batch: one compile
    epochs = 2 if args.smoke else args.epochs
    if args.smoke:
        steps_per_epoch = min(steps_per_epoch, 5)

    model = init_mlp(jax.random.PRNGKey(args.seed), [64, args.hidden, args.hidden, 10])
    optimizer = fx.RMSprop(
        fx.parameters(model), lr=args.lr, alpha=args.alpha, momentum=args.momentum,
        centered=args.centered,
    )
    scheduler, per_batch = make_scheduler(args.schedule, optimizer, epochs, steps_per_epoch,
                                          args.momentum)
    averaged, swa_scheduler, swa_start = make_average(args, model, optimizer, epochs)
    label = "swa" if args.swa else "ema"
    averaged_accuracies: list[float | None] = []
    rng = np.random.default_rng(args.seed)
    losses: list[float] = []
    accuracies: list[float] = []
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(x_train))
        batch_losses = []
        with tqdm(range(steps_per_epoch), desc=f"epoch {epoch:2d}/{epochs}", unit="batch",
                  leave=epoch == epochs) as bar:
            for i in bar:
                idx = order[i * args.batch_size : (i + 1) * args.batch_size]
                optimizer.zero_grad()
                loss = fx.backward(cross_entropy, model, x_train[idx], y_train[idx])
                optimizer.step()
                if scheduler is not None and per_batch and epoch <= swa_start:
                    scheduler.step()
                if averaged is not None and not args.swa:
                    averaged.update_parameters(model)  # EMA: after every step
                batch_losses.append(loss)
                if i % 5 == 0:  # reading the loss waits for the step: not every batch
                    bar.set_postfix(loss=f"{float(loss):.4f}")
        if averaged is not None and swa_scheduler is not None and epoch > swa_start:
            averaged.update_parameters(model)  # SWA: torch's recipe, once per epoch
            swa_scheduler.step()
        elif scheduler is not None and not per_batch:
            scheduler.step()
        losses.append(float(jnp.mean(jnp.stack(batch_losses))))
        accuracies.append(float(accuracy(values(model), x_test, y_test)))
        line = (f"epoch {epoch:2d}: train loss {losses[-1]:.4f}  test accuracy "
                f"{100 * accuracies[-1]:.1f}%")
        if averaged is not None and averaged.n_averaged > 0:
            average_accuracy = float(accuracy(values(averaged.module), x_test, y_test))
            averaged_accuracies.append(average_accuracy)
            line += f"  ({label} average {100 * average_accuracy:.1f}%)"
        else:
            averaged_accuracies.append(None)
        tqdm.write(line)
    elapsed = time.perf_counter() - start

    plot_curves(losses, accuracies, args.out / "digits.png",
                averaged_accuracies if averaged is not None else None, label)
    print(f"trained {epochs} epochs in {elapsed:.1f}s")
    if scheduler is not None:
        print(f"schedule {args.schedule}: last lr {optimizer.param_groups[0]['lr']:.3g}")
    print(f"test accuracy: {100 * accuracies[-1]:.1f}%")
    result = accuracies[-1]
    if averaged is not None:
        result = cast(float, averaged_accuracies[-1])
        n = int(averaged.n_averaged)
        print(f"{label} test accuracy: {100 * result:.1f}% ({n} model{'s' * (n != 1)} averaged)")
    print(f"wrote {args.out / 'digits.png'}")
    return result


if __name__ == "__main__":
    main()
