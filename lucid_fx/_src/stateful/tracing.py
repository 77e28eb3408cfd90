"""Stateful calls refuse to run under a JAX transformation.

``zero_grad()``, ``fx.backward``, ``step()`` and writes to a Parameter change
Python objects in place. Under ``jax.jit`` such a call runs once, while
tracing, and what it stores are tracers: the compiled function then repeats
the same loss on every call and the Parameters hold values that fail later
with ``UnexpectedTracerError``. So every stateful entry point checks first
and raises ``RuntimeError``, before anything changes.

Example:
  >>> import jax, jax.numpy as jnp, lucid_fx as fx
  >>> p = fx.Parameter(jnp.zeros(2))
  >>> @jax.jit
  ... def bad(x):
  ...     p.value = x
  ...     return x
  >>> bad(jnp.ones(2))
  Traceback (most recent call last):
  ...
  RuntimeError: Parameter.value = ... was called under a JAX transformation ...
"""

from __future__ import annotations

from typing import Any

import jax

try:
    # Public in jax.core until 0.4.3x, private since; the fallback below is public.
    from jax._src.core import trace_state_clean as _trace_state_clean
except ImportError:  # pragma: no cover - other jax versions
    import jax.numpy as jnp

    def _trace_state_clean() -> bool:
        return not isinstance(jnp.zeros(()), jax.core.Tracer)


_Tracer = jax.core.Tracer

FUNCTIONAL_HINT = (
    "stateful calls change Parameters in place, which a traced function cannot do "
    "(it would run once, while tracing, and store tracers). Call it outside the "
    "transformation, or use the functional face inside jit: "
    "tx = fx.rmsprop(...); state = tx.init(params); "
    "updates, state = tx.update(grads, state, params); params = fx.apply_updates(params, updates)"
)


def check_eager(what: str, *values: Any) -> None:
    """Raises ``RuntimeError`` if called under a JAX transformation or handed a tracer.

    ``what`` names the call in the message (``"RMSprop.step()"``); ``values``
    are arrays about to be stored, checked for tracers that escaped a trace.
    """
    # A loop rather than any(generator): `p.grad = g` runs this once per Parameter.
    if _trace_state_clean():
        for v in values:
            if isinstance(v, _Tracer):
                break
        else:
            return
    raise RuntimeError(f"{what} was called under a JAX transformation (jax.jit, grad, "
                       f"vmap, ...) or given one of its traced values: {FUNCTIONAL_HINT}")
