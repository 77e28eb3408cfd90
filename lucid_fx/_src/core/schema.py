"""What a transform's state is: the schema the stateful face and torch's state dicts read.

A transform's state is a NamedTuple whose field names are torch's state-dict
keys. The stateful optimizer stores the states of many parameters together (a
packed buffer, a stack of same-shape arrays), cuts one parameter's entry out of
them for a state dict and puts it back, and converts torch's dicts: for that it
must know, field by field, how the field relates to a parameter. The transform
says so once, next to its state class, with :func:`declare`:

- :func:`buffer` — an array shaped like the parameter (``exp_avg``);
- :func:`array` — an array of another shape, derived from the parameter's
  (Adafactor's row and column factors), or absent for some shapes;
- :func:`step_count` and :func:`scalar` — one number per parameter (Adam's
  ``step``, NAdam's ``mu_product``), so that parameters that joined later or
  skipped steps keep their own (torch's per-parameter state);
- :func:`skipped_count` — one number for the whole state (``skipped``), not a torch key.

A field also states what decides it exists (``switch``: the argument whose
``False`` or zero removes it, momentum's buffer), what no run makes negative
(``never_negative``, for checking loaded dicts), and how it relates to torch's
(``torch_key``, ``torch_factor``). And :func:`declare` states whether the
transform's math is element-wise: only then may the stateful face flatten
Parameters into one buffer. A factory names its state with :func:`makes`.

Example:
  >>> from typing import NamedTuple
  >>> import jax
  >>> from lucid_fx._src.core import schema
  >>> @schema.declare(step=schema.step_count(), trace=schema.buffer(switch="decay"))
  ... class TraceState(NamedTuple):
  ...     step: jax.Array
  ...     trace: jax.Array | None
  >>> declared = schema.of_state(TraceState)
  >>> declared.fields["trace"].kind, declared.switches, declared.elementwise
  ('array', {'trace': 'decay'}, True)
  >>> declared.fields["step"].dtype_for("float32", None)
  dtype('int32')
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Literal, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from lucid_fx._src.core.dtypes import buffer_dtype, real_dtype
from lucid_fx._src.core.validation import is_static_zero

Kind = Literal["array", "scalar", "whole"]
DtypeRule = Callable[[Any, Any], Any]  # (parameter dtype, state_dtype or None) -> dtype
ShapeRule = Callable[[tuple[int, ...]], "tuple[int, ...] | None"]  # parameter shape -> field's
StateType = TypeVar("StateType", bound=type)
FactoryType = TypeVar("FactoryType", bound=Callable[..., Any])

_STATE = "__lucid_fx_schema__"
_FACTORY = "__lucid_fx_state__"
_STATIC = "__lucid_fx_static__"


class Field(NamedTuple):
    """One state field.

    Attributes:
      kind: ``"array"`` (one array per parameter), ``"scalar"`` (one number per
        parameter) or ``"whole"`` (one number for the whole state).
      dtype: ``(parameter dtype, state_dtype) -> dtype`` of the field.
      shape: for an array, ``parameter shape -> its shape`` (``None`` where the
        parameter has none, as Adafactor's ``variance`` for a matrix); ``None``
        for an array shaped like its parameter.
      switch: the argument that decides whether the field exists: it is left
        out (``None`` in the state) while that argument is ``False`` or a zero.
      optional: some configuration or parameter shape leaves the field out.
      torch_key: the field is a key of torch's per-parameter state dict.
      never_negative: what the field is, when no run makes it negative
        ("an average of squares"); a loaded negative value is refused.
      torch_factor: the group option the field holds multiplied in, where
        torch's does not (RMSprop's momentum buffer holds lr): ours = torch's × it.
    """

    kind: Kind
    dtype: DtypeRule
    shape: ShapeRule | None = None
    switch: str | None = None
    optional: bool = False
    torch_key: bool = True
    never_negative: str | None = None
    torch_factor: str | None = None

    def dtype_for(self, param_dtype: Any, state_dtype: Any | None) -> np.dtype:
        """This field's dtype for a parameter of ``param_dtype`` under ``state_dtype``."""
        return np.dtype(self.dtype(np.dtype(param_dtype), state_dtype))

    def shape_for(self, param_shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """This field's shape for a parameter of ``param_shape``; ``None``: it has none."""
        if self.kind != "array":
            return ()
        return tuple(param_shape) if self.shape is None else self.shape(tuple(param_shape))

    def tree_dtype(self, params: Any, state_dtype: Any | None) -> np.dtype:
        """The dtype of this field when one value serves a whole tree (the functional
        face's step or ``mu_product``): the rule over every leaf, the widest result."""
        dtypes = [self.dtype_for(jnp.result_type(p), state_dtype) for p in jax.tree.leaves(params)]
        return np.dtype(jnp.result_type(*dtypes)) if dtypes else self.dtype_for(
            np.float32, state_dtype)


def buffer(*, switch: str | None = None, real: bool = False, never_negative: str | None = None,
           torch_factor: str | None = None) -> Field:
    """An array shaped like its parameter, in ``state_dtype`` (else the parameter's dtype).

    ``real`` gives a complex parameter a real buffer (an average of ``|g|²``).
    """
    def rule(param_dtype: Any, state_dtype: Any) -> Any:
        return buffer_dtype(param_dtype, state_dtype, real=real)

    return Field("array", rule, switch=switch, optional=switch is not None,
                 never_negative=never_negative, torch_factor=torch_factor)


def array(shape: ShapeRule, *, switch: str | None = None,
          never_negative: str | None = None) -> Field:
    """An array of a shape derived from its parameter's, in ``state_dtype`` (else the
    parameter's dtype); ``shape(parameter shape)`` is ``None`` where there is none.

    Only a transform that is not element-wise has such state (:func:`declare`).
    """
    def rule(param_dtype: Any, state_dtype: Any) -> Any:
        return buffer_dtype(param_dtype, state_dtype)

    return Field("array", rule, shape=shape, switch=switch, optional=True,
                 never_negative=never_negative)


def step_count(*, torch_key: bool = True) -> Field:
    """The int32 count of updates applied to a parameter (torch's ``step``).

    ``torch_key=False`` where torch keeps no count (SGD, Muon).
    """
    return Field("scalar", lambda param_dtype, state_dtype: np.dtype(np.int32),
                 torch_key=torch_key, never_negative="a step count")


def scalar(*, never_negative: str | None = None) -> Field:
    """A real number per parameter (NAdam's ``mu_product``): the parameter's real dtype,
    at least float32 (torch keeps these in float32 for bfloat16 parameters too)."""
    return Field("scalar", lambda param_dtype, state_dtype: np.promote_types(
        real_dtype(param_dtype), np.float32), never_negative=never_negative)


def skipped_count() -> Field:
    """The int32 count of steps skipped for non-finite gradients, one for the whole state;
    present with ``skip_nonfinite``, not a torch key."""
    return Field("whole", lambda param_dtype, state_dtype: np.dtype(np.int32),
                 switch="skip_nonfinite", optional=True, torch_key=False)


class Schema(NamedTuple):
    """A state's declared fields (in the NamedTuple's order) and the nature of its math.

    Attributes:
      fields: field name -> :class:`Field`.
      elementwise: the transform's update is element by element, so the
        stateful face may flatten many Parameters into one buffer; ``False``
        for math that needs each array's shape (a matrix's row norms).
      real_only: the math is defined for real parameters only, so both faces
        refuse a complex one (``RuntimeError``, as torch's Muon and Adafactor).
    """

    fields: Mapping[str, Field]
    elementwise: bool
    real_only: bool = False

    @property
    def switches(self) -> dict[str, str]:
        """Field -> the argument that decides whether it exists."""
        return {name: f.switch for name, f in self.fields.items() if f.switch is not None}

    @property
    def never_negative(self) -> dict[str, str]:
        """Field -> what it is, for the fields no run makes negative."""
        return {name: f.never_negative for name, f in self.fields.items()
                if f.never_negative is not None}

    def switched_on(self, field: str, options: Mapping[str, Any]) -> bool:
        """Whether ``field`` exists under ``options`` (the transform's arguments)."""
        switch = self.fields[field].switch
        if switch is None:
            return True
        value = options[switch]
        return not (value is False or value is None or is_static_zero(value))


def declare(*, elementwise: bool = True, real_only: bool = False,
            **fields: Field) -> Callable[[StateType], StateType]:
    """Class decorator: attaches the fields (one per NamedTuple field, in order) as the
    state's :class:`Schema`; ``elementwise=False`` for math that needs array shapes,
    ``real_only=True`` for math without a complex form.

    Raises ``TypeError`` when the names do not match the class's fields exactly, or
    when an element-wise state declares an array of another shape.
    """
    def attach(state_type: StateType) -> StateType:
        names = getattr(state_type, "_fields", None)
        if names is None or tuple(fields) != tuple(names):
            raise TypeError(
                f"the schema of {state_type.__name__} must list its fields in order: "
                f"{names}, got {tuple(fields)}"
            )
        shaped = [n for n, f in fields.items() if f.shape is not None]
        if elementwise and shaped:
            raise TypeError(
                f"{state_type.__name__}: {shaped} are not shaped like their parameter, so "
                f"the math is not element-wise: declare it with elementwise=False"
            )
        setattr(state_type, _STATE, Schema(MappingProxyType(dict(fields)), elementwise,
                                           real_only))
        return state_type

    return attach


def of_state(state_type: type) -> Schema:
    """The declared schema of ``state_type``; ``TypeError`` saying how to declare one."""
    declared = getattr(state_type, _STATE, None)
    if declared is None:
        raise TypeError(
            f"{state_type.__name__} has no state schema, which the stateful Optimizer needs "
            f"to store it: decorate it with @lucid_fx._src.core.schema.declare(...), one "
            f"field each (buffer(), array(), step_count(), scalar(), skipped_count())"
        )
    return declared


def shape_aware_states(state: Any) -> list[type]:
    """The declared state classes in ``state`` (a transform's state, a chain's tuple of
    them, or an abstract one from ``jax.eval_shape``) whose math needs array shapes."""
    def declared(x: Any) -> bool:
        return getattr(type(x), _STATE, None) is not None

    found = jax.tree.leaves(state, is_leaf=declared)
    return [type(x) for x in found if declared(x) and not of_state(type(x)).elementwise]


def makes(state_type: type, *, static: tuple[str, ...] = ()) -> Callable[[FactoryType], FactoryType]:
    """Factory decorator: the transforms ``factory`` returns keep a ``state_type`` state,
    so the stateful face reads the schema without building a state.

    ``static`` names numeric arguments that shape the compiled code (Muon's
    ``ns_steps``, a loop count): the stateful face keeps them out of the traced
    hyper-parameters, so a new value compiles once more instead of failing.
    """
    of_state(state_type)  # a factory's state must be declared

    def attach(factory: FactoryType) -> FactoryType:
        setattr(factory, _FACTORY, state_type)
        setattr(factory, _STATIC, tuple(static))
        return factory

    return attach


def static_arguments(factory: Callable[..., Any]) -> tuple[str, ...]:
    """The numeric arguments of ``factory`` that shape its compiled code (see :func:`makes`)."""
    return tuple(getattr(factory, _STATIC, ()))


def state_type_of(factory: Callable[..., Any]) -> type:
    """The state class that ``factory`` declared with :func:`makes`."""
    state_type = getattr(factory, _FACTORY, None)
    if state_type is None:
        name = getattr(factory, "__name__", repr(factory))
        raise TypeError(
            f"{name} does not say which state its transforms keep, which the stateful "
            f"Optimizer needs: decorate it with @lucid_fx._src.core.schema.makes(TheState)"
        )
    return state_type


def of(factory: Callable[..., Any]) -> Schema:
    """The schema of the state that ``factory``'s transforms keep."""
    return of_state(state_type_of(factory))
