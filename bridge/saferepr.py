"""Client data shown in messages and logs: short, flat and never raising, however deep or big it is.

``repr`` of a client's value is unsafe twice: a list nested 1,100 deep raises RecursionError (in
the route and again in the logging of it, which re-raises it), and a 60 KB string echoed into a
reply or a log line makes the answer bigger than the question. :func:`safe_repr` walks a value
without recursion, stops at ``max_depth`` levels, ``max_items`` items and ``limit`` characters,
and says how much it left out. Use it for every client value put in an error message or a log.
"""

from __future__ import annotations

from typing import Any

DEFAULT_LIMIT = 80
DEFAULT_DEPTH = 3
DEFAULT_ITEMS = 8

_BRACKETS: dict[type, tuple[str, str]] = {list: ("[", "]"), tuple: ("(", ")"), dict: ("{", "}")}


def _scalar(value: Any, limit: int) -> str:
    if isinstance(value, (str, bytes, bytearray)):
        shown = repr(value[: limit + 1])
        return shown if len(value) <= limit else f"{shown[:-1]}...{shown[-1]} ({len(value)} long)"
    if isinstance(value, (bool, int, float, complex)) or value is None:
        text = repr(value)
        return text if len(text) <= limit else text[:limit] + "..."
    return f"<{type(value).__name__}>"


def safe_repr(value: Any, limit: int = DEFAULT_LIMIT, *, max_depth: int = DEFAULT_DEPTH,
              max_items: int = DEFAULT_ITEMS) -> str:
    """A ``repr``-like text of ``value`` of at most about ``limit`` characters; never raises."""
    try:
        return _walk(value, limit, max_depth, max_items)
    except Exception:  # noqa: BLE001 - a value we cannot show must not take its handler down
        return f"<unprintable {type(value).__name__}>"


def _walk(value: Any, limit: int, max_depth: int, max_items: int) -> str:
    out: list[str] = []
    size = 0
    # a stack of pending pieces: either a value to show (with its depth) or literal text
    stack: list[tuple[bool, Any, int]] = [(True, value, 0)]
    while stack:
        if size > limit:
            out.append("...")
            break
        is_value, item, depth = stack.pop()
        if not is_value:
            text = str(item)
        elif type(item) in _BRACKETS:
            opening, closing = _BRACKETS[type(item)]
            if depth >= max_depth:
                text = f"{opening}...{len(item)} items{closing}" if item else opening + closing
            else:
                items = list(item.items())[:max_items] if isinstance(item, dict) else list(item[:max_items])
                pieces: list[tuple[bool, Any, int]] = [(False, opening, 0)]
                for i, element in enumerate(items):
                    if i:
                        pieces.append((False, ", ", 0))
                    if isinstance(item, dict):
                        pieces += [(True, element[0], depth + 1), (False, ": ", 0), (True, element[1], depth + 1)]
                    else:
                        pieces.append((True, element, depth + 1))
                if len(item) > max_items:
                    pieces.append((False, f", ... {len(item) - max_items} more", 0))
                pieces.append((False, closing, 0))
                stack += reversed(pieces)
                continue
        else:
            text = _scalar(item, max(8, limit - size))
        out.append(text)
        size += len(text)
    return "".join(out)
