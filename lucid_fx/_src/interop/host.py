"""``HostArray``: the NumPy arrays of lucid_fx's state dicts, which ``torch.save`` writes as tensors.

A torch user checkpoints with ``torch.save`` and reads back with ``torch.load``,
whose default (``weights_only=True``, since torch 2.6) refuses every NumPy
object: an array or a NumPy scalar is an "unsupported global". So the arrays
in the state dicts of lucid_fx's optimizers, schedulers and weights are
:class:`HostArray`\\ s: NumPy arrays in every respect, except that when
``torch.save`` pickles one it writes a CPU tensor of the same shape, dtype and
bits. ``torch.load``'s default then reads the checkpoint, and lucid_fx's
``load_state_dict`` methods take the tensors back as arrays, bit for bit. Any
other pickling (``pickle``, ``np.save``, orbax) writes a plain NumPy array, and
needs no torch to read.

Example:
  >>> import pickle, numpy as np
  >>> from lucid_fx._src.interop.host import host_array
  >>> a = host_array(np.arange(3, dtype=np.float32))
  >>> a, type(pickle.loads(pickle.dumps(a))).__name__
  (array([0., 1., 2.], dtype=float32), 'ndarray')
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

import jax.numpy as jnp
import numpy as np


class HostArray(np.ndarray):
    """A NumPy array that ``torch.save`` writes as a CPU tensor (the module says why)."""

    def __reduce_ex__(self, protocol: Any) -> Any:
        plain = self.view(np.ndarray)
        if _inside_torch_save():
            return torch_tensor(plain).__reduce_ex__(protocol)
        return plain.__reduce_ex__(protocol)

    def __repr__(self) -> str:
        return repr(self.view(np.ndarray))


def host_array(value: Any) -> HostArray:
    """``value`` (a NumPy array or scalar, a number) as a :class:`HostArray`, 0-d kept 0-d.

    A view where ``value`` is already a NumPy array: no copy.
    """
    return np.asarray(value).view(HostArray)


def torch_tensor(array: Any) -> Any:
    """A CPU torch tensor holding a copy of ``array``, its shape (0-d too) and dtype kept
    (bfloat16 included, which NumPy lacks: its bits go through int16). Needs torch."""
    import torch

    array = np.array(array, order="C")  # a copy; np.ascontiguousarray would make 0-d 1-d
    if array.dtype == jnp.bfloat16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def is_torch_tensor(x: Any) -> bool:
    """Whether ``x`` is a torch tensor, told without importing torch."""
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def from_torch(value: Any) -> Any:
    """A NumPy copy of a torch tensor (bfloat16 included, through ml_dtypes' bfloat16);
    any other value as given."""
    if not is_torch_tensor(value):
        return value
    import torch

    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:
        return value.view(torch.int16).numpy().view(jnp.bfloat16).copy()
    return value.numpy().copy()


def _inside_torch_save() -> bool:
    """Whether the pickler calling ``__reduce_ex__`` is ``torch.save``'s.

    A reducer is not told which pickler calls it; ``torch.save`` runs its pickler
    from ``torch.serialization`` (the pickler itself is C, so that module's frame
    is the first Python frame above this one's caller).
    """
    frame: FrameType | None = sys._getframe(2)
    for _ in range(4):
        if frame is None:
            return False
        if frame.f_globals.get("__name__") == "torch.serialization":
            return True
        frame = frame.f_back
    return False
