"""A bound on how many compiled steps run ahead of Python.

JAX dispatches asynchronously: ``train_step(...)`` returns as soon as the work
is queued, so a loop that never reads a result queues every step of the run.
On one device that is harmless. With collectives (any step over a mesh of
several devices) it is not: on CPU, each device's part of a step runs on a
shared pool of threads, and a collective holds its thread until every device
has reached it. With hundreds of queued steps, the pool can fill with device
programs that wait for one another across different steps, and the run stops:
XLA's rendezvous aborts after 40 s ("Expected 8 threads to join the rendezvous,
but only 7 of them arrived on time") or, with gloo across processes, hangs.

The rule: never let more than a few steps be in flight. Waiting for the step
``max_in_flight`` calls back, while the next one is already queued, keeps the
device busy and costs no throughput; two in flight is enough to hide Python's
dispatch time behind the device's work.

Example:
  >>> import jax, jax.numpy as jnp, lucid_fx as fx
  >>> step = fx.limit_in_flight(jax.jit(lambda x: x + 1.0))
  >>> x = jnp.zeros(())
  >>> for _ in range(100):
  ...     x = step(x)   # at most two calls run ahead of this loop
  >>> float(x)
  100.0
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import jax

F = TypeVar("F", bound=Callable[..., Any])


def _check_limit(max_in_flight: Any) -> int:
    if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
        raise ValueError(f"max_in_flight must be an int >= 1, got {max_in_flight!r}")
    return max_in_flight


def wait_for(outputs: Any) -> None:
    """Blocks until every live array in ``outputs`` is computed.

    Arrays already donated to a later call (``donate_argnums``) are deleted and
    skipped; the ones that remain, such as the loss, finish with the same call.
    """
    live = [x for x in jax.tree.leaves(outputs) if isinstance(x, jax.Array) and not x.is_deleted()]
    jax.block_until_ready(live)


def limit_in_flight(step: F, max_in_flight: int = 2) -> F:
    """``step`` such that at most ``max_in_flight`` of its calls run ahead of Python.

    Wrap the jitted training step of any loop over several devices or hosts
    (a mesh, ``jax.distributed``): an unbounded queue of steps that hold
    collectives can deadlock the devices' threads. Each call queues its step,
    waits for the call ``max_in_flight`` back, and returns its result unchanged.
    The wait uses that call's outputs that were not donated since, so a step
    that donates its parameters and state should still return something of its
    own (the loss).
    """
    limit = _check_limit(max_in_flight)
    pending: deque[Any] = deque()

    @functools.wraps(step)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        outputs = step(*args, **kwargs)
        pending.append(outputs)
        while len(pending) > limit:
            wait_for(pending.popleft())
        return outputs

    return bounded  # type: ignore[return-value]
