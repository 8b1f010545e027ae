"""Typed reads from a received JSON object: a missing or mistyped field is a ``bad_message``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeGuard, TypeVar

from parakeet_worker.serving.protocol.codes import ErrorCode, ProtocolError

T = TypeVar("T")


def is_number(value: object) -> TypeGuard[int | float]:
    """A JSON number (``true`` and ``false`` are not, though Python's bool is an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_text(value: object) -> TypeGuard[str]:
    return isinstance(value, str)


def _is_flag(value: object) -> TypeGuard[bool]:
    return isinstance(value, bool)


def _is_object(value: object) -> TypeGuard[dict[str, Any]]:
    return isinstance(value, dict)


class Fields:
    """One received object, read field by field; ``what`` names it in error messages."""

    def __init__(self, obj: Mapping[str, Any], what: str) -> None:
        self.obj, self.what = obj, what

    def _get(self, key: str, kind: Callable[[object], TypeGuard[T]], expected: str) -> T:
        if key not in self.obj:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{self.what} lacks {key!r}")
        value = self.obj[key]
        if not kind(value):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{self.what}: {key} must be {expected}, got {value!r}")
        return value

    def text(self, key: str) -> str:
        return self._get(key, _is_text, "a string")

    def flag(self, key: str) -> bool:
        return self._get(key, _is_flag, "true or false")

    def integer(self, key: str) -> int:
        value = self._get(key, is_number, "an integer")
        if not float(value).is_integer():
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{self.what}: {key} must be an integer, got {value!r}")
        return int(value)

    def number(self, key: str) -> float:
        return self._get(key, is_number, "a number")

    def opt_number(self, key: str) -> float | None:
        return None if self.obj.get(key) is None else self.number(key)

    def opt_text(self, key: str) -> str | None:
        return None if self.obj.get(key) is None else self.text(key)

    def mapping(self, key: str) -> Mapping[str, Any]:
        return self._get(key, _is_object, "an object")
