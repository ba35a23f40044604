"""Go's ``encoding/json`` ``Marshal``, re-implemented for the converters' values.

The values must be byte-identical to what Cilium writes, because real Cilium
agents in other clusters decode them.  :func:`go_json` produces what Go's
``json.Marshal`` would: compact output, struct fields in declaration order,
``omitempty`` (omits ``false``, ``0``, ``""``, nil and empty slices/maps; never a
struct), map keys sorted, ``null`` for nil slices/maps/pointers,
``[]byte``/``net.IPMask`` as base64, and Go's string escaping (``<``, ``>``, ``&``,
U+2028, U+2029 as ``\\u00XX``/``\\u20XX``, ``\\b \\f \\n \\r \\t``, other control
characters as ``\\u00XX``).

A Go struct is written as a :class:`Struct` of ``(name, value[, OMIT])`` fields; a
non-nil ``*string`` as a :class:`Present`.  :func:`go_time` is ``metav1.Time``'s
marshalled form.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any


class Struct:
    """A Go struct value: ``(json name, value[, omitempty])`` in declaration order."""

    __slots__ = ("fields",)

    def __init__(self, *fields: tuple[str, Any] | tuple[str, Any, bool]) -> None:
        self.fields = fields


class Present(str):
    """A non-nil ``*string``: never omitted by ``omitempty``, even when ``""``."""

    __slots__ = ()


OMIT = True  # readability marker for the third element of a Struct field

_GO_ESCAPES = {
    '"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
    "\t": "\\t", "<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
    "\u2028": "\\u2028", "\u2029": "\\u2029",
}
_GO_ESCAPE_RE = re.compile('["\\\\<>&\u2028\u2029\x00-\x1f\ud800-\udfff]')


def _go_escape_char(match: re.Match[str]) -> str:
    ch = match.group()
    esc = _GO_ESCAPES.get(ch)
    if esc is not None:
        return esc
    if ch < " ":
        return f"\\u{ord(ch):04x}"
    # A lone surrogate: Go's JSON decoder would already have turned it into U+FFFD.
    return "\ufffd"


def _go_string(s: str) -> str:
    return '"' + _GO_ESCAPE_RE.sub(_go_escape_char, s) + '"'


def _go_empty(value: Any) -> bool:
    """Go's ``omitempty`` test (a struct is never empty)."""
    if value is None or value is False:
        return True
    if isinstance(value, Present):
        return False
    if isinstance(value, int) and not isinstance(value, bool):
        return value == 0
    if isinstance(value, str | bytes | list | tuple | dict):
        return len(value) == 0
    return False


def _go_encode(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, str):
        out.append(_go_string(value))
    elif isinstance(value, bytes):
        out.append(_go_string(base64.b64encode(value).decode("ascii")))
    elif isinstance(value, Struct):
        out.append("{")
        first = True
        for field in value.fields:
            name, item = field[0], field[1]
            if len(field) > 2 and field[2] and _go_empty(item):
                continue
            if not first:
                out.append(",")
            first = False
            out.append(_go_string(name))
            out.append(":")
            _go_encode(item, out)
        out.append("}")
    elif isinstance(value, Mapping):
        out.append("{")
        for i, key in enumerate(sorted(value)):
            if i:
                out.append(",")
            out.append(_go_string(key))
            out.append(":")
            _go_encode(value[key], out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _go_encode(item, out)
        out.append("]")
    else:  # pragma: no cover - programming error
        raise TypeError(f"cannot encode {type(value).__name__} as Go JSON")


def go_json(value: Any) -> bytes:
    """``json.Marshal(value)`` as Go would produce it (see the module docstring)."""
    out: list[str] = []
    _go_encode(value, out)
    return "".join(out).encode("utf-8", "surrogatepass")


def go_time(value: Any) -> str | None:
    """A ``metav1.Time`` as Go marshals it: RFC 3339 in UTC, seconds; zero -> None."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and value:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
