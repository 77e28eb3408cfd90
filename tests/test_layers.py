"""The architecture as a test: which layer may import which, no cycles, no private writes.

The tree is ``lucid_fx/_src/{core,transforms,schedules,scale,interop,stateful}`` behind
thin public modules (docs/development.md draws it). The rules, read from every
``import`` of every module (those under ``TYPE_CHECKING`` and inside functions too):

- the core imports nothing else of lucid_fx;
- the functional face (``transforms``), scale-out and the functional schedules build
  on the core alone: the functional face imports nothing of the stateful face;
- interop's torch formats build on the core alone, and know no single algorithm;
- the stateful face builds on everything below it, and only its class declarations
  (``stateful/optimizers.py``) know the algorithms;
- torch's schedulers sit on the stateful face;
- the public modules re-export ``_src``; nothing in ``_src`` imports them.

And there are no import cycles, and no module assigns another object's private
attribute (``x._name = ...`` for an ``x`` that is not ``self`` or ``cls``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lucid_fx"
ALGORITHMS = {"sgd", "adam", "rmsprop", "adagrad", "adadelta", "adamax", "nadam", "radam",
              "asgd", "rprop", "muon", "adafactor"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path) -> set[str]:
    """The lucid_fx modules ``path`` imports, wherever the import statement stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {n for n in names if n in MODULES}
    return found


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _layer(module: str) -> str:
    """The layer a module belongs to: ``core``, ``transforms``, ..., or ``public``."""
    parts = module.split(".")
    if len(parts) < 3 or parts[1] != "_src":
        return "public"
    if parts[2] == "schedules":
        return "schedulers" if parts[-1] == "lr_scheduler" else "schedules"
    return parts[2]


# layer -> the layers it may import (itself always)
ALLOWED = {
    "core": set(),
    "transforms": {"core"},
    "schedules": {"core"},
    "scale": {"core"},
    "interop": {"core"},
    "stateful": {"core", "transforms", "scale", "interop"},
    "schedulers": {"core", "schedules", "stateful"},
    "public": {"core", "transforms", "schedules", "scale", "interop", "stateful", "schedulers",
               "public"},
}


def test_every_module_has_a_layer_and_the_layers_exist() -> None:
    layers = {_layer(m) for m in MODULES}
    assert layers == set(ALLOWED), layers
    assert {"core", "transforms", "stateful"} <= {m.split(".")[2] for m in MODULES
                                                  if m.startswith("lucid_fx._src.")}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layers(module: str) -> None:
    mine = _layer(module)
    wrong = sorted(f"{target} ({_layer(target)})" for target in GRAPH[module]
                   if _layer(target) not in ALLOWED[mine] | {mine} and target != "lucid_fx")
    assert not wrong, f"{module} ({mine}) imports {wrong}"


def _algorithm(module: str) -> bool:
    return module.startswith("lucid_fx._src.transforms.") and module.rsplit(".", 1)[1] in ALGORITHMS


def test_only_the_class_declarations_know_single_algorithms() -> None:
    """Interop, the core and the stateful base are generic: none imports one algorithm."""
    knowing = sorted(m for m, targets in GRAPH.items() if any(map(_algorithm, targets))
                     and _layer(m) != "public" and not _algorithm(m))
    assert knowing == ["lucid_fx._src.stateful.optimizers"], knowing


def test_there_are_no_import_cycles() -> None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    # The package __init__ imports its submodules, which import lucid_fx._src...: that is
    # Python's own package loading, not a cycle between modules.
    cycles = [c for c in cycles if "lucid_fx" not in c]
    assert not cycles, cycles


def _private_writes(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
        for target in targets:
            for item in ast.walk(target):
                if (isinstance(item, ast.Attribute) and item.attr.startswith("_")
                        and not item.attr.startswith("__")
                        and not (isinstance(item.value, ast.Name)
                                 and item.value.id in ("self", "cls"))):
                    found.append(f"line {item.lineno}: {ast.unparse(item)}")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "setattr" and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
                and node.args[1].value.startswith("_")
                and not node.args[1].value.startswith("__")):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_writes_another_objects_private_attributes(module: str) -> None:
    assert _private_writes(MODULES[module]) == []


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """The private-write rule on a made-up module that breaks it, and the layers' table."""
    assert _layer("lucid_fx._src.core.base") == "core"
    assert _layer("lucid_fx._src.stateful.weights") == "stateful"
    assert _layer("lucid_fx._src.schedules.lr_scheduler") == "schedulers"
    assert "stateful" not in ALLOWED["transforms"] and "stateful" not in ALLOWED["interop"]
    probe = tmp_path / "probe.py"
    probe.write_text("p._value = 1\nsetattr(p, '_grad', 2)\nself._ok = 3\nx.__module__ = 'm'\n")
    assert _private_writes(probe) == ["line 1: p._value", "line 2: setattr(p, '_grad', 2)"]
