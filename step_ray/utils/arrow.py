"""Typed records: dataclasses <-> Arrow values, so nested payloads travel between stages as Arrow structs.

A stage that hands a nested object to the next one (perception's tracks to the graph builder, the QRA
sampler's candidate samples to the corpus finishing) declares the column with :func:`arrow_type` of the
dataclass, fills it with :func:`to_arrow` and reads it back with :func:`from_arrow`. Ray Data moves the
column as Arrow (zero-copy between processes, typed, checked against the declared schema); nothing is a JSON
string inside a row and nothing needs cleaning of numpy scalars or NaNs on the way back.

The mapping follows the type hints:

=========================  ==============================================
Python                     Arrow
=========================  ==============================================
int, float, str, bool      int64, float64, string, bool
Optional[X]                X (nullable)
list[X], tuple[X, ...]     list<X>   (read back as list / tuple)
dict[K, V]                 map<K, V> (read back as dict)
a dataclass                struct of its fields
an untyped ``dict`` field  the struct given in the field's metadata ``{"arrow": pa.struct(...)}``: keys
                           missing from the dict are null, and null entries are dropped when read back
=========================  ==============================================
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Union

import pyarrow as pa

_PRIMITIVES = {int: pa.int64(), float: pa.float64(), str: pa.string(), bool: pa.bool_()}


class RecordTypeError(TypeError):
    """A type or value has no Arrow form under these rules; the message names the field."""


def _args(tp: Any) -> tuple:
    return typing.get_args(tp)


def _optional(tp: Any) -> Any:
    """``X`` for ``Optional[X]``, else None."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        rest = [a for a in _args(tp) if a is not type(None)]
        if len(rest) == 1 and len(_args(tp)) == 2:
            return rest[0]
        raise RecordTypeError(f"unions other than Optional[X] have no Arrow form: {tp}")
    return None


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = _hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.init]


def arrow_type(tp: Any, where: str = "") -> pa.DataType:
    """The Arrow type of a Python type hint (see the module docstring)."""
    if tp in _PRIMITIVES:
        return _PRIMITIVES[tp]
    inner = _optional(tp)
    if inner is not None:
        return arrow_type(inner, where)
    origin = typing.get_origin(tp)
    if origin is list:
        return pa.list_(arrow_type(_args(tp)[0], f"{where}[]"))
    if origin is tuple:
        args = [a for a in _args(tp) if a is not Ellipsis]
        if len(set(args)) != 1:
            raise RecordTypeError(f"{where or tp}: a tuple needs one item type to become an Arrow list")
        return pa.list_(arrow_type(args[0], f"{where}[]"))
    if origin is dict:
        k, v = _args(tp)
        return pa.map_(arrow_type(k, f"{where}.key"), arrow_type(v, f"{where}.value"))
    if dataclasses.is_dataclass(tp):
        fields = []
        for f, hint in _fields(tp):
            name = f"{where}.{f.name}" if where else f"{tp.__name__}.{f.name}"
            declared = f.metadata.get("arrow")
            fields.append(pa.field(f.name, declared if declared is not None else arrow_type(hint, name)))
        return pa.struct(fields)
    raise RecordTypeError(f"{where or tp}: {tp!r} has no Arrow form (give the field metadata {{'arrow': ...}})")


def schema_of(cls: type) -> pa.Schema:
    """A dataclass as a table schema: one column per field."""
    return pa.schema(list(arrow_type(cls)))


def to_arrow(value: Any, tp: Any, where: str = "") -> Any:
    """``value`` (of type hint ``tp``) as the plain Python structure pyarrow builds ``arrow_type(tp)`` from."""
    if value is None:
        return None
    inner = _optional(tp)
    if inner is not None:
        return to_arrow(value, inner, where)
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        args = [a for a in _args(tp) if a is not Ellipsis]
        return [to_arrow(v, args[0], where) for v in value]
    if origin is dict:
        k, v = _args(tp)
        return [(to_arrow(key, k, where), to_arrow(val, v, where)) for key, val in value.items()]
    if dataclasses.is_dataclass(tp):
        out = {}
        for f, hint in _fields(tp):
            item = getattr(value, f.name)
            declared = f.metadata.get("arrow")
            out[f.name] = _open_dict(item, declared, f"{tp.__name__}.{f.name}") if declared is not None \
                else to_arrow(item, hint, f"{tp.__name__}.{f.name}")
        return out
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _open_dict(value: Any, declared: pa.DataType, where: str) -> Any:
    """An untyped dict field as its declared struct (unknown keys are refused, not dropped)."""
    if value is None or not pa.types.is_struct(declared):
        return value
    if not isinstance(value, dict):
        raise RecordTypeError(f"{where}: expected a dict for the struct {declared}")
    names = {declared.field(i).name: declared.field(i).type for i in range(declared.num_fields)}
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise RecordTypeError(f"{where}: keys {unknown} have no field in the declared Arrow struct; add them")
    return {k: _open_dict(value.get(k), t, f"{where}.{k}") for k, t in names.items()}


def from_arrow(value: Any, tp: Any) -> Any:
    """Inverse of :func:`to_arrow` on what ``pa.Array.to_pylist()`` returns."""
    if value is None:
        return None
    inner = _optional(tp)
    if inner is not None:
        return from_arrow(value, inner)
    origin = typing.get_origin(tp)
    if origin is list:
        return [from_arrow(v, _args(tp)[0]) for v in value]
    if origin is tuple:
        args = [a for a in _args(tp) if a is not Ellipsis]
        return tuple(from_arrow(v, args[0]) for v in value)
    if origin is dict:
        k, v = _args(tp)
        items = value.items() if isinstance(value, dict) else value
        return {from_arrow(key, k): from_arrow(val, v) for key, val in items}
    if dataclasses.is_dataclass(tp):
        kwargs = {}
        for f, hint in _fields(tp):
            item = value.get(f.name)
            kwargs[f.name] = _strip_nulls(item) if f.metadata.get("arrow") is not None else from_arrow(item, hint)
        return tp(**kwargs)
    return value


def _strip_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    return value


def column(values: list[Any], tp: Any) -> pa.Array:
    """An Arrow array of ``values`` (each of type hint ``tp``, or None)."""
    return pa.array([to_arrow(v, tp) for v in values], type=arrow_type(tp))
