"""Command-line flags made from the one option table (:data:`bridge.options.OPTIONS`)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

from bridge.options import OPTIONS

__all__ = ["add_option_flags", "options_from_args"]


def _help(name: str, jam: bool) -> str:
    spec = OPTIONS[name]
    value = spec.jam_value if jam else spec.default
    if spec.kind is bool:
        return spec.help
    shown = spec.default_text if value is None else f"{value:g}" if isinstance(value, float) else str(value)
    return f"{spec.help} (default {shown})" if shown else spec.help


def add_option_flags(parser: argparse.ArgumentParser | Any, option_names: Iterable[str], *, jam: bool = False) -> None:
    """Add ``--top-k`` etc. for ``option_names``, typed and helped by the table; every default is None,
    so only what the user gives reaches the request (the table's defaults, ``jam``'s when ``jam``, apply)."""
    for name in option_names:
        spec = OPTIONS[name]
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": _help(name, jam)}
        if spec.kind is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = spec.kind
            if spec.choices:
                kwargs["choices"] = spec.choices
        parser.add_argument(spec.flag, **kwargs)


def options_from_args(args: argparse.Namespace, option_names: Iterable[str]) -> dict[str, Any]:
    """The options of ``option_names`` the user gave on the command line (a flag left out is not an option)."""
    options = {}
    for name in option_names:
        value = getattr(args, name, None)
        if value is not None and value is not False:
            options[name] = value
    return options
