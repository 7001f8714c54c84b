"""Checked reading of a contract method's arguments: every ``parse`` function uses
``Arguments`` so that a malformed call is refused before anything changes, with an error
that names the method and the argument."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from twinledger.errors import InvalidTransaction

MAX_TEXT = 256
IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_MISSING: Any = object()


class Arguments:
    def __init__(self, method: str, args: Mapping[str, Any], allowed: Collection[str]) -> None:
        self.method = method
        self.args = args
        unknown = sorted(set(args) - set(allowed))
        if unknown:
            raise self.error(f"unknown arguments {unknown}")

    def error(self, message: str) -> InvalidTransaction:
        return InvalidTransaction(f"{self.method}: {message}", code="bad_arguments")

    def _get(self, name: str, default: Any) -> Any:
        if name in self.args:
            return self.args[name]
        if default is _MISSING:
            raise self.error(f"argument {name!r} is missing")
        return default

    def text(self, name: str, *, default: Any = _MISSING, max_length: int = MAX_TEXT, empty: bool = False) -> Any:
        value = self._get(name, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str) or len(value) > max_length or (not value and not empty):
            raise self.error(f"{name!r} must be {'a' if empty else 'a non-empty'} string of at most {max_length} characters")
        return value

    def reference(self, name: str, *, default: Any = _MISSING, max_length: int = 512) -> Any:
        """How an element or program is named (an ID, a name path): printable text."""
        value = self.text(name, default=default, max_length=max_length)
        if value is not default and not value.isprintable():
            raise self.error(f"{name!r} must be printable (got {value[:40]!r})")
        return value

    def identifier(self, name: str, *, default: Any = _MISSING) -> Any:
        """A name or ID: letters, digits and ``._:-``, at most 128 characters."""
        value = self._get(name, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str) or not IDENTIFIER.match(value):
            raise self.error(f"{name!r} must be 1-128 letters, digits, '.', '_', ':' or '-' (got {str(value)[:40]!r})")
        return value

    def choice(self, name: str, choices: Collection[str], *, default: Any = _MISSING) -> Any:
        value = self._get(name, default)
        if value not in choices:
            raise self.error(f"{name!r} must be one of {sorted(choices)} (got {str(value)[:40]!r})")
        return value

    def blob(self, name: str, *, max_size: int, default: Any = _MISSING, size: int | None = None) -> Any:
        value = self._get(name, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, bytes) or len(value) > max_size or (size is not None and len(value) != size):
            wanted = f"{size} bytes" if size is not None else f"at most {max_size} bytes"
            raise self.error(f"{name!r} must be {wanted}")
        return value

    def key(self, name: str, *, default: Any = _MISSING) -> Any:
        """A 32-byte public key (Ed25519 or X25519)."""
        return self.blob(name, max_size=32, size=32, default=default)

    def digest(self, name: str, *, default: Any = _MISSING) -> Any:
        """A 32-byte SHA-256 digest."""
        return self.blob(name, max_size=32, size=32, default=default)

    def integer(self, name: str, *, minimum: int = 0, maximum: int = (1 << 63) - 1, default: Any = _MISSING) -> Any:
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise self.error(f"{name!r} must be an integer from {minimum} to {maximum}")
        return value

    def items(self, name: str, *, max_items: int, default: Any = _MISSING) -> Any:
        """A list (returned as a tuple) of at most ``max_items`` entries, unchecked."""
        value = self._get(name, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, list) or len(value) > max_items:
            raise self.error(f"{name!r} must be a list of at most {max_items} entries")
        return tuple(value)

    def mapping(self, name: str, *, max_items: int, default: Any = _MISSING) -> Any:
        value = self._get(name, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, dict) or len(value) > max_items:
            raise self.error(f"{name!r} must be a map of at most {max_items} entries")
        return value
