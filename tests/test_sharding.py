"""Sharded parameters, ZeRO-1 state and the stateful adapter on eight host devices.

The checks run on the suite's eight host devices (tests/conftest.py), each
``test_on_eight_devices[...]`` in this process. The adapter's checks run in one child
interpreter (:func:`main`), because one of them reads XLA's dump of the compiled
code, which only a process started with ``--xla_dump_to`` writes; each
``test_adapter_on_eight_devices[...]`` reports one of them. Numbers are checked
twice: against the same code on one device (equal to the last bit: the update is
element-wise, so sharding changes no arithmetic) and against the float64
reference written from the formulas.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from typing import Any

import pytest

EIGHT_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
STEPS = 3
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")

# Hyper-parameter configurations, by name: together they take every buffer and code
# path of rmsprop (skip_nonfinite has its own check below).
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "all_buffers": {"lr": 0.05, "momentum": 0.9, "centered": True, "weight_decay": 0.1},
    "maximize_schedule": {"maximize": True, "lr": lambda step: 0.1 / (1.0 + step)},
}

# Checks by group: the functional ones run here, the adapter's in one eight-device
# child, in this order.
CHECKS: dict[str, list[Callable[[], None]]] = {"functional": [], "adapter": []}


def check(fn: Callable[[], None], group: str = "functional") -> Callable[[], None]:
    """Registers ``fn`` as a check of ``group``."""
    CHECKS[group].append(fn)
    return fn


def adapter_check(fn: Callable[[], None]) -> Callable[[], None]:
    return check(fn, group="adapter")


# --- helpers (run in the child) -------------------------------------------------------


def _meshes() -> dict[str, Any]:
    """A 4 x 2 ("data", "model") mesh with Auto axes and one with Explicit axes."""
    import jax
    from jax.sharding import AxisType

    return {
        kind: jax.make_mesh((4, 2), ("data", "model"), axis_types=(axis_type,) * 2)
        for kind, axis_type in (("auto", AxisType.Auto), ("explicit", AxisType.Explicit))
    }


def _specs() -> dict[str, Any]:
    from jax.sharding import PartitionSpec as P

    # Sharded on both axes, on one, complex, and fully replicated.
    return {"w": P("data", "model"), "b": P("model"), "c": P("data"), "r": P()}


def _tree(seed: int) -> dict[str, Any]:
    """Host arrays for the parameter tree: float32 and one complex64 leaf."""
    import numpy as np

    rng = np.random.default_rng(seed)
    tree = {k: rng.standard_normal(shape).astype(np.float32)
            for k, shape in {"w": (8, 4), "b": (4,), "r": (3,)}.items()}
    tree["c"] = (rng.standard_normal(8) + 1j * rng.standard_normal(8)).astype(np.complex64)
    return tree


def _only(tree: dict[str, Any], keys: tuple[str, ...] = ("w", "c")) -> dict[str, Any]:
    return {k: tree[k] for k in keys}


def _put(tree: dict[str, Any], mesh: Any) -> dict[str, Any]:
    import jax
    from jax.sharding import NamedSharding

    return {k: jax.device_put(v, NamedSharding(mesh, _specs()[k])) for k, v in tree.items()}


def _on_one_device(tree: Any) -> Any:
    import jax

    return jax.device_put(tree, jax.devices()[0])


def _train_step(tx: Any) -> Callable[..., Any]:
    import lucid_fx as fx

    def step(params: Any, grads: Any, state: Any) -> tuple[Any, Any]:
        updates, state = tx.update(grads, state, params)
        return fx.apply_updates(params, updates), state

    return step


def _run(
    tx: Any, params: Any, grads: list[Any], step: Callable[..., Any], state: Any = None
) -> tuple[Any, Any]:
    state = tx.init(params) if state is None else state
    for g in grads:
        params, state = step(params, g, state)
    return params, state


def _collectives(compiled_text: str) -> list[str]:
    return [name for name in COLLECTIVES if name in compiled_text]


def _assert_same_sharding(array: Any, like: Any, what: str) -> None:
    assert array.sharding.is_equivalent_to(like.sharding, like.ndim), (
        f"{what}: {array.sharding} differs from its parameter's {like.sharding}"
    )


def _assert_matches_reference(params: Any, config: dict[str, Any], p0: Any, grads: Any) -> None:
    import numpy as np
    from reference import RTOL_F32, max_rel_error, reference_run

    keys = sorted(p0)
    history, _ = reference_run(
        [p0[k] for k in keys], [[g[k] for k in keys] for g in grads], **config
    )
    for key, expected in zip(keys, history[-1]):
        error = max_rel_error(np.asarray(params[key]), expected)
        assert error <= RTOL_F32, f"{key}: max relative error {error} > {RTOL_F32}"


def _assert_trees_equal(actual: Any, expected: Any) -> None:
    import jax
    import numpy as np

    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(actual)[0],
                            jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b),
                                      err_msg=jax.tree_util.keystr(path))


# --- checks: state follows sharded parameters ------------------------------------------


@check
def init_follows_param_sharding_eagerly_and_under_jit() -> None:
    import jax

    import lucid_fx as fx

    tx = fx.rmsprop(**CONFIGS["all_buffers"])
    for kind, mesh in _meshes().items():
        params = _put(_tree(0), mesh)
        for how, init in (("eager", tx.init), ("jit", jax.jit(tx.init))):
            state = init(params)
            for field in ("square_avg", "grad_avg", "momentum_buffer"):
                for key, param in params.items():
                    _assert_same_sharding(getattr(state, field)[key], param,
                                          f"{kind} mesh, {how} init, {field}[{key!r}]")


@check
def compiled_sharded_step_has_no_collective_and_equals_one_device() -> None:
    import jax

    import lucid_fx as fx

    p0, grads = _tree(0), [_tree(1 + t) for t in range(STEPS)]
    singles = {}
    for kind, mesh in _meshes().items():
        params = _put(p0, mesh)
        for name, config in CONFIGS.items():
            tx = fx.rmsprop(**config)
            state = jax.jit(tx.init)(params)
            step = jax.jit(_train_step(tx)).lower(params, _put(grads[0], mesh), state).compile()
            found = _collectives(step.as_text())
            assert not found, f"{kind} mesh, {name}: the compiled step holds {found}"
            sharded, state = _run(tx, params, [_put(g, mesh) for g in grads], step, state)
            if name not in singles:
                singles[name] = _run(tx, _on_one_device(p0), [_on_one_device(g) for g in grads],
                                     jax.jit(_train_step(tx)))[0]
            _assert_trees_equal(sharded, singles[name])
            _assert_matches_reference(sharded, config, p0, grads)
            for key, param in sharded.items():
                _assert_same_sharding(param, _put(p0, mesh)[key], f"{kind}, {name}: params")
                _assert_same_sharding(state.square_avg[key], param, f"{kind}, {name}: v")


@check
def eager_sharded_steps_equal_one_device() -> None:
    import lucid_fx as fx

    # Eager dispatch compiles every primitive per shape: two leaves keep it quick.
    p0, grads = _only(_tree(0)), [_only(_tree(1 + t)) for t in range(STEPS)]
    config = CONFIGS["all_buffers"]
    tx = fx.rmsprop(**config)
    mesh = _meshes()["auto"]
    sharded, state = _run(tx, _put(p0, mesh), [_put(g, mesh) for g in grads], _train_step(tx))
    single, _ = _run(tx, _on_one_device(p0), [_on_one_device(g) for g in grads],
                     _train_step(tx))
    _assert_trees_equal(sharded, single)
    _assert_matches_reference(sharded, config, p0, grads)
    for key, param in sharded.items():
        _assert_same_sharding(state.momentum_buffer[key], param, f"b[{key!r}]")


@check
def skip_nonfinite_needs_only_an_all_reduce_and_skips_on_every_shard() -> None:
    import jax
    import numpy as np

    import lucid_fx as fx

    mesh = _meshes()["auto"]
    tx = fx.rmsprop(skip_nonfinite=True)
    params = _put(_tree(0), mesh)
    state = jax.jit(tx.init)(params)
    bad = _tree(1)
    bad["w"][7, 3] = np.nan  # one element, on the last device's shard only
    step = jax.jit(_train_step(tx))
    text = step.lower(params, _put(bad, mesh), state).compile().as_text()
    # The documented exception: "all gradients finite?" is one global reduction.
    assert _collectives(text) == ["all-reduce"], _collectives(text)
    new_params, new_state = step(params, _put(bad, mesh), state)
    _assert_trees_equal(new_params, params)
    assert int(new_state.skipped) == 1 and int(new_state.step) == 0
    good_params, _ = step(params, _put(_tree(1), mesh), state)
    single, _ = jax.jit(_train_step(tx))(_on_one_device(_tree(0)), _on_one_device(_tree(1)),
                                         tx.init(_on_one_device(_tree(0))))
    _assert_trees_equal(good_params, single)


# --- checks: ZeRO-1 -------------------------------------------------------------------


def _flat_mesh(kind: str) -> Any:
    import jax
    from jax.sharding import AxisType

    axis_type = AxisType.Auto if kind == "auto" else AxisType.Explicit
    return jax.make_mesh((8,), ("data",), axis_types=(axis_type,))


def _replicated(tree: Any, mesh: Any) -> Any:
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def _zero1_tree(seed: int) -> dict[str, Any]:
    """Leaves split 8 ways on dimension 0 or 1, and two that no dimension of divides."""
    import numpy as np

    rng = np.random.default_rng(seed)
    shapes = {"w": (16, 12), "v": (3, 8), "c": (8,), "b": (5,), "s": ()}
    tree = {k: np.asarray(rng.standard_normal(s), np.float32) for k, s in shapes.items()}
    tree["c"] = (rng.standard_normal(8) + 1j * rng.standard_normal(8)).astype(np.complex64)
    return tree


@check
def zero1_state_holds_one_eighth_per_device() -> None:
    import jax
    from jax.sharding import PartitionSpec as P

    import lucid_fx as fx
    from lucid_fx.sharding import bytes_per_device, zero1

    expected_specs = {"w": P("data"), "v": P(None, "data"), "c": P("data"), "b": P(), "s": P()}
    for kind, how in (("auto", "eager"), ("auto", "jit"), ("explicit", "eager")):
        mesh = _flat_mesh(kind)
        params = _replicated(_zero1_tree(0), mesh)
        tx = fx.rmsprop(**CONFIGS["all_buffers"])
        split_init = zero1(tx, mesh).init
        split_state = (jax.jit(split_init) if how == "jit" else split_init)(params)
        full_state = jax.jit(tx.init)(params)
        for field in ("square_avg", "grad_avg", "momentum_buffer"):
            for key, spec in expected_specs.items():
                leaf = getattr(split_state, field)[key]
                assert leaf.sharding.is_equivalent_to(
                    leaf.sharding.update(spec=spec), leaf.ndim
                ), f"{kind}, {how}: {field}[{key!r}] is {leaf.sharding.spec}, expected {spec}"
        split_bytes = bytes_per_device(split_state)
        full_bytes = bytes_per_device(full_state)
        assert len(split_bytes) == 8 and len(set(split_bytes.values())) == 1, split_bytes
        # Split leaves shrink 8-fold; "b", "s" and the step count stay whole.
        buffers = (split_state.square_avg, split_state.grad_avg, split_state.momentum_buffer)
        whole = sum(t[k].nbytes for t in buffers for k in ("b", "s")) + 4
        split = sum(t[k].nbytes for t in buffers for k in ("w", "v", "c"))
        device = next(iter(split_bytes))
        assert split_bytes[device] == whole + split // 8, (split_bytes[device], whole, split)
        assert set(full_bytes.values()) == {whole + split}, full_bytes


@check
def zero1_steps_equal_plain_transform_on_one_device() -> None:
    import jax

    import lucid_fx as fx
    from lucid_fx.sharding import zero1

    p0, grads = _zero1_tree(0), [_zero1_tree(1 + t) for t in range(STEPS)]
    cases = [("auto", "jit", "default"), ("auto", "jit", "all_buffers"),
             ("explicit", "jit", "all_buffers"), ("auto", "eager", "all_buffers")]
    for kind, how, name in cases:
        mesh = _flat_mesh(kind)
        wrap = jax.jit if how == "jit" else (lambda f: f)
        tree, steps = (p0, grads) if how == "jit" else (_only(p0), [_only(g) for g in grads])
        tx = fx.rmsprop(**CONFIGS[name])
        split_tx = zero1(tx, mesh)
        params, state = _run(split_tx, _replicated(tree, mesh),
                             [_replicated(g, mesh) for g in steps], wrap(_train_step(split_tx)))
        single, _ = _run(tx, _on_one_device(tree), [_on_one_device(g) for g in steps],
                         wrap(_train_step(tx)))
        _assert_trees_equal(params, single)
        where = f"{kind}, {name}, {how}"
        for key, param in params.items():
            assert param.sharding.is_fully_replicated, f"{where}: params[{key!r}]"
        assert state.square_avg["w"].sharding.shard_shape((16, 12)) == (2, 12), where


@check
def zero1_compiled_step_gathers_updates_and_keeps_state_split() -> None:
    import jax

    import lucid_fx as fx
    from lucid_fx.sharding import split_sharding, zero1

    mesh = _flat_mesh("auto")
    tx = zero1(fx.rmsprop(**CONFIGS["all_buffers"]), mesh)
    params = _replicated(_zero1_tree(0), mesh)
    state = tx.init(params)
    compiled = jax.jit(_train_step(tx)).lower(params, _replicated(_zero1_tree(1), mesh),
                                             state).compile()
    # The update slices the replicated gradient locally; only the updates travel.
    assert _collectives(compiled.as_text()) == ["all-gather"], _collectives(compiled.as_text())
    _, state_out = compiled.output_shardings
    for out, want in zip(jax.tree.leaves(state_out),
                         jax.tree.leaves(split_sharding(state, mesh))):
        assert out.is_equivalent_to(want, len(want.spec)), (out, want)


@check
def zero1_wraps_optax_transforms() -> None:
    import jax
    import optax

    from lucid_fx.sharding import bytes_per_device, zero1

    mesh = _flat_mesh("auto")
    tree = {"w": _zero1_tree(0)["w"]}
    grads = [{"w": _zero1_tree(1 + t)["w"]} for t in range(STEPS)]
    adam = optax.adam(1e-2)
    params, state = _run(zero1(adam, mesh), _replicated(tree, mesh),
                         [_replicated(g, mesh) for g in grads],
                         jax.jit(_train_step(zero1(adam, mesh))))
    single, full_state = _run(adam, _on_one_device(tree), [_on_one_device(g) for g in grads],
                              jax.jit(_train_step(adam)))
    _assert_trees_equal(params, single)
    assert max(bytes_per_device(state).values()) * 8 < 2 * sum(
        x.nbytes for x in jax.tree.leaves(full_state))


@check
def zero1_rejects_sharded_params_and_unknown_axes() -> None:
    import jax.numpy as jnp

    import lucid_fx as fx
    from lucid_fx.sharding import zero1

    mesh = _meshes()["auto"]
    tx = zero1(fx.rmsprop(), mesh, axis="data")
    sharded = _put(_tree(0), mesh)
    try:
        tx.init(sharded)
    except ValueError as error:
        assert "['b'] is already sharded" in str(error), error
    else:
        raise AssertionError("zero1 accepted parameters that are already sharded")
    try:
        zero1(fx.rmsprop(), mesh, axis="batch").init({"w": jnp.ones(8)})
    except ValueError as error:
        assert "not 'batch'" in str(error) and "('data', 'model')" in str(error), error
    else:
        raise AssertionError("zero1 accepted an axis the mesh does not have")


@check
def backward_gradients_are_split_like_their_parameters() -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import lucid_fx as fx

    # Not in the adapter group: the loss sums over a batch split over "data", so its
    # gradient program holds collectives. What matters is where the gradients land:
    # contracted over the batch, XLA would otherwise leave each one whole on every device.
    def loss_fn(m: dict[str, Any], x: jax.Array) -> jax.Array:
        hidden = jnp.tanh(x @ m["w"] + m["b"])
        return jnp.mean(hidden ** 2) + jnp.sum(jnp.abs(m["c"]) ** 2) + jnp.sum(m["r"] ** 2)

    x = np.random.default_rng(9).standard_normal((16, 8)).astype(np.float32)
    for kind, mesh in _meshes().items():
        model = {k: fx.Parameter(v) for k, v in _put(_tree(0), mesh).items()}
        batch = jax.device_put(x, NamedSharding(mesh, P("data")))
        fx.backward(loss_fn, model, batch)
        for key, p in model.items():
            _assert_same_sharding(p.grad, p.value, f"{kind} mesh: {key}.grad")


# --- checks: the stateful adapter with sharded Parameters ------------------------------
# These run in a child that dumps every module XLA compiles (XLA_DUMP_DIR), and set
# .grad directly, so that the only compiled code is the optimizer's own.

XLA_DUMP_ENV = "LUCID_FX_TEST_XLA_DUMP"


def _adapter_run(tree: dict[str, Any], grads: list[dict[str, Any]], place: Callable[..., Any],
                 config: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    import lucid_fx as fx

    model = {k: fx.Parameter(place(k, v)) for k, v in tree.items()}
    optimizer = fx.RMSprop([model[k] for k in sorted(model)], **config)
    for g in grads:
        for key, p in model.items():
            p.grad = place(key, g[key])
        optimizer.step()
    return model, optimizer


def _sharded_placer(mesh: Any) -> Callable[[str, Any], Any]:
    import jax
    from jax.sharding import NamedSharding

    return lambda key, host: jax.device_put(host, NamedSharding(mesh, _specs()[key]))


def _single_placer(key: str, host: Any) -> Any:
    return _on_one_device(host)


def _whole_copies(like: dict[str, Any]) -> list[str]:
    """Live arrays of a parameter's shape and dtype that are not split like it."""
    import gc

    import jax

    gc.collect()
    split = {(p.shape, p.dtype): p.sharding for p in like.values()}
    return [f"{x.shape} {x.sharding}" for x in jax.live_arrays()
            if (x.shape, x.dtype) in split
            and not x.sharding.is_equivalent_to(split[(x.shape, x.dtype)], x.ndim)]


@adapter_check
def adapter_steps_on_sharded_parameters_equal_one_device_and_reference() -> None:
    config = CONFIGS["all_buffers"]
    p0, grads = _tree(0), [_tree(1 + t) for t in range(STEPS)]
    for kind, mesh in _meshes().items():
        sharded, _ = _adapter_run(p0, grads, _sharded_placer(mesh), config)
        single, _ = _adapter_run(p0, grads, _single_placer, config)
        values = {k: p.value for k, p in sharded.items()}
        _assert_trees_equal(values, {k: p.value for k, p in single.items()})
        _assert_matches_reference(values, config, p0, grads)
        for key, value in values.items():
            _assert_same_sharding(value, _put(p0, mesh)[key], f"{kind} mesh: {key}")


@adapter_check
def adapter_keeps_no_whole_copy_of_a_sharded_parameter() -> None:
    mesh = _meshes()["auto"]
    model, optimizer = _adapter_run(_tree(0), [_tree(1 + t) for t in range(STEPS)],
                                    _sharded_placer(mesh), CONFIGS["all_buffers"])
    # Parameters, gradients and the three buffers: every one split like its parameter.
    copies = _whole_copies({k: p.value for k, p in model.items()})
    assert copies == [], f"whole copies next to sharded parameters: {copies}"
    del optimizer


@adapter_check
def adapter_state_dict_is_host_numpy_and_loads_with_the_current_sharding() -> None:
    import gc

    import jax
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import lucid_fx as fx

    config = CONFIGS["all_buffers"]
    p0, grads = _tree(0), [_tree(1 + t) for t in range(STEPS + 1)]
    mesh = _meshes()["auto"]
    model, optimizer = _adapter_run(p0, grads[:STEPS], _sharded_placer(mesh), config)
    saved = optimizer.state_dict()
    values = {k: np.asarray(p.value) for k, p in model.items()}
    for entry in saved["state"].values():
        for key, value in entry.items():
            assert isinstance(value, (np.ndarray, np.generic)), (key, type(value))
    del model, optimizer
    gc.collect()
    # Load into Parameters placed differently: the buffers must follow the new placement.
    moved = {"w": P("model", "data"), "b": P("data"), "c": P("model"), "r": P()}

    def place(key: str, host: Any) -> Any:
        return jax.device_put(host, NamedSharding(mesh, moved[key]))

    restored = {k: fx.Parameter(place(k, v)) for k, v in values.items()}
    fresh = fx.RMSprop([restored[k] for k in sorted(restored)], **config)
    fresh.load_state_dict(saved)
    copies = _whole_copies({k: p.value for k, p in restored.items()})
    assert copies == [], f"after load_state_dict: {copies}"
    for key, p in restored.items():
        p.grad = place(key, grads[STEPS][key])
    fresh.step()
    uninterrupted, _ = _adapter_run(p0, grads, _single_placer, config)
    _assert_trees_equal({k: p.value for k, p in restored.items()},
                        {k: p.value for k, p in uninterrupted.items()})
    for key, p in restored.items():
        assert p.value.sharding.spec == moved[key], (key, p.value.sharding)


@adapter_check
def adapter_compiled_code_has_no_collective() -> None:
    import os
    from pathlib import Path

    dumps = sorted(Path(os.environ[XLA_DUMP_ENV]).glob("*after_optimizations.txt"))
    assert dumps, "XLA dumped no module: was --xla_dump_to set?"
    found = {path.name: _collectives(path.read_text()) for path in dumps}
    assert not any(found.values()), {name: c for name, c in found.items() if c}


# --- the parent side ------------------------------------------------------------------


def main(group: str = "functional") -> None:
    """Runs ``group``'s checks in this interpreter; prints {name: "ok" or traceback} as JSON."""
    results = {}
    for fn in CHECKS[group]:
        try:
            fn()
            results[fn.__name__] = "ok"
        except Exception:  # noqa: BLE001 - reported per check by the parent, with its traceback
            results[fn.__name__] = traceback.format_exc()
    print(json.dumps(results))


@pytest.fixture(scope="module")
def adapter_results(run_python: Callable[..., Any], tmp_path_factory: Any) -> dict[str, str]:
    dump = tmp_path_factory.mktemp("xla_dump")
    env = {**EIGHT_DEVICES, XLA_DUMP_ENV: str(dump),
           "XLA_FLAGS": f"{EIGHT_DEVICES['XLA_FLAGS']} --xla_dump_to={dump} --xla_dump_hlo_as_text"}
    return run_python("import test_sharding; test_sharding.main('adapter')", env=env)


@pytest.mark.slow  # every check compiles anew for eight devices (13 s in all)
@pytest.mark.parametrize("check_fn", CHECKS["functional"], ids=lambda fn: fn.__name__)
def test_on_eight_devices(eight_devices: list[Any], check_fn: Callable[[], None]) -> None:
    check_fn()


@pytest.mark.slow  # a child process, with XLA's compiler dump
@pytest.mark.parametrize("name", [fn.__name__ for fn in CHECKS["adapter"]])
def test_adapter_on_eight_devices(adapter_results: dict[str, str], name: str) -> None:
    assert adapter_results[name] == "ok", adapter_results[name]
