"""Port pytorch/examples' MNIST CNN to lucid_fx: both frameworks train it side by side.

``mnist/main.py`` of pytorch/examples is the canonical torch training script: a
small CNN, ``torch.optim.Adadelta(lr=1.0)``, ``StepLR(step_size=1, gamma=0.7)``
stepped once per epoch. This example trains that CNN in torch and in lucid_fx from
the same initial weights, on the same batches with the same dropout masks, on
scikit-learn's handwritten digits (1,797 8×8 images that ship inside scikit-learn:
nothing is downloaded), and prints how far the two losses ever drift apart.

    python examples/port_torch_cnn.py                    # 3 epochs in float32
    python examples/port_torch_cnn.py --dtype float64    # the same, in float64
    python examples/port_torch_cnn.py --no-dropout --epochs 5
    python examples/port_torch_cnn.py --smoke            # a few steps, for CI

The lucid_fx model keeps torch's layouts, so the torch state dict loads as it is:
conv kernels OIHW on NCHW activations, Linear weights (out, in) applied as
``x @ w.T + b``, and the flatten before ``fc1`` in NCHW order, as
``torch.flatten(x, 1)`` does. On 8×8 inputs the two 3×3 convolutions leave 4×4,
the 2×2 max-pool 2×2, so ``fc1`` takes 64·2·2 = 256 inputs (9,216 on MNIST's 28×28).

It prints both mean losses per epoch, then ``largest per-step loss difference: ...``
and ``torch test accuracy: NN.N%`` / ``lucid_fx test accuracy: NN.N%``. It needs
torch besides the examples' dependencies.

In float64 the two losses agree to about 1e-15 at every step: the same math. In
float32 they agree to a few units in the last place until some 2×2 max-pool window
holds two values closer than the two convolutions' rounding differences: torch and
XLA then pick different maxima, and that window's gradient goes to a different
pixel. From there on they are two float32 runs of the same training, as the torch
script alone would be on two machines; with the default seed that happens at the
12th step (the window's two largest values 3.6e-7 apart, relatively) and the loss
difference grows to a few 1e-2.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import lucid_fx as fx

Model = dict[str, dict[str, fx.Parameter]]
Masks = tuple[np.ndarray, np.ndarray]
DROPOUT = (0.25, 0.5)  # mnist/main.py's dropout1 and dropout2


class Net(nn.Module):
    """mnist/main.py's ``Net``, with ``fc1`` sized for 8×8 inputs.

    Dropout multiplies by masks passed to ``forward`` (see :func:`dropout_masks`)
    instead of ``nn.Dropout`` layers drawing their own; without masks the forward is
    ``model.eval()``'s, so ``train()``/``eval()`` are not needed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.fc1 = nn.Linear(256, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor, masks: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        if masks is not None:
            x = x * masks[0]  # x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        if masks is not None:
            x = x * masks[1]  # x = self.dropout2(x)
        x = self.fc2(x)
        output = F.log_softmax(x, dim=1)
        return output


def cnn(dtype: np.dtype) -> Model:
    """``Net``'s Parameters with torch's names and layouts, zeros until the weights load."""
    shapes = {
        "conv1": ((32, 1, 3, 3), (32,)),
        "conv2": ((64, 32, 3, 3), (64,)),
        "fc1": ((128, 256), (128,)),
        "fc2": ((10, 128), (10,)),
    }
    return {name: {"weight": fx.Parameter(jnp.zeros(weight, dtype)),
                   "bias": fx.Parameter(jnp.zeros(bias, dtype))}
            for name, (weight, bias) in shapes.items()}


def conv2d(x: jax.Array, layer: dict[str, jax.Array]) -> jax.Array:
    """``nn.Conv2d(stride=1, padding=0)``: NCHW activations, OIHW kernels, as torch."""
    y = jax.lax.conv_general_dilated(x, layer["weight"], (1, 1), "VALID",
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return y + layer["bias"][None, :, None, None]


def linear(x: jax.Array, layer: dict[str, jax.Array]) -> jax.Array:
    """``nn.Linear``: the weight is (out, in), as torch stores it."""
    return x @ layer["weight"].T + layer["bias"]


def max_pool2d(x: jax.Array) -> jax.Array:
    """``F.max_pool2d(x, 2)`` on NCHW."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")


def forward(m: dict[str, dict[str, jax.Array]], x: jax.Array,
            masks: Masks | None = None) -> jax.Array:
    """``Net.forward`` on arrays, line for line."""
    x = jax.nn.relu(conv2d(x, m["conv1"]))
    x = jax.nn.relu(conv2d(x, m["conv2"]))
    x = max_pool2d(x)
    if masks is not None:
        x = x * masks[0]
    x = x.reshape(x.shape[0], -1)  # NCHW order: torch.flatten(x, 1)
    x = jax.nn.relu(linear(x, m["fc1"]))
    if masks is not None:
        x = x * masks[1]
    return jax.nn.log_softmax(linear(x, m["fc2"]), axis=1)


def nll_loss(m: dict[str, dict[str, jax.Array]], x: jax.Array, y: jax.Array,
             masks: Masks | None) -> jax.Array:
    """``F.nll_loss(model(x), y)``: the mean negative log-likelihood."""
    return -jnp.mean(jnp.take_along_axis(forward(m, x, masks), y[:, None], axis=1))


@jax.jit
def accuracy(m: dict[str, dict[str, jax.Array]], x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(forward(m, x), axis=1) == y)


def dropout_masks(rng: np.random.Generator, batch_size: int, dtype: np.dtype) -> Masks:
    """One step's masks for dropout1 (after the pool) and dropout2 (after fc1).

    torch and JAX draw random numbers differently, so neither framework's dropout
    is used: the masks are drawn here, with NumPy, and both models get the same.
    A kept unit is scaled by 1/(1-p), as torch's dropout scales it in training.
    """
    pooled = rng.random((batch_size, 64, 2, 2)) >= DROPOUT[0]
    hidden = rng.random((batch_size, 128)) >= DROPOUT[1]
    return (pooled.astype(dtype) / dtype.type(1 - DROPOUT[0]),
            hidden.astype(dtype) / dtype.type(1 - DROPOUT[1]))


def load_data(seed: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Images (N, 1, 8, 8), pixels scaled to [0, 1]; a stratified 80/20 train/test split."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(dtype).reshape(-1, 1, 8, 8)
    return train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)


@contextlib.contextmanager
def torch_settings(dtype: torch.dtype) -> Iterator[None]:
    """One thread (deterministic sums) and ``dtype`` as the default; torch's global
    RNG and settings are as before afterwards, so a test can call ``main`` in-process."""
    threads, default_dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)
    torch.set_default_dtype(dtype)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(default_dtype)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--no-dropout", action="store_true",
                        help="train without dropout (default: the same masks on both sides)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="5 steps of one epoch, for CI")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Trains both models; returns the per-step losses, their largest difference
    (``max_loss_diff``) and both test accuracies."""
    args = parse_args(argv)
    dtype = np.dtype(args.dtype)
    # float64 in JAX only inside this block: the calling process keeps its setting.
    with jax.enable_x64(args.dtype == "float64"), torch_settings(getattr(torch, args.dtype)):
        return train(args, dtype)


def train(args: argparse.Namespace, dtype: np.dtype) -> dict[str, Any]:
    """Both models, step for step on the same batches; ``main`` sets up the dtype."""
    x_train, x_test, y_train, y_test = load_data(args.seed, dtype)
    steps_per_epoch = len(x_train) // args.batch_size  # drop the ragged batch: one compile
    epochs = 1 if args.smoke else args.epochs
    if args.smoke:
        steps_per_epoch = min(steps_per_epoch, 5)

    torch.manual_seed(args.seed)
    torch_model = Net()
    torch_optimizer = torch.optim.Adadelta(torch_model.parameters(), lr=args.lr)
    torch_scheduler = torch.optim.lr_scheduler.StepLR(torch_optimizer, step_size=1, gamma=0.7)

    model = cnn(dtype)
    fx.weights.load_state_dict(model, torch_model.state_dict())  # by name, tensors as they are
    optimizer = fx.Adadelta(fx.named_parameters(model), lr=args.lr)
    scheduler = fx.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)

    rng = np.random.default_rng(args.seed)
    losses_torch: list[float] = []
    losses_fx: list[float] = []
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(x_train))
        for i in range(steps_per_epoch):
            idx = order[i * args.batch_size : (i + 1) * args.batch_size]
            x, y = x_train[idx], y_train[idx]
            masks = None if args.no_dropout else dropout_masks(rng, args.batch_size, dtype)

            torch_optimizer.zero_grad()
            torch_masks = None if masks is None else tuple(map(torch.from_numpy, masks))
            torch_loss = F.nll_loss(torch_model(torch.from_numpy(x), torch_masks),
                                    torch.from_numpy(y))
            torch_loss.backward()
            torch_optimizer.step()

            optimizer.zero_grad()
            loss = fx.backward(nll_loss, model, x, y, masks)
            optimizer.step()

            losses_torch.append(torch_loss.item())
            losses_fx.append(float(loss))
        torch_scheduler.step()
        scheduler.step()
        done = slice(-steps_per_epoch, None)
        print(f"epoch {epoch}: mean loss torch {np.mean(losses_torch[done]):.6f}  "
              f"lucid_fx {np.mean(losses_fx[done]):.6f}")
    elapsed = time.perf_counter() - start

    with torch.no_grad():
        predicted = torch_model(torch.from_numpy(x_test)).argmax(1).numpy()
    acc_torch = float(np.mean(predicted == y_test))
    acc_fx = float(accuracy(fx.values(model), x_test, y_test))
    max_loss_diff = float(np.max(np.abs(np.subtract(losses_torch, losses_fx))))
    print(f"trained {epochs} epochs of {steps_per_epoch} steps in {args.dtype} "
          f"in {elapsed:.1f}s (both frameworks)")
    print(f"largest per-step loss difference: {max_loss_diff:.3e}")
    print(f"torch test accuracy: {100 * acc_torch:.1f}%")
    print(f"lucid_fx test accuracy: {100 * acc_fx:.1f}%")
    return {"max_loss_diff": max_loss_diff, "losses_torch": losses_torch,
            "losses_fx": losses_fx, "acc_torch": acc_torch, "acc_fx": acc_fx}


if __name__ == "__main__":
    main()
