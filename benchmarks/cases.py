"""The benchmark cases: each returns table rows measured in this process.

Every case builds all its contenders first (compiled and warmed up), then times
them interleaved (see :mod:`harness`). Hyper-parameters are Lucid's RMSprop
defaults (lr 0.01, α 0.99, ε 1e-8) with momentum 0.9 where a case uses it; optax
runs its ``rmsprop`` with ``eps_in_sqrt=False`` so that all three libraries
compute the same update.
"""

from __future__ import annotations

import gc
import itertools
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from averaging import averaging
from family import family
from harness import (
    Row,
    Settings,
    contender,
    copy_tree,
    hlo_stats,
    interleave,
    jax_loop,
    medians,
    torch,
    torch_tensors,
    transform_step,
    triad_step,
    wait_for_step,
)
from shape_aware import adafactor, muon
from table import format_value
from workloads import tensor_sets

import lucid_fx as fx
from lucid_fx import FlatLayout, flatten

LR, ALPHA, EPS, MOMENTUM = 0.01, 0.99, 1e-8, 0.9
CONFIGS: dict[str, dict[str, Any]] = {
    "plain": {},
    "momentum": {"momentum": MOMENTUM},
    "centered": {"centered": True},
    "centered+momentum": {"centered": True, "momentum": MOMENTUM},
}
TRIAD_BYTES = 12  # p - c·g in float32: read p and g, write p
STATEFUL = "fx.RMSprop.step()"  # the large case's stateful contender, gradient by hand


def bytes_per_element(config: dict[str, Any], param_bytes: int = 4, state_bytes: int = 4) -> int:
    """The least memory traffic of one step: read θ, g, v (+ḡ, +b), write θ, v (+ḡ, +b)."""
    buffers = 1 + bool(config.get("centered")) + bool(config.get("momentum"))
    return 3 * param_bytes + 2 * buffers * state_bytes


def fx_rmsprop(config: dict[str, Any], **kwargs: Any) -> fx.GradientTransformation:
    return fx.rmsprop(lr=LR, alpha=ALPHA, eps=EPS, **config, **kwargs)


def optax_rmsprop(config: dict[str, Any]) -> optax.GradientTransformation:
    return optax.rmsprop(
        learning_rate=LR, decay=ALPHA, eps=EPS, eps_in_sqrt=False,
        centered=bool(config.get("centered")), momentum=config.get("momentum"),
    )


def torch_rmsprop(params: list[Any], config: dict[str, Any]) -> Any:
    return torch.optim.RMSprop(
        params, lr=LR, alpha=ALPHA, eps=EPS, momentum=config.get("momentum", 0.0),
        centered=bool(config.get("centered")), foreach=True,
    )




def _torch_loop(params: list[Any], grads: list[Any], config: dict[str, Any]) -> Callable[[int], None]:
    for p, g in zip(params, grads):
        p.grad = g
    optimizer = torch_rmsprop(params, config)

    def run(n: int) -> None:
        for _ in range(n):
            optimizer.step()

    return run


def _note_efficiency(effs: dict[str, float]) -> str:
    return "BW eff " + " · ".join(f"{k} {v:.2f}" for k, v in effs.items())


# ------------------------------------------------------------------ large tensors


def large(settings: Settings) -> list[Row]:
    """One big float32 tensor, jitted and donated step, each configuration."""
    n = 2**20 if settings.quick else 16 * 2**20
    p0 = jax.random.normal(jax.random.key(0), (n,), jnp.float32)
    g = 0.01 * jax.random.normal(jax.random.key(1), (n,), jnp.float32)
    triad = triad_step()
    rows = []
    for name, config in CONFIGS.items():
        txs = {"lucid_fx": (fx_rmsprop(config), fx.apply_updates),
               "optax": (optax_rmsprop(config), optax.apply_updates)}
        steps = {lib: transform_step(tx, apply) for lib, (tx, apply) in txs.items()}
        hlo = {lib: hlo_stats(steps[lib], p0, txs[lib][0].init(p0), g, elements=n) for lib in txs}
        agreement = _agreement(steps, txs, p0, g, config)
        contenders = [
            contender(lib, jax_loop(steps[lib], (copy_tree(p0), tx.init(p0)), g), settings)
            for lib, (tx, _) in txs.items()
        ]
        if torch is not None:
            params, grads = torch_tensors([p0]), torch_tensors([g])
            contenders.append(contender("torch", _torch_loop(params, grads, config), settings))
        contenders.append(contender("triad", jax_loop(triad, (copy_tree(p0),), g), settings))
        # The stateful face on the same tensor, its gradient assigned before every step.
        contenders.append(contender(
            STATEFUL, _stateful_loop([p0], [g], by_hand=True, config=config), settings))
        samples = interleave(contenders, settings)
        times = medians(samples)
        first_call = {c.name: c.first_call_s for c in contenders}
        ideal = bytes_per_element(config)
        triad_bw = TRIAD_BYTES * n / times["triad"]
        eff = {lib: ideal * n / t / triad_bw for lib, t in times.items()
               if lib not in ("triad", STATEFUL)}
        # The same, counting the bytes XLA's loops actually move: how close each loop
        # runs to the triad's bandwidth, whatever the loop structure.
        loop_eff = {lib: hlo[lib]["hlo_bytes_per_element"] * n / times[lib] / triad_bw
                    for lib in hlo}
        rows.append(Row(
            case=f"{n // 2**20}M f32, {name} ({ideal} B/elem)",
            unit="s",
            lucid_fx=times["lucid_fx"], optax=times["optax"], torch=times.get("torch"),
            notes=(
                f"{_note_efficiency(eff)}; triad {triad_bw / 1e9:.0f} GB/s; XLA: "
                f"{hlo['lucid_fx']['loops']} loops/leaf moving "
                f"{hlo['lucid_fx']['hlo_bytes_per_element']:g} B/elem "
                f"(optax {hlo['optax']['loops']}, {hlo['optax']['hlo_bytes_per_element']:g}), "
                f"at {loop_eff['lucid_fx']:.2f} (optax {loop_eff['optax']:.2f}) of triad BW; "
                f"{STATEFUL} {format_value(times[STATEFUL], 's')}: optax / it "
                f"{times['optax'] / times[STATEFUL]:.2f}×"
            ),
            extra={"elements": n, "ideal_bytes_per_element": ideal, "triad_s": times["triad"],
                   "triad_bytes_per_s": triad_bw, "efficiency": eff, "hlo": hlo,
                   "hlo_traffic_efficiency": loop_eff,
                   "max_relative_difference_vs_lucid_fx": agreement, "times_s": times,
                   "first_call_s": first_call, "samples_s": samples},
        ))
        del contenders
        gc.collect()
    return rows


def _agreement(
    steps: dict[str, jax.stages.Wrapped], txs: dict[str, Any], p0: jax.Array, g: jax.Array,
    config: dict[str, Any],
) -> dict[str, float]:
    """After one step from the same start: max |Δθ - Δθ_lucid_fx| / max |Δθ_lucid_fx|.

    A guard against timing differently configured optimizers (e.g. ε inside the
    square root); the numbers themselves are tested against a float64 reference
    in tests/.
    """
    deltas = {
        lib: np.asarray(steps[lib](copy_tree(p0), tx.init(p0), g)[0]) - np.asarray(p0)
        for lib, (tx, _) in txs.items()
    }
    if torch is not None:
        params, grads = torch_tensors([p0]), torch_tensors([g])
        _torch_loop(params, grads, config)(1)
        deltas["torch"] = params[0].numpy() - np.asarray(p0)
    scale = np.max(np.abs(deltas["lucid_fx"]))
    return {
        lib: float(np.max(np.abs(d - deltas["lucid_fx"])) / scale)
        for lib, d in deltas.items() if lib != "lucid_fx"
    }


# ------------------------------------------------------------------------- bf16


def bf16(settings: Settings) -> list[Row]:
    """bfloat16 parameters: state in bfloat16 (as optax and torch keep it) or in float32."""
    n = 2**20 if settings.quick else 16 * 2**20
    p0 = jax.random.normal(jax.random.key(2), (n,), jnp.float32).astype(jnp.bfloat16)
    g = (0.01 * jax.random.normal(jax.random.key(3), (n,), jnp.float32)).astype(jnp.bfloat16)
    variants = {"bf16_state": None, "f32_state": jnp.float32}
    contenders, hlo = [], {}
    for label, state_dtype in variants.items():
        tx = fx_rmsprop({}, state_dtype=state_dtype)
        step = transform_step(tx, fx.apply_updates)
        hlo[label] = hlo_stats(step, p0, tx.init(p0), g, elements=n)
        contenders.append(contender(label, jax_loop(step, (copy_tree(p0), tx.init(p0)), g), settings))
    otx = optax_rmsprop({})
    ostep = transform_step(otx, optax.apply_updates)
    hlo["optax"] = hlo_stats(ostep, p0, otx.init(p0), g, elements=n)
    contenders.append(contender("optax", jax_loop(ostep, (copy_tree(p0), otx.init(p0)), g), settings))
    if torch is not None:
        params, grads = torch_tensors([p0]), torch_tensors([g])
        contenders.append(contender("torch", _torch_loop(params, grads, {}), settings))
    p32, g32 = p0.astype(jnp.float32), g.astype(jnp.float32)
    contenders.append(contender("triad", jax_loop(triad_step(), (p32,), g32), settings))
    samples = interleave(contenders, settings)
    times = medians(samples)
    triad_bw = TRIAD_BYTES * n / times["triad"]
    errors = _bf16_square_avg_error(settings)
    rows = []
    for label, state_bytes in (("bf16_state", 2), ("f32_state", 4)):
        ideal = bytes_per_element({}, param_bytes=2, state_bytes=state_bytes)
        eff = ideal * n / times[label] / triad_bw
        same_state = label == "bf16_state"  # optax and torch keep v in the parameters' dtype
        rows.append(Row(
            case=f"{n // 2**20}M bf16, v in {'bfloat16' if same_state else 'float32'} "
                 f"({ideal} B/elem)",
            unit="s",
            lucid_fx=times[label],
            optax=times["optax"] if same_state else None,
            torch=times.get("torch") if same_state else None,
            notes=(f"BW eff {eff:.2f}; XLA: {hlo[label]['loops']} loops/leaf moving "
                   f"{hlo[label]['hlo_bytes_per_element']:g} B/elem"
                   + (f" (optax {hlo['optax']['hlo_bytes_per_element']:g})" if same_state else "")
                   + f"; v after {errors['steps']} steps: median rel. error "
                   f"{100 * errors[label]:.2g}% vs float64"),
            extra={"elements": n, "ideal_bytes_per_element": ideal, "efficiency": eff, "hlo": hlo,
                   "square_avg_error": errors, "times_s": times, "samples_s": samples},
        ))
    return rows


def _bf16_square_avg_error(settings: Settings) -> dict[str, Any]:
    """Median relative error of v after K steps on bfloat16 gradients, vs float64.

    The trade-off of ``state_dtype``: each step moves v by (1-α) = 1% of itself,
    below bfloat16's resolution (2⁻⁸ ≈ 0.4% per ulp, rounding to nearest), so a
    bfloat16 v mostly rounds its updates away; a float32 v does not.
    """
    n, steps = (4096, 100) if settings.quick else (32768, 400)
    grads = jax.random.normal(jax.random.key(4), (steps, n), jnp.float32).astype(jnp.bfloat16)
    params = jnp.zeros(n, jnp.bfloat16)
    result: dict[str, Any] = {"steps": steps, "elements": n}
    v64 = np.zeros(n)
    for g in np.asarray(grads, np.float64):
        v64 = ALPHA * v64 + (1 - ALPHA) * g * g
    for label, state_dtype in (("bf16_state", None), ("f32_state", jnp.float32)):
        tx = fx_rmsprop({}, state_dtype=state_dtype)

        def body(carry: Any, g: jax.Array, tx: Any = tx) -> tuple[Any, None]:
            p, s = carry
            u, s = tx.update(g, s, p)
            return (fx.apply_updates(p, u), s), None

        (_, state), _ = jax.jit(lambda c: jax.lax.scan(body, c, grads))((params, tx.init(params)))
        v = np.asarray(state.square_avg, np.float64)
        result[label] = float(np.median(np.abs(v - v64) / v64))
    return result


# ------------------------------------------------------------ many tensors, stateful


def _tree_case(
    name: str, shapes: list[tuple[int, ...]], settings: Settings, *, flat_variants: bool
) -> list[Row]:
    """optax, torch and every lucid_fx path over the same list of float32 tensors."""
    rng = np.random.default_rng(5)
    params = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes]
    grads = [jnp.asarray(0.01 * rng.normal(size=s), jnp.float32) for s in shapes]
    tx = fx_rmsprop({})
    runs: dict[str, Callable[[int], None]] = {
        "lucid_fx": jax_loop(transform_step(tx, fx.apply_updates), (copy_tree(params), tx.init(params)),
                             grads),
    }
    otx = optax_rmsprop({})
    runs["optax"] = jax_loop(transform_step(otx, optax.apply_updates),
                             (copy_tree(params), otx.init(params)), grads)
    if torch is not None:
        runs["torch"] = _torch_loop(torch_tensors(params), torch_tensors(grads), {})
    if flat_variants:
        wrapped = flatten(tx)
        runs["flatten(tx)"] = jax_loop(transform_step(wrapped, fx.apply_updates),
                                       (copy_tree(params), wrapped.init(params)), grads)
        layout = FlatLayout.of(params)
        flat = layout.pack(params)
        runs["FlatLayout"] = jax_loop(transform_step(tx, fx.apply_updates),
                                      (flat, tx.init(flat)), layout.pack(grads))
    runs["fx.RMSprop (fx.backward grads)"] = _stateful_loop(params, grads, by_hand=False)
    runs["fx.RMSprop (grads by hand)"] = _stateful_loop(params, grads, by_hand=True)
    contenders = [contender(label, run, settings) for label, run in runs.items()]
    samples = interleave(contenders, settings)
    times = medians(samples)
    first_call = {c.name: c.first_call_s for c in contenders}
    del contenders, runs
    gc.collect()

    arrays = len(shapes)
    rows = []
    ours = [label for label in times if label not in ("optax", "torch")]
    for label in ours:
        what = {"lucid_fx": "fx.rmsprop jitted tree step"}.get(label, label)
        notes = ""
        if label == "lucid_fx" and flat_variants:
            # Tree step minus flat step, over the arrays crossing the jit boundary:
            # params and v in and out, grads in.
            per_array = (times["lucid_fx"] - times["FlatLayout"]) / (5 * arrays)
            notes = f"≈ {per_array * 1e6:.1f} µs per array at the jit boundary ({5 * arrays} arrays)"
        if label.startswith("fx.RMSprop"):
            notes = f"{times['lucid_fx'] / times[label]:.2f}× the jitted fx.rmsprop tree step"
        rows.append(Row(
            case=f"{name}: {what}", unit="s", lucid_fx=times[label], optax=times["optax"],
            torch=times.get("torch"), notes=notes,
            extra={"tensors": arrays, "elements": int(sum(math.prod(s) for s in shapes)),
                   "times_s": times, "first_call_s": first_call, "samples_s": samples},
        ))
    return rows


def _stateful_loop(
    params: list[jax.Array], grads: list[jax.Array], *, by_hand: bool,
    config: dict[str, Any] | None = None,
) -> Callable[[int], None]:
    """``fx.RMSprop.step()``, with gradients from ``fx.backward`` or written into ``.grad``."""
    model = [fx.Parameter(p) for p in params]
    optimizer = fx.RMSprop(model, lr=LR, alpha=ALPHA, eps=EPS, **(config or {}))
    if not by_hand:
        # d/dw Σ <w, c> = c: backward leaves exactly `grads` in each .grad.
        fx.backward(lambda m, cs: sum(jnp.vdot(w, c) for w, c in zip(m, cs)), model, grads)

    def run(n: int) -> None:
        for _ in range(n):
            if by_hand:
                for p, g in zip(model, grads):
                    p.grad = g
            optimizer.step()
        wait_for_step(optimizer)

    return run


def small(settings: Settings) -> list[Row]:
    """Many small tensors: dispatch-bound; every lucid_fx path vs optax and torch."""
    name, shapes = list(tensor_sets(settings).items())[2]
    return _tree_case(name, shapes, settings, flat_variants=True)


def stateful(settings: Settings) -> list[Row]:
    """``fx.RMSprop.step()`` vs the jitted functional step on a big tensor and on a ResNet-50."""
    rows = []
    for name, shapes in list(tensor_sets(settings).items())[:2]:
        rows += _tree_case(name, shapes, settings, flat_variants=False)
    return rows


# ---------------------------------------------------------------------- compile


def compile_time(settings: Settings) -> list[Row]:
    """Time to trace, lower and compile the many-tensor step, each from scratch.

    The tensors are 10 x 10 (not the small case's 100-vectors), so that no step
    compiled by another case is found in a cache.
    """
    count = 100 if settings.quick else 1000
    params = [jnp.zeros((10, 10), jnp.float32) for _ in range(count)]
    layout = FlatLayout.of(params)
    flat = layout.pack(params)

    def tree_step(make: Callable[[], Any], apply: Callable[..., Any]) -> Callable[[], float]:
        def build() -> float:
            start = time.perf_counter()
            tx = make()  # a new transform and a new jit: nothing cached from earlier builds
            transform_step(tx, apply).lower(params, tx.init(params), params).compile()
            return time.perf_counter() - start
        return build

    def flat_step() -> float:
        start = time.perf_counter()
        tx = fx_rmsprop({})
        transform_step(tx, fx.apply_updates).lower(flat, tx.init(flat), flat).compile()
        return time.perf_counter() - start

    def stateful_steps(by_hand: bool) -> Callable[[], float]:
        """Construction, then the first two steps (the second step is the first with
        state). ``fx.backward``'s own compilation, the loss's, is not counted."""
        def build() -> float:
            start = time.perf_counter()
            model = [fx.Parameter(p) for p in params]
            optimizer = fx.RMSprop(model, lr=LR, alpha=ALPHA, eps=EPS)
            if by_hand:
                for p, g in zip(model, params):
                    p.grad = g
            else:
                paused = time.perf_counter()
                fx.backward(lambda m: sum(jnp.sum(w) for w in m), model)
                start += time.perf_counter() - paused
            for _ in range(2):
                optimizer.step()
            wait_for_step(optimizer)
            return time.perf_counter() - start
        return build

    builds = {
        "lucid_fx": tree_step(lambda: fx_rmsprop({}), fx.apply_updates),
        "optax": tree_step(lambda: optax_rmsprop({}), optax.apply_updates),
        "FlatLayout": flat_step,
    }
    samples: dict[str, list[float]] = {label: [] for label in builds}
    for rep in range(1 if settings.quick else 3):
        order = list(builds)[rep % 3:] + list(builds)[:rep % 3]
        for label in order:
            samples[label].append(builds[label]())
    # The stateful optimizer compiles once per structure, process-wide, so only its
    # first steps in this process compile: timed once.
    stateful = {"fx.RMSprop (fx.backward grads)": stateful_steps(by_hand=False),
                "fx.RMSprop (grads by hand)": stateful_steps(by_hand=True)}
    for label, build in stateful.items():
        samples[label] = [build()]
    times = medians(samples)
    rows = _first_backward_rows(count, settings)
    for label, what in (("lucid_fx", "fx.rmsprop tree step"), ("FlatLayout", "FlatLayout step"),
                        *((label, f"{label}: construction + first 2 steps") for label in stateful)):
        rows.append(Row(
            case=f"compile, {count} tensors: {what}", unit="s", lucid_fx=times[label],
            optax=times["optax"],
            notes=f"{times[label] / times['optax']:.2f} of optax's compile time",
            extra={"samples_s": samples[label], "optax_samples_s": samples["optax"]},
        ))
    return rows


def _first_backward_rows(count: int, settings: Settings) -> list[Row]:
    """The first ``fx.backward`` (trace + compile + run) next to ``jax.jit(jax.value_and_grad)``
    of the same loss over plain arrays: on ``count`` packed Parameters of 100 floats, and
    on the main job's model (``examples/train_digits.py``: a 64-128-128-10 ReLU MLP, its
    six Parameters packed into one buffer, cross-entropy over a batch of 64).

    Each build uses a new loss function, so nothing is found in the jit caches; the
    two alternate, and each figure is the median of its builds.
    """
    rng = np.random.default_rng(6)
    many = [jnp.asarray(rng.normal(size=100), jnp.float32) for _ in range(count)]
    data = [jnp.asarray(rng.normal(size=100), jnp.float32) for _ in range(count)]

    def many_loss() -> Callable[..., jax.Array]:
        return lambda ws, cs: sum(jnp.sum(jnp.tanh(w) * c) for w, c in zip(ws, cs))

    sizes = (64, 128, 128, 10)
    mlp = [{"w": jnp.asarray(rng.normal(size=(m, n)) / np.sqrt(m), jnp.float32),
            "b": jnp.zeros(n, jnp.float32)} for m, n in itertools.pairwise(sizes)]
    batch = (jnp.asarray(rng.uniform(size=(64, 64)), jnp.float32),
             jnp.asarray(rng.integers(0, 10, 64), jnp.int32))

    def mlp_loss() -> Callable[..., jax.Array]:
        def loss(layers: Any, x: jax.Array, y: jax.Array) -> jax.Array:
            for layer in layers[:-1]:
                x = jax.nn.relu(x @ layer["w"] + layer["b"])
            log_probs = jax.nn.log_softmax(x @ layers[-1]["w"] + layers[-1]["b"])
            return -jnp.mean(jnp.take_along_axis(log_probs, y[:, None], axis=1))
        return loss

    return [
        _first_backward_row(f"compile, {count} tensors: first fx.backward (packed, 100 floats "
                            f"each)", many, (data,), many_loss, "over a list",
                            1 if settings.quick else 3),
        # A third of a second each, and as noisy: more builds.
        _first_backward_row("compile, the main job's MLP (6 tensors): first fx.backward "
                            "(packed)", mlp, batch, mlp_loss, "over a dict",
                            1 if settings.quick else 11),
    ]


def _first_backward_row(
    case: str, values: Any, args: tuple[Any, ...], make_loss: Callable[[], Callable[..., Any]],
    plain: str, builds: int,
) -> Row:
    """One row of :func:`_first_backward_rows`: ``values`` (a pytree of arrays) become
    Parameters of one ``fx.RMSprop``, which packs them."""
    model = jax.tree.map(fx.Parameter, values)
    optimizer = fx.RMSprop(fx.parameters(model), lr=LR, alpha=ALPHA, eps=EPS)
    first = fx.parameters(model)[0]

    def fx_first() -> float:
        loss = make_loss()
        optimizer.zero_grad()
        start = time.perf_counter()
        jax.block_until_ready((fx.backward(loss, model, *args), first.grad))
        return time.perf_counter() - start

    def jax_first() -> float:
        loss = make_loss()
        start = time.perf_counter()
        jax.block_until_ready(jax.jit(jax.value_and_grad(loss))(values, *args))
        return time.perf_counter() - start

    samples: dict[str, list[float]] = {"fx.backward": [], "jax": []}
    for rep in range(builds):
        for label, build in sorted({"fx.backward": fx_first, "jax": jax_first}.items(),
                                   reverse=bool(rep % 2)):
            samples[label].append(build())
    times = medians(samples)
    ratio = times["fx.backward"] / times["jax"]
    return Row(
        case=case, unit="s", lucid_fx=times["fx.backward"],
        notes=f"{ratio:.2f}× jax.jit(jax.value_and_grad) {plain} ({times['jax']:.3g} s)",
        extra={"samples_s": samples["fx.backward"], "jax_value_and_grad_samples_s": samples["jax"],
               "over_jax_value_and_grad": ratio},
    )


# ----------------------------------------------------------------------- memory


def memory(settings: Settings) -> list[Row]:
    """Peak RSS of a step over big parameters, each library in a fresh process."""
    size = 64 * 2**20 if settings.quick else 2**30
    script = Path(__file__).with_name("memory.py")
    results = {}
    variants = ["lucid_fx", "lucid_fx-no-donation", "optax"]
    if torch is not None:
        variants.append("torch")
    for variant in variants:
        out = subprocess.run(
            [sys.executable, str(script), "--impl", variant, "--bytes", str(size)],
            capture_output=True, text=True, check=False, env={**os.environ},
        )
        if out.returncode != 0:
            raise RuntimeError(f"memory child {variant} failed:\n{out.stderr[-3000:]}")
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    fx_res = results["lucid_fx"]
    live = fx_res["live_bytes"]
    ratio = {k: r["peak_step_rss"] / r["live_bytes"] for k, r in results.items()}
    net = {k: (r["peak_step_rss"] - r["baseline_rss"]) / r["live_bytes"] for k, r in results.items()}
    notes = (
        f"live θ+g+v = {live / 2**30:.2f} GiB; peak/live: "
        + ", ".join(f"{k} {ratio[k]:.2f}" for k in results)
        + f"; net of the {fx_res['baseline_rss'] / 2**30:.2f} GiB runtime: "
        + ", ".join(f"{k} {net[k]:.2f}" for k in results)
    )
    return [Row(
        case=f"peak RSS of a step, {size / 2**30:g} GiB f32 params (plain)", unit="bytes",
        lucid_fx=fx_res["peak_step_rss"], optax=results["optax"]["peak_step_rss"],
        torch=results.get("torch", {}).get("peak_step_rss"), notes=notes,
        extra={"children": results, "peak_over_live": ratio, "net_peak_over_live": net},
    )]


# ----------------------------------------------------------------------- ZeRO-1


def zero1_report(settings: Settings) -> str:
    """``benchmarks/zero1.py`` (state sharded over 8 simulated devices) in a child process.

    The device count must be set before jax starts, hence the child; its table
    (state bytes per device and step time, replicated vs ZeRO-1) is returned as is.
    """
    script = Path(__file__).with_name("zero1.py")
    sizes = ["--layers", "2", "--width", "256", "--repeats", "5"] if settings.quick else []
    env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "")
                                       + " --xla_force_host_platform_device_count=8").strip()}
    out = subprocess.run([sys.executable, str(script), *sizes], capture_output=True, text=True,
                         check=False, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"benchmarks/zero1.py failed:\n{out.stderr[-3000:]}")
    return out.stdout.strip()


# Cases printed as their own section, after the table (their columns are not the table's).
SECTIONS: dict[str, Callable[[Settings], str]] = {"zero1": zero1_report}

CASES: dict[str, Callable[[Settings], list[Row]]] = {
    "large": large,
    "small": small,
    "stateful": stateful,
    "compile": compile_time,
    "memory": memory,
    "bf16": bf16,
    "family": family,
    "muon": muon,
    "adafactor": adafactor,
    "averaging": averaging,
}
