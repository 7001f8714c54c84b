"""The one canonical encoding for everything that is hashed or signed.

A restricted MessagePack (see docs/encoding.md): nil, booleans, integers in
[-2**63, 2**64), UTF-8 strings, byte strings, arrays and maps with string keys sorted
by their UTF-8 bytes. No floats, no extension types, shortest forms only. Decoding
re-encodes and compares, so exactly one byte string decodes to each value.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import msgpack

from twinledger.errors import DecodeError

MAX_DEPTH = 32
MAX_INT = 2**64 - 1
MIN_INT = -(2**63)

Canonical = None | bool | int | str | bytes | list["Canonical"] | dict[str, "Canonical"]

T = TypeVar("T")


def _canonical(value: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise DecodeError(f"value nests deeper than {MAX_DEPTH} levels")
    kind = type(value)
    if kind is bytes or kind is str or value is None or kind is bool:
        return value
    if kind is int:
        if not MIN_INT <= value <= MAX_INT:
            raise DecodeError(f"integer {value} is outside the 64-bit range")
        return value
    if kind is list or kind is tuple:
        return [_canonical(item, depth + 1) for item in value]
    if isinstance(value, Mapping):
        for key in value:
            if type(key) is not str:
                raise DecodeError(f"map key {key!r} is not a string")
        return {key: _canonical(value[key], depth + 1) for key in sorted(value)}  # code point order is UTF-8 order
    if isinstance(value, (bool, str, bytes, int, list, tuple)):
        return _canonical(_builtin(value), depth)
    raise DecodeError(f"type {type(value).__name__} has no canonical encoding")


def _builtin(value: Any) -> Any:
    """The plain built-in value of a subclass instance (an IntEnum, a str subclass, …)."""
    for kind in (bool, int, str, bytes, list):
        if isinstance(value, kind):
            return kind(value)
    return list(value)


def encode(value: Any) -> bytes:
    """Encode a canonical value; raises DecodeError for anything outside the subset."""
    return msgpack.packb(_canonical(value, 0), use_bin_type=True)


def decode(data: bytes, *, max_size: int | None = None) -> Any:
    """Decode canonical bytes, rejecting every non-canonical form with a DecodeError.

    The unpacker's hooks check what re-encoding cannot see (key order and type, floats,
    extension types, depth) as each container completes; re-packing and comparing the
    bytes then rejects every long form.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError("expected bytes")
    data = bytes(data)
    if max_size is not None and len(data) > max_size:
        raise DecodeError(f"{len(data)} bytes exceed the limit of {max_size}")
    heights: dict[int, int] = {}

    def checked(container: Any, children: Any) -> Any:
        height = 0
        for child in children:
            kind = type(child)
            if kind is float:
                raise DecodeError("floats have no canonical encoding")
            if kind is list or kind is dict:
                height = max(height, heights[id(child)] + 1)
        if height > MAX_DEPTH:
            raise DecodeError(f"value nests deeper than {MAX_DEPTH} levels")
        heights[id(container)] = height
        return container

    def as_map(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
        previous = None
        for key, _ in pairs:
            if type(key) is not str:
                raise DecodeError(f"map key {key!r} is not a string")
            if previous is not None and key <= previous:  # code point order is UTF-8 byte order
                raise DecodeError("not in canonical form (map keys unsorted or duplicated)")
            previous = key
        value = dict(pairs)
        return checked(value, value.values())

    def no_extension(code: int, _data: bytes) -> Any:
        raise DecodeError(f"extension type {code} has no canonical encoding")

    try:
        value = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True,
                                object_pairs_hook=as_map, list_hook=lambda items: checked(items, items),
                                ext_hook=no_extension)  # fmt: skip
    except DecodeError:
        raise
    except msgpack.ExtraData as exc:
        raise DecodeError("trailing bytes after the encoded value") from exc
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise DecodeError(f"not valid canonical encoding ({type(exc).__name__})") from exc
    if type(value) is float:
        raise DecodeError("floats have no canonical encoding")
    if msgpack.packb(value, use_bin_type=True) != data:
        raise DecodeError("not in canonical form (key order, duplicate keys, float or long form)")
    return value


# --- frozen dataclasses <-> canonical maps ----------------------------------------------


@functools.cache
def _fields(cls: type) -> tuple[tuple[str, Any], ...]:
    hints = typing.get_type_hints(cls)
    return tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls) if f.init)


def to_obj(value: Any) -> Any:
    """Turn a (nested) dataclass into its canonical map form."""
    kind = type(value)
    if kind is list or kind is tuple:
        return [to_obj(item) for item in value]
    if hasattr(kind, "__dataclass_fields__"):
        return {name: to_obj(getattr(value, name)) for name, _ in _fields(kind)}
    return value


def from_obj(cls: type[T], obj: Any, what: str | None = None) -> T:
    """Build dataclass ``cls`` from its map form, checking the exact field set and types."""
    return _converter(cls)(obj, what or cls.__name__)


Converter = typing.Callable[[Any, str], Any]


@functools.cache
def _converter(hint: Any) -> Converter:
    """A checking converter for ``hint``, built once per type."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        fields = tuple((name, _converter(h)) for name, h in _fields(hint))
        names = frozenset(name for name, _ in fields)

        def to_dataclass(value: Any, where: str) -> Any:
            if type(value) is not dict:
                raise DecodeError(f"{where}: expected a map")
            if value.keys() != names:
                missing = sorted(names - set(value))
                extra = sorted(set(value) - names)
                raise DecodeError(f"{where}: missing fields {missing}, unknown fields {extra}")
            return hint(**{name: convert(value[name], f"{where}.{name}") for name, convert in fields})

        return to_dataclass
    if origin is tuple:
        item = _converter(typing.get_args(hint)[0])

        def to_tuple(value: Any, where: str) -> Any:
            if type(value) is not list:
                raise DecodeError(f"{where}: expected an array")
            return tuple(item(v, f"{where}[{i}]") for i, v in enumerate(value))

        return to_tuple
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(hint)
        nullable = type(None) in options
        choices = [_converter(option) for option in options if option is not type(None)]

        def to_union(value: Any, where: str) -> Any:
            if value is None and nullable:
                return None
            errors = []
            for choice in choices:
                try:
                    return choice(value, where)
                except DecodeError as exc:
                    errors.append(str(exc))
            raise DecodeError(f"{where}: matches none of the allowed forms ({'; '.join(errors)})")

        return to_union
    if hint is Any:
        return lambda value, where: value
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return _exact(dict, "a map")
    if hint is int:
        return _exact(int, "an integer")
    if hint in (bytes, str, bool):
        return _exact(hint, hint.__name__)
    raise TypeError(f"no decoder for {hint!r}")


def _exact(kind: type, name: str) -> Converter:
    def check(value: Any, where: str) -> Any:
        if type(value) is not kind:
            raise DecodeError(f"{where}: expected {name}")
        return value

    return check
