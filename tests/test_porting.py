"""Porting a torch loop safely: names, misuse under jit, and messages that say what to do.

Each test here failed before its fix: a torch checkpoint loaded into the wrong
parameters without an error, ``@jax.jit`` around the stateful calls trained
nothing and leaked tracers, and the usual first mistakes got messages that did
not help.
"""

from __future__ import annotations

import inspect
import pickle
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lucid_fx as fx
from lucid_fx._src.stateful.optimizer import Optimizer
from lucid_fx._src.stateful.tracing import FUNCTIONAL_HINT

torch = pytest.importorskip("torch", reason="the name-pairing tests load real torch state dicts "
                                            "(pip install 'lucid_fx[test]')")

# One row per stateful optimizer: the generic tests below run for each.
OPTIMIZERS: dict[str, tuple[type[Optimizer], Any]] = {
    "RMSprop": (fx.RMSprop, fx.rmsprop),
    "SGD": (fx.SGD, fx.sgd),
}


def _model() -> dict[str, fx.Parameter]:
    # Shapes agree on purpose: a positional mix-up would load without a shape error.
    return {"w": fx.Parameter(jnp.full(3, 1.0)), "v": fx.Parameter(jnp.full(3, -2.0))}


def _loss(m: dict[str, jax.Array]) -> jax.Array:
    return jnp.sum((m["w"] - 3.0) ** 2) + 0.5 * jnp.sum(m["v"] ** 2)


def _snapshot(model: dict[str, fx.Parameter], opt: Optimizer) -> Any:
    return (
        {k: (np.asarray(p.value), None if p.grad is None else np.asarray(p.grad))
         for k, p in model.items()},
        pickle.dumps(opt.state_dict()),
    )


def _assert_same(before: Any, after: Any) -> None:
    for k in before[0]:
        for a, b in zip(before[0][k], after[0][k]):
            assert (a is None and b is None) or np.array_equal(a, b), k
    assert before[1] == after[1]


# --- fx.named_parameters ---------------------------------------------------------------


def test_named_parameters_are_torch_dotted_paths_in_pytree_order() -> None:
    w, b, h = (fx.Parameter(jnp.zeros(2)) for _ in range(3))
    tree = {"fc1": {"weight": w, "bias": b}, "blocks": [{"w": h}, 3.0], "tied": w}
    named = fx.named_parameters(tree)
    assert [n for n, _ in named] == ["blocks.0.w", "fc1.bias", "fc1.weight"]
    assert [p for _, p in named] == fx.parameters(tree)  # a tied Parameter once, first name


def test_named_parameters_of_an_attribute_tree() -> None:
    eqx = pytest.importorskip("equinox", reason="Equinox modules name fields by attribute")

    class Linear(eqx.Module):
        weight: Any
        bias: Any

    tree = Linear(fx.Parameter(jnp.zeros(2)), fx.Parameter(jnp.zeros(1)))
    assert [n for n, _ in fx.named_parameters(tree)] == ["weight", "bias"]


# --- state dicts pair by name -----------------------------------------------------------


class TorchNet(torch.nn.Module):
    """Registers w before v: torch's order, not a sorted dict's."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.full((3,), 1.0))
        self.v = torch.nn.Parameter(torch.full((3,), -2.0))


def _torch_state_dict(named: bool) -> dict[str, Any]:
    net = TorchNet()
    opt = torch.optim.RMSprop(net.named_parameters() if named else net.parameters(), lr=0.1)
    loss = ((net.w - 3.0) ** 2).sum() + 0.5 * (net.v**2).sum()
    loss.backward()
    opt.step()
    return opt.state_dict()


def test_a_named_torch_state_dict_loads_by_name_whatever_the_order() -> None:
    sd = _torch_state_dict(named=True)
    assert sd["param_groups"][0]["param_names"] == ["w", "v"]
    model = _model()
    opt = fx.RMSprop(fx.named_parameters(model), lr=0.1)
    assert opt.param_groups[0]["param_names"] == ["v", "w"]  # sorted dict keys
    opt.load_state_dict(sd)
    # torch's squared-gradient averages: w's gradient is 2(1-3) = -4, v's is -2.
    np.testing.assert_allclose(opt.state[model["w"]]["square_avg"], 0.01 * 16, rtol=1e-6)
    np.testing.assert_allclose(opt.state[model["v"]]["square_avg"], 0.01 * 4, rtol=1e-6)


def test_without_names_pairing_is_by_position_as_in_torch() -> None:
    """The pitfall the names fix: shapes agree, so w silently gets v's state."""
    model = _model()
    opt = fx.RMSprop(fx.parameters(model), lr=0.1)
    opt.load_state_dict(_torch_state_dict(named=False))
    np.testing.assert_allclose(opt.state[model["v"]]["square_avg"], 0.01 * 16, rtol=1e-6)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_fx_state_dict_carries_names_and_round_trips_across_orders(name: str) -> None:
    cls, _ = OPTIMIZERS[name]
    model = _model()
    opt = cls(list(reversed(fx.named_parameters(model))), lr=0.1)
    opt.zero_grad()
    fx.backward(_loss, model)
    opt.step()
    sd = opt.state_dict()
    assert sd["param_groups"][0]["param_names"] == ["w", "v"]
    fresh = _model()
    other = cls(fx.named_parameters(fresh), lr=0.1)
    other.load_state_dict(pickle.loads(pickle.dumps(sd)))
    for key in ("w", "v"):
        for field, value in opt.state[model[key]].items():
            np.testing.assert_array_equal(other.state[fresh[key]][field], value, err_msg=key)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_name_mismatch_lists_missing_and_unexpected_names_and_changes_nothing(name: str) -> None:
    cls, _ = OPTIMIZERS[name]
    model = _model()
    opt = cls(fx.named_parameters(model), lr=0.1)
    sd = opt.state_dict()
    sd["param_groups"][0]["param_names"] = ["u", "w"]
    opt.zero_grad()
    fx.backward(_loss, model)
    opt.step()
    before = _snapshot(model, opt)
    with pytest.raises(ValueError, match=r"missing \['v'\], unexpected \['u'\]"):
        opt.load_state_dict(sd)
    _assert_same(before, _snapshot(model, opt))


def test_a_named_dict_into_an_unnamed_optimizer_says_to_name_it() -> None:
    opt = fx.RMSprop(fx.parameters(_model()), lr=0.1)
    with pytest.raises(ValueError, match=r"create it with fx.named_parameters\(model\)"):
        opt.load_state_dict(_torch_state_dict(named=True))


def test_torch_loads_our_named_export_by_its_own_names() -> None:
    model = _model()
    opt = fx.RMSprop(fx.named_parameters(model), lr=0.1)
    opt.zero_grad()
    fx.backward(_loss, model)
    opt.step()
    exported = opt.torch_state_dict()
    assert exported["param_groups"][0]["param_names"] == ["v", "w"]
    net = TorchNet()
    torch_opt = torch.optim.RMSprop(net.named_parameters(), lr=0.1)
    # torch pairs by position; its names must then agree with ours, in its order.
    order = exported["param_groups"][0]["param_names"]
    positions = {n: i for i, n in enumerate(order)}
    exported["param_groups"][0]["param_names"] = ["w", "v"]
    exported["param_groups"][0]["params"] = [positions["w"], positions["v"]]
    torch_opt.load_state_dict(exported)
    state = torch_opt.state_dict()["state"]
    np.testing.assert_allclose(state[0]["square_avg"].numpy(), 0.01 * 16, rtol=1e-6)  # w


def test_names_in_groups_and_add_param_group() -> None:
    model = _model()
    opt = fx.RMSprop([{"params": [("w", model["w"])], "lr": 0.5}], lr=0.1)
    opt.add_param_group({"params": [("v", model["v"])]})
    assert [g["param_names"] for g in opt.param_groups] == [["w"], ["v"]]
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.1]
    with pytest.raises(ValueError, match=r"every param group gives \(name, Parameter\) pairs"):
        opt.add_param_group({"params": [fx.Parameter(jnp.zeros(1))]})
    with pytest.raises(ValueError, match=r"\['w'\] appear more than once"):
        opt.add_param_group({"params": [("w", fx.Parameter(jnp.zeros(1)))]})
    assert len(opt.param_groups) == 2


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        (lambda m: [("w", m["w"]), m["v"]], ValueError, r"mixes \(name, Parameter\) pairs"),
        (lambda m: [("w", m["w"]), ("w", m["v"])], ValueError, r"\['w'\] appear more than once"),
        (lambda m: [{"params": [m["w"]], "param_names": ["w"]}], ValueError,
         r"pass 'params': fx.named_parameters\(model\)"),
    ],
)
def test_bad_names_are_rejected(params: Any, error: type[Exception], match: str) -> None:
    model = _model()
    with pytest.raises(error, match=match):
        fx.RMSprop(params(model))
    assert all(p.storage is None for p in model.values())  # nothing moved into packed storage


# --- stateful calls under a JAX transformation -------------------------------------------


def _under(transform: str, call: Any) -> None:
    x = jnp.ones(2)
    if transform == "jit":
        jax.jit(lambda x: (call(), x)[1])(x)
    elif transform == "grad":
        jax.grad(lambda x: (call(), jnp.sum(x))[1])(x)
    else:
        jax.vmap(lambda x: (call(), x)[1])(x)


CALLS = {
    "zero_grad": lambda opt, model: opt.zero_grad(),
    "backward": lambda opt, model: fx.backward(_loss, model),
    "step": lambda opt, model: opt.step(),
    "step(closure)": lambda opt, model: opt.step(lambda: fx.backward(_loss, model)),
    "load_state_dict": lambda opt, model: opt.load_state_dict(opt.state_dict()),
    "add_param_group": lambda opt, model: opt.add_param_group({"params": [fx.Parameter(1.0)]}),
    "value =": lambda opt, model: setattr(model["w"], "value", jnp.zeros(3)),
    "grad =": lambda opt, model: setattr(model["w"], "grad", jnp.zeros(3)),
    "construct": lambda opt, model: fx.RMSprop([fx.Parameter(jnp.zeros(2))]),
    "clip_grad_norm_": lambda opt, model: fx.clip_grad_norm_(fx.parameters(model), 0.1),
    "clip_grad_value_": lambda opt, model: fx.clip_grad_value_(fx.parameters(model), 0.1),
}


@pytest.mark.parametrize("transform", ["jit", "grad", "vmap"])
@pytest.mark.parametrize("call", CALLS)
def test_stateful_calls_under_a_transformation_raise_and_change_nothing(
    transform: str, call: str
) -> None:
    model = _model()
    opt = fx.RMSprop(fx.parameters(model), lr=0.1, momentum=0.9)
    fx.backward(_loss, model)
    opt.step()
    fx.backward(_loss, model)  # a pending gradient, for zero_grad to (not) clear
    before = _snapshot(model, opt)
    with pytest.raises(RuntimeError, match="under a JAX transformation") as info:
        _under(transform, lambda: CALLS[call](opt, model))
    assert FUNCTIONAL_HINT in str(info.value)
    _assert_same(before, _snapshot(model, opt))
    opt.step()  # and the optimizer still works eagerly, with no leaked tracer
    assert np.all(np.isfinite(np.asarray(model["w"].value)))


def test_a_leaked_tracer_cannot_be_stored() -> None:
    p = fx.Parameter(jnp.zeros(2))
    leaked = []
    jax.jit(lambda x: (leaked.append(x), x)[1])(jnp.ones(2))
    for store in (lambda: setattr(p, "value", leaked[0]), lambda: setattr(p, "grad", leaked[0]),
                  lambda: fx.Parameter(leaked[0])):
        with pytest.raises(RuntimeError, match="traced values"):
            store()
    np.testing.assert_array_equal(p.value, np.zeros(2))
    assert p.grad is None


def test_the_functional_face_is_what_jit_takes() -> None:
    """What the error recommends does train under jit."""
    tx = fx.rmsprop(lr=0.1)
    params = {"w": jnp.full(3, 1.0), "v": jnp.full(3, -2.0)}
    state = tx.init(params)

    @jax.jit
    def step(params: Any, state: Any) -> Any:
        loss, grads = jax.value_and_grad(_loss)(params)
        updates, state = tx.update(grads, state, params)
        return fx.apply_updates(params, updates), state, loss

    losses = []
    for _ in range(20):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    assert losses[-1] < losses[0] / 2


# --- messages for the usual first mistakes ---------------------------------------------


def test_a_dict_of_parameters_says_pass_fx_parameters() -> None:
    model = _model()
    with pytest.raises(TypeError, match=r"got a dict as params .*pass fx.parameters\(model\)"):
        fx.RMSprop(model)
    with pytest.raises(TypeError, match=r"wrap the group in a list: \[group\]"):
        fx.RMSprop({"params": fx.parameters(model)})
    assert all(p.storage is None for p in model.values())


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("kwarg", ["Lr", "momentun", "weight_decay_"])
def test_an_unknown_keyword_names_the_class_and_the_valid_keys(name: str, kwarg: str) -> None:
    cls, factory = OPTIMIZERS[name]
    with pytest.raises(TypeError, match=rf"{name} got unknown keyword argument\(s\) \['{kwarg}'\]"
                       ) as info:
        cls(fx.parameters(_model()), **{kwarg: 0.9})
    for valid in inspect.signature(factory).parameters:
        assert valid in str(info.value)


def test_too_many_positional_arguments_name_the_class() -> None:
    # torch's RMSprop takes ten arguments after params, all positional; an eleventh is wrong.
    with pytest.raises(TypeError, match=r"RMSprop was called wrongly \(too many positional"):
        fx.RMSprop(fx.parameters(_model()), 0.1, 0.9, 1e-6, 0.01, 0.5, True, False, None,
                   False, False, True)


@pytest.mark.parametrize("attribute", ["value", "grad"])
def test_reading_value_inside_the_loss_says_the_loss_gets_plain_arrays(attribute: str) -> None:
    model = _model()
    with pytest.raises(AttributeError, match=rf"write m\['w'\], not m\['w'\].{attribute}"):
        fx.backward(lambda m: jnp.sum(getattr(m["w"], attribute)), model)
    assert model["w"].grad is None


def test_other_attribute_errors_in_the_loss_are_left_alone() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        fx.backward(lambda m: m["w"].no_such_thing, _model())

