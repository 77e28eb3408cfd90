"""What each field of a transform's state is: the schema the stateful face reads.

A transform's state is a NamedTuple; its fields are torch's state-dict keys. The
stateful :class:`~lucid_fx._src.stateful.optimizer.Optimizer` packs many parameters into one
buffer, so it must know, for every field, how the field relates to a parameter:

- ``buffer`` — shaped like the parameter (``exp_avg``): packed like the parameter.
- ``count`` / ``scalar`` — one number per parameter (Adam's ``step``, NAdam's
  ``mu_product``): a vector with one entry per packed parameter, handed to the
  math element by element, so that parameters which joined later or skipped steps
  keep their own value (torch's per-parameter state).
- ``counter`` — one number for the whole state (``skipped``): not per parameter,
  not a torch key.

Each field also carries its dtype rule, whether some configuration leaves it out
(``optional``; it is ``None`` there) and the hyper-parameter whose zero removes it
(``absent_when_zero``, momentum's buffer), which the optimizer compiles out while
the value is 0. The transform declares this once, next to its state class:

Example:
  >>> from typing import NamedTuple
  >>> import jax
  >>> from lucid_fx._src.core import schema
  >>> @schema.declare(step=schema.count(), trace=schema.buffer())
  ... class TraceState(NamedTuple):
  ...     step: jax.Array
  ...     trace: jax.Array
  >>> schema.fields_of(TraceState)["trace"].kind
  'buffer'
  >>> schema.fields_of(TraceState)["step"].dtype_for("float32", None)
  dtype('int32')
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Literal, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from lucid_fx._src.transforms.numerics import buffer_dtype, real_dtype

Kind = Literal["buffer", "per_parameter", "counter"]
DtypeRule = Callable[[Any, Any], Any]  # (parameter dtype, state_dtype or None) -> dtype
StateType = TypeVar("StateType", bound=type)

_ATTRIBUTE = "__lucid_fx_schema__"


class Field(NamedTuple):
    """One state field: its kind, dtype rule and presence.

    Attributes:
      kind: ``"buffer"``, ``"per_parameter"`` or ``"counter"`` (see the module).
      dtype: ``(parameter dtype, state_dtype) -> dtype`` of the field.
      optional: some configuration leaves the field out (``None`` in the state).
      absent_when_zero: the hyper-parameter whose value 0 removes the field.
      torch_key: the field is a key of torch's per-parameter state dict.
    """

    kind: Kind
    dtype: DtypeRule
    optional: bool = False
    absent_when_zero: str | None = None
    torch_key: bool = True

    def dtype_for(self, param_dtype: Any, state_dtype: Any | None) -> np.dtype:
        """This field's dtype for a parameter of ``param_dtype`` under ``state_dtype``."""
        return np.dtype(self.dtype(np.dtype(param_dtype), state_dtype))

    def tree_dtype(self, params: Any, state_dtype: Any | None) -> np.dtype:
        """The dtype of this field when one value serves a whole tree (the functional
        face's step or ``mu_product``): the rule over every leaf, the widest result."""
        dtypes = [self.dtype_for(jnp.result_type(p), state_dtype) for p in jax.tree.leaves(params)]
        return np.dtype(jnp.result_type(*dtypes)) if dtypes else self.dtype_for(
            np.float32, state_dtype)


def buffer(*, optional: bool = False, real: bool = False,
           absent_when_zero: str | None = None) -> Field:
    """A parameter-shaped buffer in ``state_dtype`` (else the parameter's dtype).

    ``real`` gives a complex parameter a real buffer (an average of ``|g|²``).
    """
    def rule(param_dtype: Any, state_dtype: Any) -> Any:
        return buffer_dtype(param_dtype, state_dtype, real=real)

    return Field("buffer", rule, optional or absent_when_zero is not None, absent_when_zero)


def count(*, torch_key: bool = True) -> Field:
    """The int32 step count of a parameter: updates applied to it (torch's ``step``).

    ``torch_key=False`` where torch keeps no count (SGD).
    """
    return Field("per_parameter", lambda param_dtype, state_dtype: np.dtype(np.int32),
                 torch_key=torch_key)


def scalar(*, optional: bool = False) -> Field:
    """A real number per parameter (NAdam's ``mu_product``): the parameter's real dtype,
    at least float32 (torch keeps these in float32 for bfloat16 parameters too)."""
    return Field("per_parameter", lambda param_dtype, state_dtype: np.promote_types(
        real_dtype(param_dtype), np.float32), optional)


def counter() -> Field:
    """An int32 count for the whole state (steps skipped); optional, not a torch key."""
    return Field("counter", lambda param_dtype, state_dtype: np.dtype(np.int32), True,
                 torch_key=False)


def declare(**fields: Field) -> Callable[[StateType], StateType]:
    """Class decorator: attaches ``fields`` (one per NamedTuple field) as the state's schema.

    Raises ``TypeError`` when the names do not match the class's fields exactly.
    """
    def attach(state_type: StateType) -> StateType:
        names = getattr(state_type, "_fields", None)
        if names is None or tuple(fields) != tuple(names):
            raise TypeError(
                f"the schema of {state_type.__name__} must list its fields in order: "
                f"{names}, got {tuple(fields)}"
            )
        setattr(state_type, _ATTRIBUTE, MappingProxyType(dict(fields)))
        return state_type

    return attach


def fields_of(state_type: type) -> Mapping[str, Field]:
    """The declared schema of ``state_type``; ``TypeError`` saying how to declare one."""
    schema = getattr(state_type, _ATTRIBUTE, None)
    if schema is None:
        raise TypeError(
            f"{state_type.__name__} has no state schema, which the stateful Optimizer needs "
            f"to pack it: decorate it with @lucid_fx._src.core.schema.declare(...), one field "
            f"each (buffer(), count(), scalar(), counter())"
        )
    return schema

