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
    if value is None or isinstance(value, (bool, str, bytes)):
        return value
    if isinstance(value, int):
        if not MIN_INT <= value <= MAX_INT:
            raise DecodeError(f"integer {value} is outside the 64-bit range")
        return value
    if isinstance(value, (list, tuple)):
        return [_canonical(item, depth + 1) for item in value]
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise DecodeError(f"map key {key!r} is not a string")
        return {
            key: _canonical(value[key], depth + 1)
            for key in sorted(value, key=lambda k: k.encode("utf-8"))
        }
    raise DecodeError(f"type {type(value).__name__} has no canonical encoding")


def encode(value: Any) -> bytes:
    """Encode a canonical value; raises DecodeError for anything outside the subset."""
    return msgpack.packb(_canonical(value, 0), use_bin_type=True)


def decode(data: bytes, *, max_size: int | None = None) -> Any:
    """Decode canonical bytes, rejecting every non-canonical form with a DecodeError."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError("expected bytes")
    data = bytes(data)
    if max_size is not None and len(data) > max_size:
        raise DecodeError(f"{len(data)} bytes exceed the limit of {max_size}")
    try:
        value = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except msgpack.ExtraData as exc:
        raise DecodeError("trailing bytes after the encoded value") from exc
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise DecodeError(f"not valid canonical encoding ({type(exc).__name__})") from exc
    try:
        again = encode(value)
    except RecursionError as exc:
        raise DecodeError(f"value nests deeper than {MAX_DEPTH} levels") from exc
    if again != data:
        raise DecodeError("not in canonical form (key order, duplicate keys, float or long form)")
    return value


# --- frozen dataclasses <-> canonical maps ----------------------------------------------


@functools.cache
def _fields(cls: type) -> tuple[tuple[str, Any], ...]:
    hints = typing.get_type_hints(cls)
    return tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls) if f.init)


def to_obj(value: Any) -> Any:
    """Turn a (nested) dataclass into its canonical map form."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {name: to_obj(getattr(value, name)) for name, _ in _fields(type(value))}
    if isinstance(value, (list, tuple)):
        return [to_obj(item) for item in value]
    return value


def from_obj(cls: type[T], obj: Any, what: str | None = None) -> T:
    """Build dataclass ``cls`` from its map form, checking the exact field set and types."""
    return _convert(cls, obj, what or cls.__name__)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise DecodeError(f"{where}: expected a map")
        fields = _fields(hint)
        names = {name for name, _ in fields}
        if set(value) != names:
            missing = sorted(names - set(value))
            extra = sorted(set(value) - names)
            raise DecodeError(f"{where}: missing fields {missing}, unknown fields {extra}")
        return hint(**{name: _convert(h, value[name], f"{where}.{name}") for name, h in fields})
    if origin is tuple:
        item_hint = typing.get_args(hint)[0]
        if not isinstance(value, list):
            raise DecodeError(f"{where}: expected an array")
        return tuple(_convert(item_hint, item, f"{where}[{i}]") for i, item in enumerate(value))
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where)
            except DecodeError as exc:
                errors.append(str(exc))
        raise DecodeError(f"{where}: matches none of the allowed forms ({'; '.join(errors)})")
    if hint is Any:
        return value
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        if not isinstance(value, dict):
            raise DecodeError(f"{where}: expected a map")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise DecodeError(f"{where}: expected an integer")
        return value
    if hint in (bytes, str, bool):
        if not isinstance(value, hint):
            raise DecodeError(f"{where}: expected {hint.__name__}")
        return value
    raise TypeError(f"no decoder for {hint!r}")
