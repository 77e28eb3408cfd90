"""Advantage actor-critic on CartPole-v1, trained with ``fx.chain(clip, fx.rmsprop)``.

RMSprop's classic use (Lucid's RMSprop notes): reinforcement learning. The
environment is gymnasium's CartPole-v1 written in JAX — the same constants, Euler
step, termination angle and 500-step time limit — so a batch of environments
rolls out inside the jitted update and a whole chunk of updates is one XLA call.
Nothing is downloaded.

    python examples/rl_cartpole.py            # stops once the last 100 episodes average >= 475
    python examples/rl_cartpole.py --smoke    # a few seconds, for CI

It prints a progress bar with the mean return of the last 100 episodes, then
``mean return (last 100 episodes): NNN.N`` and writes ``returns.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import lucid_fx as fx

# --- The environment: gymnasium's CartPole-v1, one environment per call (vmap it). ---

GRAVITY, MASS_CART, MASS_POLE, HALF_LENGTH, FORCE, TAU = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
TOTAL_MASS = MASS_CART + MASS_POLE
POLE_MASS_LENGTH = MASS_POLE * HALF_LENGTH
THETA_LIMIT = 12 * 2 * math.pi / 360
X_LIMIT = 2.4
MAX_STEPS = 500  # CartPole-v1's TimeLimit
SOLVED = 475.0  # gymnasium's reward_threshold for CartPole-v1
REWARD = 1.0  # for every step taken, the terminating one included


def env_reset(key: jax.Array) -> jax.Array:
    """A start state (x, ẋ, θ, θ̇), each uniform in [-0.05, 0.05) as in gymnasium."""
    return jax.random.uniform(key, (4,), minval=-0.05, maxval=0.05)


def env_step(state: jax.Array, action: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One Euler step of the cart-pole; returns the next state and whether it failed.

    It fails when the cart leaves [-2.4, 2.4] or the pole tilts past 12°.
    """
    x, x_dot, theta, theta_dot = state
    force = jnp.where(action == 1, FORCE, -FORCE)
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    temp = (force + POLE_MASS_LENGTH * theta_dot**2 * sin) / TOTAL_MASS
    theta_acc = (GRAVITY * sin - cos * temp) / (
        HALF_LENGTH * (4.0 / 3.0 - MASS_POLE * cos**2 / TOTAL_MASS)
    )
    x_acc = temp - POLE_MASS_LENGTH * theta_acc * cos / TOTAL_MASS
    next_state = jnp.stack([
        x + TAU * x_dot,
        x_dot + TAU * x_acc,
        theta + TAU * theta_dot,
        theta_dot + TAU * theta_acc,
    ])
    fell = (jnp.abs(next_state[0]) > X_LIMIT) | (jnp.abs(next_state[2]) > THETA_LIMIT)
    return next_state, fell


# --- The agent: separate policy and value MLPs. ---

Params = dict[str, list[tuple[jax.Array, jax.Array]]]


def init_mlp(key: jax.Array, sizes: list[int], out_scale: float) -> list[tuple[jax.Array, jax.Array]]:
    """Orthogonal weights (gain √2, last layer ``out_scale``) and zero biases."""
    keys = jax.random.split(key, len(sizes) - 1)
    layers = []
    for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
        gain = out_scale if i == len(sizes) - 2 else math.sqrt(2)
        w = jax.nn.initializers.orthogonal(gain)(k, (n_in, n_out), jnp.float32)
        layers.append((w, jnp.zeros(n_out, jnp.float32)))
    return layers


def mlp(layers: list[tuple[jax.Array, jax.Array]], x: jax.Array) -> jax.Array:
    for w, b in layers[:-1]:
        x = jnp.tanh(x @ w + b)
    w, b = layers[-1]
    return x @ w + b


def init_agent(key: jax.Array, hidden: int) -> Params:
    k_pi, k_v = jax.random.split(key)
    return {
        "policy": init_mlp(k_pi, [4, hidden, hidden, 2], out_scale=0.01),
        "value": init_mlp(k_v, [4, hidden, hidden, 1], out_scale=1.0),
    }


def policy_and_value(params: Params, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
    return mlp(params["policy"], obs), mlp(params["value"], obs)[..., 0]


# --- Training: rollouts, GAE advantages and the update, all inside one jit. ---


class Envs(NamedTuple):
    state: jax.Array  # (n_envs, 4)
    steps: jax.Array  # (n_envs,) steps taken in the current episode
    ret: jax.Array  # (n_envs,) return so far in the current episode


class Carry(NamedTuple):
    params: Params
    opt_state: Any
    envs: Envs
    key: jax.Array


class Transition(NamedTuple):
    obs: jax.Array
    action: jax.Array
    done: jax.Array  # episode ended here (fell or hit the time limit)
    bootstrap: jax.Array  # γ·V(last state) when cut by the time limit, else 0
    finished_return: jax.Array  # the episode's return where done, else NaN


def make_train_chunk(
    args: argparse.Namespace, tx: fx.GradientTransformation
) -> Callable[[Carry], tuple[Carry, jax.Array]]:
    """Returns a jitted ``carry -> (carry, finished_returns)`` running ``args.chunk`` updates."""

    def rollout_step(carry: Carry, _: None) -> tuple[Carry, Transition]:
        params, envs = carry.params, carry.envs
        obs = envs.state
        key, k_act, k_reset = jax.random.split(carry.key, 3)
        action_logits = policy_and_value(params, obs)[0]
        action = jax.random.categorical(k_act, action_logits)
        next_state, fell = jax.vmap(env_step)(obs, action)
        steps, ret = envs.steps + 1, envs.ret + REWARD
        cut = (steps >= MAX_STEPS) & ~fell
        done = fell | cut
        # A time-limit cut is not a failure: its target bootstraps from V(next state).
        bootstrap = jnp.where(cut, args.gamma * policy_and_value(params, next_state)[1], 0.0)
        fresh = jax.vmap(env_reset)(jax.random.split(k_reset, args.envs))
        envs = Envs(
            state=jnp.where(done[:, None], fresh, next_state),
            steps=jnp.where(done, 0, steps),
            ret=jnp.where(done, 0.0, ret),
        )
        transition = Transition(obs, action, done, bootstrap, jnp.where(done, ret, jnp.nan))
        return carry._replace(envs=envs, key=key), transition

    def loss_fn(params: Params, batch: Transition, last_obs: jax.Array) -> jax.Array:
        logits, values = policy_and_value(params, batch.obs)  # (T, N, 2), (T, N)
        next_value = jax.lax.stop_gradient(policy_and_value(params, last_obs)[1])
        v = jax.lax.stop_gradient(values)

        def gae(carry: tuple[jax.Array, jax.Array], t: Any) -> tuple[Any, jax.Array]:
            advantage, v_next = carry
            value, done, bootstrap = t
            delta = REWARD + jnp.where(done, bootstrap, args.gamma * v_next) - value
            advantage = delta + jnp.where(done, 0.0, args.gamma * args.gae_lambda * advantage)
            return (advantage, value), advantage

        _, advantages = jax.lax.scan(
            gae, (jnp.zeros_like(next_value), next_value), (v, batch.done, batch.bootstrap),
            reverse=True,
        )
        returns = advantages + v
        log_probs = jax.nn.log_softmax(logits)
        taken = jnp.take_along_axis(log_probs, batch.action[..., None], -1)[..., 0]
        entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, -1)
        policy_loss = -jnp.mean(taken * advantages)
        value_loss = jnp.mean((returns - values) ** 2)
        return policy_loss + args.value_coef * value_loss - args.entropy_coef * jnp.mean(entropy)

    def update(carry: Carry, _: None) -> tuple[Carry, jax.Array]:
        carry, batch = jax.lax.scan(rollout_step, carry, None, length=args.steps)
        grads = jax.grad(loss_fn)(carry.params, batch, carry.envs.state)
        updates, opt_state = tx.update(grads, carry.opt_state, carry.params)
        params = fx.apply_updates(carry.params, updates)
        return carry._replace(params=params, opt_state=opt_state), batch.finished_return

    @jax.jit
    def train_chunk(carry: Carry) -> tuple[Carry, jax.Array]:
        return jax.lax.scan(update, carry, None, length=args.chunk)

    return train_chunk


def plot_returns(returns: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    episodes = np.arange(1, len(returns) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(episodes, returns, lw=0.5, alpha=0.4, label="episode return")
    if len(returns) >= 100:
        window = np.convolve(returns, np.ones(100), "valid") / 100
        ax.plot(episodes[99:], window, lw=2, label="mean of last 100")
    ax.axhline(SOLVED, color="gray", ls="--", lw=1, label=f"solved ({SOLVED:g})")
    ax.set(xlabel="episode", ylabel="return", title="A2C on CartPole-v1 with lucid_fx RMSprop")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-steps", type=int, default=1_000_000, help="budget of environment steps")
    parser.add_argument("--envs", type=int, default=16, help="parallel environments")
    parser.add_argument("--steps", type=int, default=8, help="rollout length per update")
    parser.add_argument("--chunk", type=int, default=100, help="updates per jitted call")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--alpha", type=float, default=0.99)
    parser.add_argument("--eps", type=float, default=1e-5)
    parser.add_argument("--momentum", type=float, default=0.0)
    parser.add_argument("--centered", action="store_true")
    parser.add_argument("--clip", type=float, default=0.5, help="global gradient-norm clip")
    parser.add_argument("--gamma", type=float, default=0.99)
    parser.add_argument("--gae-lambda", type=float, default=0.95)
    parser.add_argument("--value-coef", type=float, default=0.5)
    parser.add_argument("--entropy-coef", type=float, default=0.0)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--target", type=float, default=SOLVED,
                        help="stop once the last 100 episodes average this much")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/cartpole"))
    parser.add_argument("--smoke", action="store_true", help="a few chunks, for CI")
    args = parser.parse_args(argv)
    if args.smoke:
        args.env_steps = args.envs * args.steps * 4 * 20
        args.chunk = 20
    return args


def main(argv: list[str] | None = None) -> float:
    from tqdm import tqdm

    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    tx = fx.chain(
        fx.clip_by_global_norm(args.clip),
        fx.rmsprop(lr=args.lr, alpha=args.alpha, eps=args.eps, momentum=args.momentum,
                   centered=args.centered),
    )
    k_params, k_envs, key = jax.random.split(jax.random.PRNGKey(args.seed), 3)
    params = init_agent(k_params, args.hidden)
    envs = Envs(
        state=jax.vmap(env_reset)(jax.random.split(k_envs, args.envs)),
        steps=jnp.zeros(args.envs, jnp.int32),
        ret=jnp.zeros(args.envs, jnp.float32),
    )
    carry = Carry(params, tx.init(params), envs, key)
    train_chunk = make_train_chunk(args, tx)

    steps_per_chunk = args.chunk * args.steps * args.envs
    returns: list[float] = []
    mean100 = float("nan")
    start = time.perf_counter()
    with tqdm(total=args.env_steps, unit="step", unit_scale=True, desc="A2C CartPole") as bar:
        for _ in range(max(1, args.env_steps // steps_per_chunk)):
            carry, finished = train_chunk(carry)
            # (chunk, steps, envs), time-major: flattening keeps episodes in finishing order.
            chunk_returns = np.asarray(finished).reshape(-1)
            returns.extend(chunk_returns[~np.isnan(chunk_returns)].tolist())
            if returns:
                mean100 = float(np.mean(returns[-100:]))
            bar.update(steps_per_chunk)
            bar.set_postfix(episodes=len(returns), mean_return=f"{mean100:.1f}")
            if len(returns) >= 100 and mean100 >= args.target:
                break
    elapsed = time.perf_counter() - start
    plot_returns(returns, args.out / "returns.png")
    print(f"episodes: {len(returns)}  time: {elapsed:.1f}s")
    print(f"mean return (last 100 episodes): {mean100:.1f}")
    print(f"wrote {args.out / 'returns.png'}")
    return mean100


if __name__ == "__main__":
    main()
