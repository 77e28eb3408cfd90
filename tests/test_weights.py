"""Weights out and back in: ``values``/``load_values`` and the torch-style flat form.

Round trips (in memory, pickle, orbax), Parameters held by an optimizer (packed
storage), every error path (nothing changes), pairing by name with real torch
modules, sharded Parameters on eight host devices, and a property test over
random trees.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey
from optimizers_under_test import CompileCounter

import lucid_fx as fx
from lucid_fx._src.core.naming import dotted_name
from lucid_fx.weights import load_state_dict, load_values, state_dict, values

BIG = (300, 300)  # over the packing limit: the optimizer keeps it as its own, donated buffer


def make_model(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)

    def param(*shape: int) -> fx.Parameter:
        return fx.Parameter(rng.standard_normal(shape).astype(np.float32))

    return {
        "fc1": {"weight": param(4, 3), "bias": param(4)},
        "fc2": {"weight": param(1, 4), "bias": param(1)},
        "big": param(*BIG),
        "blocks": [param(2), {"scale": param()}],
        "config": "relu",
    }


def bits(tree: Any) -> list[bytes]:
    """Every Parameter's value, exactly, in pytree order."""
    return [np.asarray(p.value).tobytes() for p in fx.parameters(tree)]


def loss_fn(m: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    h = jnp.tanh(x @ m["fc1"]["weight"].T + m["fc1"]["bias"])
    out = h @ m["fc2"]["weight"].T + m["fc2"]["bias"]
    extra = jnp.mean(m["big"] ** 2) + jnp.sum(m["blocks"][0] ** 2) + m["blocks"][1]["scale"] ** 2
    return jnp.mean((out - y) ** 2) + 1e-3 * extra


def batch(t: int) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(1000 + t)
    return jnp.asarray(rng.standard_normal((8, 3)), jnp.float32), jnp.asarray(
        rng.standard_normal((8, 1)), jnp.float32)


def train(model: Any, optimizer: fx.Optimizer, first: int, count: int) -> None:
    for t in range(first, first + count):
        optimizer.zero_grad()
        fx.backward(loss_fn, model, *batch(t))
        optimizer.step()


# ----- dotted_name ---------------------------------------------------------------------


class Pair(NamedTuple):
    left: Any
    right: Any


def test_dotted_name_of_each_key_kind() -> None:
    assert dotted_name(()) == ""
    assert dotted_name((DictKey("fc1"), DictKey("weight"))) == "fc1.weight"
    assert dotted_name((SequenceKey(0), DictKey("bias"))) == "0.bias"
    assert dotted_name((GetAttrKey("layers"), SequenceKey(2), GetAttrKey("weight"))) == "layers.2.weight"
    assert dotted_name((FlattenedIndexKey(3),)) == "3"
    assert dotted_name((DictKey(7),)) == "7"


def test_dotted_name_of_real_paths() -> None:
    tree = {"enc": [Pair(jnp.ones(1), jnp.ones(1))], "head": (jnp.ones(1),)}
    names = [dotted_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    assert names == ["enc.0.left", "enc.0.right", "head.0"]


# ----- values / load_values ------------------------------------------------------------


def test_values_replaces_parameters_and_keeps_other_leaves() -> None:
    model = make_model(0)
    saved = values(model)
    arrays = jax.tree.map(lambda x: x.value if isinstance(x, fx.Parameter) else x, model,
                          is_leaf=lambda x: isinstance(x, fx.Parameter))
    assert jax.tree.structure(saved) == jax.tree.structure(arrays)
    assert saved["config"] == "relu"
    del saved["config"]
    for array, p in zip(jax.tree.leaves(saved), fx.parameters(model), strict=True):
        assert isinstance(array, jax.Array)
        assert array.shape == p.shape and array.dtype == p.dtype


def test_values_is_a_snapshot_that_survives_optimizer_steps() -> None:
    model = make_model(0)
    optimizer = fx.RMSprop(fx.parameters(model), lr=0.01)
    train(model, optimizer, 0, 1)
    saved = values(model)
    expected = [np.asarray(a).copy() for a in jax.tree.leaves(saved) if isinstance(a, jax.Array)]
    train(model, optimizer, 1, 3)  # donates the buffers the Parameters held
    got = [np.asarray(a) for a in jax.tree.leaves(saved) if isinstance(a, jax.Array)]
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_array_equal(g, e)
    assert bits(model) != [e.tobytes() for e in expected]


def test_round_trip_restores_every_parameter() -> None:
    model = make_model(0)
    before = bits(model)
    saved = values(model)
    load_values(model, values(make_model(1)))
    assert bits(model) != before
    load_values(model, saved)
    assert bits(model) == before


def _aligned_copy(array: np.ndarray) -> np.ndarray:
    """``array`` in 64-byte-aligned memory, which JAX may use in place rather than copy."""
    buffer = np.zeros(array.size + 16, array.dtype)
    start = (-buffer.ctypes.data % 64) // array.itemsize
    aligned = buffer[start:start + array.size].reshape(array.shape)
    aligned[...] = array
    assert aligned.ctypes.data % 64 == 0
    return aligned


@pytest.mark.parametrize("held", [False, True], ids=["plain", "held-by-optimizer"])
def test_loaded_arrays_are_copies(held: bool) -> None:
    model, _ = _model_for(held)
    source = jax.tree.map(lambda a: _aligned_copy(np.asarray(a)), values(make_model(1)))
    load_values(model, source)
    expected = bits(model)
    for array in jax.tree.leaves(source):
        array[...] = 0  # the caller's arrays stay the caller's
    assert bits(model) == expected
    flat = {k: _aligned_copy(v) for k, v in state_dict(make_model(2)).items()}
    load_state_dict(model, flat)
    expected = bits(model)
    for array in flat.values():
        array[...] = 0
    assert bits(model) == expected


def test_loaded_jax_arrays_survive_donation() -> None:
    model = make_model(0)
    optimizer = fx.RMSprop(fx.parameters(model), lr=0.01)
    jax_source = values(make_model(2))
    load_values(model, jax_source)
    train(model, optimizer, 0, 2)
    assert not jax_source["big"].is_deleted()


def test_round_trip_through_pickle() -> None:
    model = make_model(0)
    before = bits(model)
    blob = pickle.dumps(jax.tree.map(np.asarray, values(model)))
    load_values(model, values(make_model(1)))
    load_values(model, pickle.loads(blob))
    assert bits(model) == before


def test_round_trip_through_orbax_standard_checkpointer(tmp_path: Path) -> None:
    model = make_model(0)
    before = bits(model)
    saved = values(model)
    del saved["config"]  # orbax stores arrays; a string is the caller's to keep
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "weights", saved)
    other = make_model(1)
    del other["config"]
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, values(other))
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(tmp_path / "weights", target)
    load_values(other, restored)
    assert bits(other) == before


def test_round_trip_through_orbax_pytree_checkpointer(tmp_path: Path) -> None:
    model = make_model(0)
    del model["config"]
    before = bits(model)
    saved = values(model)
    with ocp.PyTreeCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "weights", saved)
        restored = checkpointer.restore(
            tmp_path / "weights",
            item=saved,
            restore_args=ocp.checkpoint_utils.construct_restore_args(saved),
        )
    other = make_model(1)
    del other["config"]
    load_values(model, values(other))
    load_values(model, restored)
    assert bits(model) == before


def test_a_tuple_may_come_back_as_a_list() -> None:
    # orbax restores a tuple as a list when given no target; the leaf paths are the same.
    model = {"pair": (fx.Parameter(jnp.zeros(2)), fx.Parameter(jnp.zeros(1)))}
    load_values(model, {"pair": [np.ones(2, np.float32), np.full(1, 2, np.float32)]})
    assert model["pair"][0].value.tolist() == [1.0, 1.0]
    assert model["pair"][1].value.tolist() == [2.0]


def test_non_parameter_leaves_are_not_read() -> None:
    model = {"w": fx.Parameter(jnp.zeros(2)), "n": 3}
    load_values(model, {"w": np.ones(2, np.float32), "n": "ignored"})
    assert model == {"w": model["w"], "n": 3}
    assert model["w"].value.tolist() == [1.0, 1.0]


# ----- Parameters held by an optimizer (packed storage) --------------------------------


def test_optimizer_steps_from_loaded_values_as_a_fresh_run_does() -> None:
    target = values(make_model(1))
    fresh = make_model(1)
    fresh_optimizer = fx.RMSprop(fx.parameters(fresh), lr=0.01, momentum=0.9)
    loaded = make_model(2)
    loaded_optimizer = fx.RMSprop(fx.parameters(loaded), lr=0.01, momentum=0.9)
    load_values(loaded, target)  # written into the optimizer's packed buffers
    assert bits(loaded) == bits(fresh)
    for t in range(4):
        train(fresh, fresh_optimizer, t, 1)
        train(loaded, loaded_optimizer, t, 1)
        assert bits(loaded) == bits(fresh)


def test_resume_mid_run_continues_bit_identically() -> None:
    model = make_model(0)
    optimizer = fx.RMSprop(fx.parameters(model), lr=0.01, centered=True, momentum=0.5)
    train(model, optimizer, 0, 3)
    checkpoint = pickle.dumps({
        "model": jax.tree.map(np.asarray, values(model)),
        "optimizer": optimizer.state_dict(),
    })
    train(model, optimizer, 3, 3)  # the uninterrupted run

    other = make_model(5)
    other_optimizer = fx.RMSprop(fx.parameters(other), lr=0.01, centered=True, momentum=0.5)
    train(other, other_optimizer, 50, 2)  # state and buffers already in use
    saved = pickle.loads(checkpoint)
    load_values(other, saved["model"])
    other_optimizer.load_state_dict(saved["optimizer"])
    train(other, other_optimizer, 3, 3)
    assert bits(other) == bits(model)


def test_state_dict_round_trip_into_an_optimizer_held_model() -> None:
    model = make_model(0)
    before = bits(model)
    flat = state_dict(model)
    other = make_model(1)
    optimizer = fx.RMSprop(fx.parameters(other), lr=0.1)
    train(other, optimizer, 0, 1)
    load_state_dict(other, flat)
    assert bits(other) == before
    train(other, optimizer, 1, 1)  # steps on from the loaded values
    assert bits(other) != before


# ----- errors: nothing changes ---------------------------------------------------------


def _model_for(held: bool) -> tuple[dict[str, Any], Any]:
    model = make_model(0)
    optimizer = fx.RMSprop(fx.parameters(model), lr=0.01) if held else None
    return model, optimizer


def _good_values() -> dict[str, Any]:
    saved = jax.tree.map(np.asarray, values(make_model(1)))
    return saved


def _edit(change: Any) -> Any:
    saved = _good_values()
    change(saved)
    return saved


# Each bad input is last in pytree order where possible, so a loader that wrote
# as it checked would already have changed the earlier Parameters.
BAD_VALUES: dict[str, tuple[Any, type[Exception], str]] = {
    "missing-key": (lambda: _edit(lambda s: s["fc2"].pop("weight")), ValueError,
                    ("values do not match the tree's structure: only the tree has a leaf at "
                    "['fc2']['weight'] (8 leaves in the tree, 7 in the values)")),
    "extra-key": (lambda: _edit(lambda s: s["fc2"].update(zz=np.zeros(1, np.float32))),
                  ValueError, "only the values have a leaf at ['fc2']['zz']"),
    "short-list": (lambda: _edit(lambda s: s["blocks"].pop()), ValueError,
                   "the tree has a leaf at ['blocks'][1]['scale']"),
    "renamed": (lambda: _edit(lambda s: s["fc2"].update(w=s["fc2"].pop("weight"))),
                ValueError, "the values have ['fc2']['w'] in its place"),
    "not-a-tree": (lambda: np.zeros(3), ValueError, "values do not match"),
    "shape": (lambda: _edit(lambda s: s["fc2"].update(weight=np.zeros((4, 1), np.float32))),
              ValueError, ("['fc2']['weight']: expected shape (1, 4) and dtype float32, got "
                          "shape (4, 1) and dtype float32")),
    "dtype": (lambda: _edit(lambda s: s["fc2"].update(weight=np.zeros((1, 4)))), ValueError,
              ("['fc2']['weight']: expected shape (1, 4) and dtype float32, got shape (1, 4) "
              "and dtype float64")),
    "scalar-shape": (lambda: _edit(lambda s: s["blocks"][1].update(scale=np.zeros(1, np.float32))),
                     ValueError, "['blocks'][1]['scale']: expected shape ()"),
    "python-float": (lambda: _edit(lambda s: s["fc2"].update(bias=[0.5])), ValueError,
                     "the values have ['fc2']['bias'][0] in its place"),
    "string": (lambda: _edit(lambda s: s["fc2"].update(bias="0.5")), TypeError,
               "['fc2']['bias'] is a str; expected a NumPy or JAX array"),
    "parameter": (lambda: _edit(lambda s: s["fc2"].update(bias=fx.Parameter(np.zeros(1)))),
                  TypeError, "pass values(tree) rather than the tree"),
}


@pytest.mark.parametrize("held", [False, True], ids=["plain", "held-by-optimizer"])
@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_values_raise_and_change_nothing(case: str, held: bool) -> None:
    make_bad, error, message = BAD_VALUES[case]
    model, _ = _model_for(held)
    before = bits(model)
    with pytest.raises(error) as info:
        load_values(model, make_bad())
    assert message in str(info.value)
    assert bits(model) == before


def test_torch_tensors_load_as_arrays() -> None:
    """A torch module's state dict, or ours back from torch.load, loads as it is."""
    torch = pytest.importorskip("torch", reason="checked against real torch modules (pip install 'lucid_fx[test]')")
    model = {"w": fx.Parameter(jnp.zeros(2)), "h": fx.Parameter(jnp.zeros((), jnp.bfloat16))}
    load_values(model, {"w": torch.ones(2), "h": torch.tensor(0.5, dtype=torch.bfloat16)})
    assert model["w"].value.tolist() == [1.0, 1.0] and float(model["h"].value) == 0.5
    load_state_dict(model, {"w": torch.full((2,), 2.0), "h": torch.tensor(1.5).bfloat16()})
    assert model["w"].value.tolist() == [2.0, 2.0] and float(model["h"].value) == 1.5
    with pytest.raises(ValueError, match=r"'w': expected shape \(2,\) and dtype float32, got "
                                         r"shape \(2,\) and dtype float64"):
        load_state_dict(model, {"w": torch.zeros(2, dtype=torch.float64),
                                "h": torch.zeros((), dtype=torch.bfloat16)})


def test_state_dict_goes_through_torch_save_and_the_default_torch_load(tmp_path: Any) -> None:
    """torch.load's default (weights_only=True) refuses NumPy objects: our dict's arrays
    are written as tensors by torch.save, and come back bit for bit."""
    torch = pytest.importorskip("torch", reason="torch.save and torch.load are torch's (pip install 'lucid_fx[test]')")
    model = make_model(0)
    model["half"] = fx.Parameter(jnp.full((), 1.5, jnp.bfloat16))
    flat = state_dict(model)
    torch.save(flat, tmp_path / "weights.pt")
    loaded = torch.load(tmp_path / "weights.pt")  # the default: weights_only=True
    assert all(isinstance(v, torch.Tensor) for v in loaded.values())
    fresh = make_model(1)
    fresh["half"] = fx.Parameter(jnp.zeros((), jnp.bfloat16))
    load_state_dict(fresh, loaded)
    assert state_dict(fresh).keys() == flat.keys()
    for name, value in state_dict(fresh).items():
        assert value.shape == flat[name].shape and value.tobytes() == flat[name].tobytes(), name


def _flat_edit(change: Any) -> dict[str, Any]:
    flat = state_dict(make_model(1))
    change(flat)
    return flat


BAD_STATE_DICTS: dict[str, tuple[Any, type[Exception], str]] = {
    "missing": (lambda: _flat_edit(lambda s: s.pop("fc2.weight")), ValueError,
                "missing ['fc2.weight'], unexpected []"),
    "unexpected": (lambda: _flat_edit(lambda s: s.update({"fc3.weight": np.zeros(1)})),
                   ValueError, "missing [], unexpected ['fc3.weight']"),
    "both": (lambda: _flat_edit(lambda s: s.update({"fc2.w": s.pop("fc2.weight")})),
             ValueError, "missing ['fc2.weight'], unexpected ['fc2.w']"),
    "shape": (lambda: _flat_edit(lambda s: s.update({"fc2.weight": np.zeros((4, 1), np.float32)})),
              ValueError, ("'fc2.weight': expected shape (1, 4) and dtype float32, got shape "
                          "(4, 1) and dtype float32")),
    "dtype": (lambda: _flat_edit(lambda s: s.update({"fc2.weight": np.zeros((1, 4), np.float16)})),
              ValueError, "got shape (1, 4) and dtype float16"),
    "not-an-array": (lambda: _flat_edit(lambda s: s.update({"fc2.weight": [[0.0] * 4]})),
                     TypeError, "'fc2.weight' is a list"),
    "not-a-mapping": (lambda: list(state_dict(make_model(1)).items()), TypeError,
                      "state_dict must be a mapping"),
}


@pytest.mark.parametrize("held", [False, True], ids=["plain", "held-by-optimizer"])
@pytest.mark.parametrize("case", list(BAD_STATE_DICTS))
def test_bad_state_dicts_raise_and_change_nothing(case: str, held: bool) -> None:
    make_bad, error, message = BAD_STATE_DICTS[case]
    model, _ = _model_for(held)
    before = bits(model)
    with pytest.raises(error) as info:
        load_state_dict(model, make_bad())
    assert message in str(info.value)
    assert bits(model) == before


def test_names_that_collide_are_refused() -> None:
    model = {"a.b": fx.Parameter(jnp.zeros(1)), "a": {"b": fx.Parameter(jnp.zeros(1))}}
    with pytest.raises(ValueError, match="both named 'a.b'"):
        state_dict(model)
    before = bits(model)
    with pytest.raises(ValueError, match="both named 'a.b'"):
        load_state_dict(model, {"a.b": np.ones(1, np.float32)})
    assert bits(model) == before


def test_tied_parameter_is_listed_under_each_name_and_needs_equal_arrays() -> None:
    shared = fx.Parameter(jnp.zeros(2))
    model = {"decoder": shared, "encoder": shared, "other": fx.Parameter(jnp.zeros(1))}
    assert sorted(state_dict(model)) == ["decoder", "encoder", "other"]
    ones = np.ones(2, np.float32)
    load_state_dict(model, {"decoder": ones, "encoder": ones.copy(), "other": np.ones(1, np.float32)})
    assert shared.value.tolist() == [1.0, 1.0]
    before = bits(model)
    bad = {"decoder": ones * 2, "encoder": ones * 3, "other": np.zeros(1, np.float32)}
    with pytest.raises(ValueError, match=r"'decoder' and 'encoder' are the same Parameter"):
        load_state_dict(model, bad)
    with pytest.raises(ValueError, match=r"\['decoder'\] and \['encoder'\] are the same"):
        load_values(model, bad)
    assert bits(model) == before
    load_values(model, values(model))  # a tied tree's own values load


# ----- names as torch writes them ------------------------------------------------------


def test_state_dict_names_and_host_copies() -> None:
    model = make_model(0)
    flat = state_dict(model)
    assert list(flat) == ["big", "blocks.0", "blocks.1.scale", "fc1.bias", "fc1.weight",
                          "fc2.bias", "fc2.weight"]
    assert all(isinstance(a, np.ndarray) for a in flat.values())
    flat["fc1.bias"][:] = 0.0
    assert not np.array_equal(np.asarray(model["fc1"]["bias"].value), flat["fc1.bias"])


def test_torch_registration_order_pairs_by_name() -> None:
    torch = pytest.importorskip("torch", reason="checked against real torch modules (pip install 'lucid_fx[test]')")

    class Module(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # w before v: torch lists them in this order, a dict tree sorts them.
            self.w = torch.nn.Parameter(torch.full((3,), 1.0))
            self.v = torch.nn.Parameter(torch.full((3,), 2.0))

    module = Module()
    assert list(module.state_dict()) == ["w", "v"]
    sd = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    tree = {"v": fx.Parameter(jnp.zeros(3)), "w": fx.Parameter(jnp.zeros(3))}
    assert [p for p in fx.parameters(tree)] == [tree["v"], tree["w"]]  # positions disagree
    load_state_dict(tree, sd)
    assert tree["w"].value.tolist() == [1.0] * 3
    assert tree["v"].value.tolist() == [2.0] * 3
    with torch.no_grad():
        module.w.add_(10.0)  # sd's arrays share torch's memory; ours were copied
    assert tree["w"].value.tolist() == [1.0] * 3


def test_torch_sequential_and_nested_modules_load_by_name() -> None:
    torch = pytest.importorskip("torch", reason="checked against real torch modules (pip install 'lucid_fx[test]')")
    torch.manual_seed(0)
    sequential = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc2 = torch.nn.Linear(4, 4)  # registered before fc1
            self.fc1 = torch.nn.Linear(4, 4)

    net = Net()

    def zeros_like(module: Any) -> dict[str, fx.Parameter]:
        return {"weight": fx.Parameter(jnp.zeros(tuple(module.weight.shape))),
                "bias": fx.Parameter(jnp.zeros(tuple(module.bias.shape)))}

    cases = [
        (sequential, [zeros_like(sequential[0]), {}, zeros_like(sequential[2])]),
        (net, {"fc1": zeros_like(net.fc1), "fc2": zeros_like(net.fc2)}),
    ]
    for module, tree in cases:
        sd = {k: v.detach().numpy() for k, v in module.state_dict().items()}
        assert sorted(state_dict(tree)) == sorted(sd)
        load_state_dict(tree, sd)
        for name, torch_param in module.named_parameters():
            ours = dict(zip(state_dict(tree), fx.parameters(tree)))[name]
            np.testing.assert_array_equal(np.asarray(ours.value), torch_param.detach().numpy())
        # and back: torch loads ours by name
        module.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict(tree).items()})


# ----- sharded Parameters (eight host devices) -------------------------------------------


def test_loaded_values_keep_the_parameters_sharding(eight_devices: list[Any]) -> None:
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((8,), ("data",), devices=eight_devices)
    split, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    model = {
        "w": fx.Parameter(jax.device_put(jnp.arange(16.0).reshape(8, 2), split)),
        "b": fx.Parameter(jax.device_put(jnp.zeros(2), replicated)),
    }

    def assert_placed() -> None:
        assert model["w"].value.sharding.is_equivalent_to(split, 2), model["w"].value.sharding
        assert model["b"].value.sharding.is_equivalent_to(replicated, 1), model["b"].value.sharding

    assert_placed()
    optimizer = fx.RMSprop(fx.parameters(model), lr=0.1)
    saved = values(model)
    assert saved["w"].sharding.is_equivalent_to(split, 2)
    load_values(model, {"w": np.ones((8, 2), np.float32), "b": np.ones(2, np.float32)})
    assert_placed()
    assert float(model["w"].value.sum()) == 16.0
    load_values(model, saved)
    assert_placed()
    assert float(model["w"].value.sum()) == 120.0
    load_state_dict(model, state_dict(model))
    assert_placed()
    model["w"].grad, model["b"].grad = jnp.ones((8, 2)), jnp.ones(2)
    optimizer.step()
    assert_placed()
    assert float(model["w"].value.sum()) < 120.0
    # An uncommitted Parameter (default device) stays uncommitted when given committed
    # arrays, as orbax restores them, so it can still join computations with sharded ones.
    free = {"c": fx.Parameter(jnp.zeros(2))}
    load_values(free, {"c": jax.device_put(jnp.ones(2), eight_devices[0])})
    assert not free["c"].value.committed
    assert free["c"].value.tolist() == [1.0, 1.0]


# ----- property: random trees round-trip exactly ---------------------------------------

DTYPES = [np.dtype(np.float32), np.dtype(np.float16), np.dtype(jnp.bfloat16), np.dtype(np.int32)]
leaf_specs = st.tuples(st.lists(st.integers(0, 3), max_size=3).map(tuple), st.sampled_from(DTYPES))
tree_specs = st.recursive(
    leaf_specs,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.text("abcxyz_", min_size=1, max_size=4), children, max_size=3),
    ),
    max_leaves=8,
)


def _build(spec: Any, rng: np.random.Generator) -> Any:
    if isinstance(spec, list):
        return [_build(s, rng) for s in spec]
    if isinstance(spec, dict):
        return {k: _build(s, rng) for k, s in spec.items()}
    shape, dtype = spec
    if dtype.kind == "i":
        return fx.Parameter(rng.integers(-100, 100, shape).astype(dtype))
    return fx.Parameter(rng.standard_normal(shape).astype(dtype))


@given(tree_specs, st.integers(0, 2**16))
def test_random_trees_round_trip_exactly(spec: Any, seed: int) -> None:
    rng = np.random.default_rng(seed)
    source, target, flat_target = _build(spec, rng), _build(spec, rng), _build(spec, rng)
    expected = bits(source)
    # the optimizer's names (fx.named_parameters) and the weights' names agree
    assert [name for name, _ in fx.named_parameters(source)] == list(state_dict(source))
    load_values(target, values(source))
    assert bits(target) == expected
    load_state_dict(flat_target, state_dict(source))
    assert bits(flat_target) == expected
    load_values(target, jax.tree.map(np.asarray, values(_build(spec, rng))))
    load_values(target, pickle.loads(pickle.dumps(jax.tree.map(np.asarray, values(source)))))
    assert bits(target) == expected


def test_a_load_into_an_optimizers_packs_compiles_nothing() -> None:
    """Loading the weights of a hundred Parameters of a hundred shapes, held in one
    optimizer's flat buffer, writes the buffer once from the host: no update compiled
    per shape (it took 5.5 s when each slot was written on the device), and the next
    step reads the loaded values."""
    model = {f"p{i:03d}": fx.Parameter(jnp.zeros((i + 1, 3))) for i in range(100)}
    optimizer = fx.SGD(fx.parameters(model), lr=1.0)
    loaded = {k: np.full(p.shape, float(i), np.float32) for i, (k, p) in enumerate(model.items())}
    with CompileCounter() as counter:
        load_state_dict(model, loaded)
    assert counter.names == []
    # A few slots of distinct shapes and offsets (reading each shape compiles a cut).
    for k in ("p000", "p007", "p031", "p064", "p099"):
        np.testing.assert_array_equal(np.asarray(model[k].value), loaded[k])
    for p in model.values():
        p.grad = jax.device_put(np.ones(p.shape, np.float32))  # no compilation per shape
    optimizer.step()
    np.testing.assert_array_equal(np.asarray(model["p007"].value), loaded["p007"] - 1)


def test_state_dict_of_packed_parameters_compiles_nothing() -> None:
    """A hundred Parameters of a hundred shapes in one flat buffer, a stack of matrices, a
    large Parameter of its own and a tied one: each buffer crosses to the host once and is
    cut there, so the dict compiles nothing, and each entry is its Parameter's value."""
    rng = np.random.default_rng(0)
    small = {f"p{i:03d}": fx.Parameter(jax.device_put(rng.standard_normal((i + 1, 3)).astype(
        np.float32))) for i in range(100)}
    large = fx.Parameter(jax.device_put(rng.standard_normal(70_000).astype(np.float32)))
    model = {"small": small, "large": large, "tied": [small["p005"], small["p005"]]}
    fx.SGD(fx.parameters(model), lr=0.1)
    matrices = [fx.Parameter(jax.device_put(rng.standard_normal((4, 3)).astype(np.float32)))
                for _ in range(3)]
    fx.Adafactor(matrices)  # shape-aware: one stack
    model["stack"] = matrices
    with CompileCounter() as counter:
        saved = state_dict(model)
    assert counter.names == []
    expected = {dotted_name(path): np.asarray(p.value) for path, p in
                jax.tree_util.tree_flatten_with_path(model)[0]}
    assert saved.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(saved[name], value, err_msg=name)
