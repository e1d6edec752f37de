"""Settings of the daemon and the CLI: defaults < YAML file < environment < command line."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bridge.errors import BadArgs
from bridge.options import closest

DEFAULT_MODEL = "facebook/musicgen-small"
ENV_PREFIX = "MUSICGEN_BRIDGE_"


PRECISION_HELP = ("how the decoder stores its weights: auto (default: int8 on CPU, fp16 on a GPU), fp32, fp16, bf16, "
                  "int8, int4 (audibly lossy, for sketches); see the README's speed section")


THREADS_HELP = ("compute threads (default: physical cores minus one, at least one, so a DAW keeps a core; "
                "see the README's \"Beside a DAW\")")
PRIORITY_HELP = ("low (default: the compute thread yields to the DAW: SCHED_IDLE on Linux, utility QoS on macOS, "
                 "below normal on Windows), nice (Linux: nice 10) or normal")


@dataclass(frozen=True)
class Config:
    """Everything the daemon is built from. Frozen: pass it down, never change it."""

    model: str = DEFAULT_MODEL
    device: str = "auto"
    precision: str = "auto"
    host: str = "127.0.0.1"
    port: int = 9000
    reply_port: int = 9001
    output_dir: Path = Path("~/MusicGenBridge/out")
    presets_dir: Path | None = None
    queue_size: int = 16
    token: str | None = None
    audio_device: str | None = None
    state_dir: Path | None = None  # the job journal; None: beside the output folder (OUT.state)
    allow_dirs: tuple[Path, ...] | None = None  # where OSC clients may read clips; None: see ClipRoots
    max_job_memory: int | None = None  # MB one job may hold at its peak; None: half the machine's memory
    threads: int | None = None  # compute threads; None: physical cores minus one (bridge/compute.py)
    priority: str = "low"  # the compute thread's priority: low (yields to a DAW), nice or normal
    link: bool = False  # join the Ableton Link session (needs the [link] extra)

    def resolved_output_dir(self) -> Path:
        return Path(os.path.expanduser(str(self.output_dir))).resolve()


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _coerce(name: str, value: Any) -> Any:
    kind = _FIELDS[name].type
    if value is None:
        return None
    if name in ("port", "reply_port", "queue_size", "max_job_memory", "threads"):
        return int(value)
    if name == "link":
        return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")
    if name in ("output_dir", "presets_dir", "state_dir"):
        return Path(str(value))
    if name == "allow_dirs":  # a YAML list, or the environment's folders separated like PATH
        items = value.split(os.pathsep) if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"allow_dirs wants a list of folders, got {type(value).__name__}")
        return tuple(Path(str(item)) for item in items if str(item))
    del kind
    return str(value)


def load_config(
    file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build a Config from the layers; unknown keys are errors that name the closest key."""
    values: dict[str, Any] = {}
    if file is not None:
        try:
            data = yaml.safe_load(Path(file).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise BadArgs(f"cannot read config file {file}: {exc}") from None
        if not isinstance(data, dict):
            raise BadArgs(f"config file {file} must be a mapping of settings")
        for key, value in data.items():
            if key not in _FIELDS:
                raise BadArgs(f"{file}: unknown setting {key!r}{closest(str(key), _FIELDS)}")
            values[key] = value
    env = os.environ if environ is None else environ
    for name in _FIELDS:
        env_value = env.get(ENV_PREFIX + name.upper())
        if env_value is not None:
            values[name] = env_value
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    try:
        return Config(**{k: _coerce(k, v) for k, v in values.items()})
    except (TypeError, ValueError) as exc:
        raise BadArgs(f"bad setting: {exc}") from None
