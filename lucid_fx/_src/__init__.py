"""lucid_fx's implementation, in layers; the public names are re-exported by ``lucid_fx``.

- :mod:`~lucid_fx._src.core`: the protocol and what every layer shares (checks,
  dtypes, traced scalars, the state schema, placement, flat layouts).
- :mod:`~lucid_fx._src.transforms`: the functional face, one module per algorithm.
- :mod:`~lucid_fx._src.schedules`: schedules (functional) and torch's schedulers (stateful).
- :mod:`~lucid_fx._src.scale`: scale-out (sharding, ZeRO-1, flat trees, dispatch).
- :mod:`~lucid_fx._src.interop`: torch's formats (state dicts, tensors) and model weights.
- :mod:`~lucid_fx._src.stateful`: the stateful face (Parameters, storage, the optimizer
  base, state dicts, autodiff, clipping, LBFGS, torch's classes).

``tests/test_layers.py`` holds the import rules between them.
"""
