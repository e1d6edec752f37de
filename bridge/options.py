"""What a generation request is: the mode, the prompt, the length and every option, validated.

One table (``OPTION_TYPES``) says which options exist and their types; the OSC routes, the CLI
and preset banks all go through :func:`parse_options` and :meth:`Request.validate`, so a
misspelt option gets the same answer everywhere.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from bridge.errors import BadArgs

Mode = Literal["text", "continue", "melody", "jam"]
MODES: tuple[str, ...] = ("text", "continue", "melody", "jam")
FORMATS = ("wav", "flac")
NORMALIZE = ("off", "peak", "lufs")

MAX_SECONDS = 600.0
MAX_VARIATIONS = 8


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a yes/no value: {value!r}")


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"not a whole number: {value!r}")
        return int(value)
    return int(str(value).strip())


def _to_float(value: Any) -> float:
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"not a finite number: {value!r}")
    return result


#: option name -> (converter, what to say it expects)
OPTION_TYPES: dict[str, tuple[Any, str]] = {
    "seed": (_to_int, "a whole number"),
    "guidance": (_to_float, "a number, e.g. 3.0"),
    "temperature": (_to_float, "a number above 0, e.g. 1.0"),
    "top_k": (_to_int, "a whole number, e.g. 250 (0 turns it off)"),
    "top_p": (_to_float, "a number from 0 to 1 (0 turns it off)"),
    "bpm": (_to_float, "a tempo in beats per minute, e.g. 120"),
    "bars": (_to_int, "a whole number of bars, e.g. 8"),
    "beats_per_bar": (_to_int, "a whole number, e.g. 4"),
    "prompt_seconds": (_to_float, "seconds of the clip to use as the prompt"),
    "variations": (_to_int, f"a whole number from 1 to {MAX_VARIATIONS}"),
    "include_prompt": (_to_bool, "1 or 0"),
    "stream": (_to_bool, "1 or 0"),
    "play": (_to_bool, "1 or 0"),
    "name": (str, "a file name (no folders)"),
    "sample_rate": (_to_int, "a sample rate in Hz, e.g. 48000"),
    "format": (str, "wav or flac"),
    "normalize": (str, "off, peak or lufs"),
    "token": (str, "the shared token the daemon was started with"),
}


def closest(word: str, choices: Iterable[str]) -> str:
    """A ' (did you mean X?)' hint, or '' when nothing is close."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def convert_option(key: str, value: Any) -> Any:
    """Convert one option value to its type, or raise BadArgs naming the option."""
    if key not in OPTION_TYPES:
        raise BadArgs(f"unknown option {key!r}{closest(key, OPTION_TYPES)}; known: {', '.join(OPTION_TYPES)}")
    converter, expected = OPTION_TYPES[key]
    try:
        return converter(value)
    except (TypeError, ValueError):
        raise BadArgs(f"option {key!r} wants {expected}, got {value!r}") from None


def parse_options(pairs: list[Any] | tuple[Any, ...]) -> dict[str, Any]:
    """Trailing OSC key/value pairs to a dict of typed options."""
    if len(pairs) % 2:
        raise BadArgs(f"options come in key/value pairs; {pairs[-1]!r} has no value")
    options: dict[str, Any] = {}
    for key, value in zip(pairs[0::2], pairs[1::2], strict=True):
        if not isinstance(key, str):
            raise BadArgs(f"an option name must be a string, got {key!r}")
        options[key] = convert_option(key, value)
    return options


@dataclass(frozen=True)
class Request:
    """One generation job as the engine sees it, after the business rules are applied."""

    mode: Mode = "text"
    prompt: str = ""
    seconds: float | None = None
    clip: str | None = None
    seed: int | None = None
    guidance: float = 3.0
    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    bpm: float | None = None
    bars: int | None = None
    beats_per_bar: int = 4
    prompt_seconds: float | None = None
    variations: int = 1
    include_prompt: bool = False
    stream: bool = False
    play: bool = False
    name: str | None = None
    sample_rate: int | None = None
    format: str = "wav"
    normalize: str = "off"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def with_options(self, options: Mapping[str, Any]) -> Request:
        """A copy with ``options`` (already typed) applied; ``token`` is never kept."""
        known = {f.name for f in dataclasses.fields(self)}
        updates = {k: v for k, v in options.items() if k in known and k != "extra"}
        return dataclasses.replace(self, **updates)

    def validate(self) -> Request:
        """Raise BadArgs with what to do for any value out of range; return self."""
        if self.mode not in MODES:
            raise BadArgs(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.mode in ("continue", "melody") and not self.clip:
            raise BadArgs(f"{self.mode} needs a clip path")
        if self.mode == "melody" and not self.prompt.strip():
            raise BadArgs("melody needs a text prompt describing the style")
        if self.mode == "jam":
            return self._validate_sampling()
        if self.bars is not None or self.bpm is not None:
            if self.bars is None or self.bpm is None:
                raise BadArgs("give both bpm and bars for a length in bars (or seconds alone)")
            from bridge.tempo import check_tempo  # noqa: PLC0415 - avoids an import cycle

            check_tempo(self.bpm, self.beats_per_bar)
            if not (1 <= self.bars <= 512):
                raise BadArgs(f"bars {self.bars} is out of range: give 1 to 512")
        elif self.seconds is None or self.seconds <= 0:
            raise BadArgs("give a length: seconds above 0, or bpm and bars")
        if self.seconds is not None and not (0 <= self.seconds <= MAX_SECONDS):
            raise BadArgs(f"seconds {self.seconds:g} is out of range: give up to {MAX_SECONDS:g} s")
        return self._validate_sampling()

    def _validate_sampling(self) -> Request:
        if self.temperature <= 0:
            raise BadArgs(f"temperature must be above 0, got {self.temperature:g}")
        if self.guidance < 0 or self.guidance > 20:
            raise BadArgs(f"guidance must be from 0 to 20, got {self.guidance:g} (3 is the usual)")
        if self.top_k < 0:
            raise BadArgs(f"top_k must be 0 or more, got {self.top_k}")
        if not (0.0 <= self.top_p <= 1.0):
            raise BadArgs(f"top_p must be from 0 to 1, got {self.top_p:g}")
        if not (1 <= self.variations <= MAX_VARIATIONS):
            raise BadArgs(f"variations must be from 1 to {MAX_VARIATIONS}, got {self.variations}")
        if self.prompt_seconds is not None and not (0.5 <= self.prompt_seconds <= 30):
            raise BadArgs(f"prompt_seconds must be from 0.5 to 30, got {self.prompt_seconds:g}")
        if self.sample_rate is not None and not (8000 <= self.sample_rate <= 192000):
            raise BadArgs(f"sample_rate must be from 8000 to 192000 Hz, got {self.sample_rate}")
        if self.format not in FORMATS:
            raise BadArgs(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.normalize not in NORMALIZE:
            raise BadArgs(f"normalize must be one of {', '.join(NORMALIZE)}, got {self.normalize!r}")
        if self.seed is not None and not (0 <= self.seed < 2**63):
            raise BadArgs(f"seed must be from 0 to 2**63-1, got {self.seed}")
        return self
