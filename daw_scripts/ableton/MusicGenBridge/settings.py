"""Settings: `settings.json` beside the script, else the environment, else the defaults."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, NamedTuple

FILE_NAME = "settings.json"


class Settings(NamedTuple):
    host: str = "127.0.0.1"
    port: int = 9000
    token: str = ""
    answer_timeout: float = 5.0  # seconds for the bridge to answer a request before the clip says no_bridge
    ping_seconds: float = 2.0  # how often the script checks the bridge is there (and re-registers)
    jam_play: bool = True  # the bridge plays the jam on its own audio output
    jam_margin: float = 2.0  # seconds ahead of the playhead a jam segment goes into the Arrangement, at least
    key: bool = False  # every request's prompt gets the set's key ("in A minor"), as `mg key:` does


_ENV = {"host": "MUSICGEN_BRIDGE_HOST", "port": "MUSICGEN_BRIDGE_PORT", "token": "MUSICGEN_BRIDGE_TOKEN",
        "answer_timeout": "MUSICGEN_BRIDGE_ANSWER_TIMEOUT", "ping_seconds": "MUSICGEN_BRIDGE_PING_SECONDS",
        "jam_play": "MUSICGEN_BRIDGE_JAM_PLAY", "jam_margin": "MUSICGEN_BRIDGE_JAM_MARGIN", "key": "MUSICGEN_BRIDGE_KEY"}


def _convert(key: str, value: Any) -> Any:
    kind = type(getattr(Settings(), key))
    if kind is bool:
        if isinstance(value, str):
            return value.strip().lower() not in ("0", "false", "no", "off", "")
        return bool(value)
    if kind is str:
        return str(value)
    number = kind(value)
    if number <= 0:
        raise ValueError("must be above 0")
    return number


def load_settings(folder: str, environ: Mapping[str, str]) -> tuple[Settings, str | None]:
    """The settings and, when something in them was unusable, a message saying what and where."""
    found: dict[str, Any] = {}
    problems = []
    path = os.path.join(folder, FILE_NAME)
    from_file: dict[str, Any] = {}
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as handle:
                loaded = json.load(handle)
            if not isinstance(loaded, dict):
                raise ValueError("it is not a JSON object")
            from_file = loaded
        except (OSError, ValueError) as exc:
            problems.append(f"{path} could not be read ({exc}): fix it or delete it")
    for key in sorted(set(from_file) - set(_ENV)):
        known = ", ".join(sorted(_ENV))
        problems.append(f"{path}: unknown setting {key!r} (known: {known})")
    for key, env in _ENV.items():
        where, value = (path, from_file[key]) if key in from_file else (env, environ.get(env, ""))
        if value == "":
            continue
        try:
            found[key] = _convert(key, value)
        except (TypeError, ValueError) as exc:
            problems.append(f"{where}: {key} {value!r} is not usable ({exc}); using {getattr(Settings(), key)!r}")
    return Settings(**found), "; ".join(problems) or None
