"""Hyper-parameters at the jit boundary: static values shape the trace, numbers feed it.

A flag, a dtype or ``None`` decides which code is traced, so it is part of the
compile key. A number is passed as a device scalar instead, so writing a new
``lr`` into ``param_groups`` (or a new ``max_norm``) takes effect at the next
call without recompiling.

Example:
  >>> from lucid_fx._src.core.scalars import as_traced, is_static
  >>> is_static(True), is_static(0.1)
  (True, False)
  >>> is_static(None), as_traced(0.1).shape
  (True, ())
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_static(value: Any) -> bool:
    """Values that shape the compiled code (flags, dtypes, strings, None, and a pair holding
    one: Adafactor's ``eps=(None, 1e-3)``) rather than feed it."""
    if isinstance(value, (tuple, list)):
        return any(is_static(v) for v in value)
    return value is None or isinstance(value, (bool, np.bool_, str, np.dtype, type))


def as_traced(value: Any) -> Any:
    """``value`` as a 0-d device array of Python's float type; a pair (betas) as a pair of them.

    float64 when x64 is on, so float64 parameters see their exact
    hyper-parameters. Python numbers reuse one cached device scalar per
    distinct value instead of a host-to-device transfer per call.
    """
    if isinstance(value, (tuple, list)):
        return tuple(as_traced(v) for v in value)
    dtype = jnp.result_type(float)
    if isinstance(value, (int, float, np.number)):
        return _cached(value, type(value).__name__, dtype)
    return jnp.asarray(value, dtype=dtype)


@lru_cache(maxsize=4096)
def _cached(value: Any, kind: str, dtype: np.dtype) -> jax.Array:
    del kind  # part of the key only: 1 and 1.0 hash alike
    return jnp.asarray(value, dtype=dtype)


@jax.tree_util.register_pytree_node_class
class PreciseScalar:
    """A real number carried into a trace at double precision, as ``hi + lo``.

    With x64 off a traced hyper-parameter is float32, and the constants that
    torch forms in double precision lose digits when formed from it: in
    float32, β₂ = 0.999 is 0.99900001, so ``1 - β₂`` is 1.3e-5 off. A
    PreciseScalar keeps the rounding error of its float32 value in a second
    float32 (``lo``), and sums with numbers are exact (Knuth's two-sum, which
    has no multiplication for XLA to fuse). So ``hyper(1 - beta, float32)``
    on a PreciseScalar rounds once, from a double-precision value, as it
    does for a Python float. Products keep the working precision: they are
    not cancelled afterwards (``1 - η·λ`` stays within an ulp of 1).

    The kernels need no change: they form derived scalars with ``+``, ``-``
    and ``*`` and cast with :func:`lucid_fx._src.core.dtypes.cast_scalar`, which
    reads the pair. The stateful optimizers pass their numeric hyper-parameters so.

    What each operation keeps, with a number or another PreciseScalar (any other
    operand, an array even 0-d, gets an ordinary array of the sum ``hi + lo``):

    =====================================  ==========================================
    ``x + y``, ``x - y``, ``-x``           exact: a PreciseScalar (two-sum)
    ``x * y``                              a PreciseScalar at the working precision:
                                           ``hi·hi`` is rounded (no two-product), the
                                           cross terms kept in ``lo``
    ``x / y``, ``x ** y``, comparisons     ``hi + lo`` in jax's float type (float32
                                           with x64 off): as a traced float would
    =====================================  ==========================================

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> beta2 = PreciseScalar.of(0.999)
      >>> one_minus = jax.jit(lambda b: (1 - b).value(jnp.float32))(beta2)
      >>> bool(one_minus == np.float32(1 - 0.999)), bool(one_minus == 1 - np.float32(0.999))
      (True, False)
    """

    __slots__ = ("pair",)

    def __init__(self, pair: Any) -> None:
        self.pair = pair  # [hi, lo]: an array of shape (2,)

    @classmethod
    def of(cls, value: Any) -> PreciseScalar:
        """``value`` (a number or a 0-d array) split into a cached device pair."""
        if isinstance(value, PreciseScalar):
            return value
        dtype = jnp.result_type(float)
        if not isinstance(value, jax.core.Tracer) and np.ndim(value) == 0:
            # a concrete number (a 0-d array too): split on the host, no device op to compile
            number = value if isinstance(value, (int, float, np.number)) else np.asarray(value).item()
            return cls(_cached_pair(number, type(number).__name__, dtype))
        array = jnp.asarray(value, dtype=dtype)
        return cls(jnp.stack([array, jnp.zeros_like(array)]))

    @classmethod
    def spec(cls) -> PreciseScalar:
        """The abstract value of a PreciseScalar (for ``jax.eval_shape``)."""
        return cls(jax.ShapeDtypeStruct((2,), jnp.result_type(float)))

    def tree_flatten(self) -> tuple[tuple[Any], None]:
        return (self.pair,), None

    @classmethod
    def tree_unflatten(cls, aux: None, children: tuple[Any]) -> PreciseScalar:
        return cls(children[0])

    @property
    def hi(self) -> Any:
        return self.pair[0]

    @property
    def lo(self) -> Any:
        return self.pair[1]

    def value(self, dtype: Any) -> Any:
        """The number rounded once to ``dtype``."""
        return (self.hi + self.lo).astype(dtype)

    def __jax_array__(self) -> Any:
        """The number as one array of jax's float type, for any other use (``jnp.full_like``)."""
        return self.hi + self.lo

    @staticmethod
    def _is_exact(other: Any) -> bool:
        """Operands that keep the double precision: numbers and PreciseScalars.

        Anything else (an array, even 0-d) gives an ordinary array: a transform
        that does not know PreciseScalar sees an ordinary float then.
        """
        return isinstance(other, (PreciseScalar, int, float, np.number)) and not isinstance(
            other, bool)

    def _parts(self, other: Any) -> tuple[Any, Any]:
        if isinstance(other, PreciseScalar):
            return other.hi, other.lo
        hi = np.asarray(other, self.pair.dtype)
        return hi, np.asarray(other - float(hi), self.pair.dtype)

    def __add__(self, other: Any) -> Any:
        if not self._is_exact(other):
            return self.__jax_array__() + other
        b_hi, b_lo = self._parts(other)
        s = self.hi + b_hi
        v = s - self.hi
        err = (self.hi - (s - v)) + (b_hi - v) + (self.lo + b_lo)  # two-sum, then the tails
        hi = s + err
        return PreciseScalar(jnp.stack([hi, err - (hi - s)]))

    def __radd__(self, other: Any) -> Any:
        return self + other if self._is_exact(other) else other + self.__jax_array__()

    def __neg__(self) -> PreciseScalar:
        return PreciseScalar(-self.pair)

    def __sub__(self, other: Any) -> Any:
        return self + (-other) if self._is_exact(other) else self.__jax_array__() - other

    def __rsub__(self, other: Any) -> Any:
        return (-self) + other if self._is_exact(other) else other - self.__jax_array__()

    def __mul__(self, other: Any) -> Any:
        if not self._is_exact(other):
            return self.__jax_array__() * other
        b_hi, b_lo = self._parts(other)
        hi = self.hi * b_hi
        return PreciseScalar(jnp.stack([hi, self.hi * b_lo + self.lo * b_hi]))

    def __rmul__(self, other: Any) -> Any:
        return self * other if self._is_exact(other) else other * self.__jax_array__()

    def __truediv__(self, other: Any) -> Any:
        return self.__jax_array__() / other

    def __rtruediv__(self, other: Any) -> Any:
        return other / self.__jax_array__()

    def __pow__(self, other: Any) -> Any:
        return self.__jax_array__() ** other

    def __rpow__(self, other: Any) -> Any:
        return other ** self.__jax_array__()

    def __lt__(self, other: Any) -> Any:
        return self.__jax_array__() < other

    def __le__(self, other: Any) -> Any:
        return self.__jax_array__() <= other

    def __gt__(self, other: Any) -> Any:
        return self.__jax_array__() > other

    def __ge__(self, other: Any) -> Any:
        return self.__jax_array__() >= other

    @property
    def dtype(self) -> Any:
        return self.pair.dtype

    shape = ()
    ndim = 0

    def __repr__(self) -> str:
        return f"PreciseScalar({self.pair!r})"


def as_precise(value: Any) -> Any:
    """``value`` as a :class:`PreciseScalar`; a pair (betas) as a tuple of them."""
    if isinstance(value, (tuple, list)):
        return tuple(as_precise(v) for v in value)
    return PreciseScalar.of(value)


@lru_cache(maxsize=4096)
def _cached_pair(value: Any, kind: str, dtype: np.dtype) -> jax.Array:
    del kind  # part of the key only: 1 and 1.0 hash alike
    hi = np.asarray(value, dtype)
    lo = float(value) - float(hi) if np.isfinite(hi) else 0.0  # inf - inf would be NaN
    return jnp.asarray(np.array([hi, np.asarray(lo, dtype)]))
