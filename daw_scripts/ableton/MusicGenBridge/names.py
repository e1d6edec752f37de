"""The clip-name grammar: `mg: <prompt>`, `mg+:`, `mg~:`, `mg jam:`, `mg key:`, `mg loop:`, `mg fill:`, and
the state shown after it."""

from __future__ import annotations

import re
from typing import NamedTuple

GENERATE, CONTINUE, MELODY, JAM = "generate", "continue", "melody", "jam"
KEY = "key"  # generate, in the set's key (Song.root_note, Song.scale_name)
LOOP, FILL = "loop", "fill"
_MARKS = {"": GENERATE, "+": CONTINUE, "~": MELODY, " jam": JAM, " key": KEY, " loop": LOOP, " fill": FILL}
_NAME = re.compile(r"^\s*mg(\+|~| jam| key| loop| fill)?\s*:\s*(.*?)\s*(?:\[([^\[\]]*)\])?\s*$",
                   re.IGNORECASE | re.DOTALL)

QUEUED, DONE, JAMMING, STOPPING = "queued", "done", "jamming", "stopping"


class PromptName(NamedTuple):
    """A clip name that asks the bridge for something: what kind, the prompt, and the state shown."""

    kind: str
    prompt: str
    state: str | None  # None: not asked yet

    @property
    def head(self) -> str:
        """The name without its state: `mg: dusty lofi keys`."""
        mark = next(m for m, k in _MARKS.items() if k == self.kind)
        return (f"mg{mark}: {self.prompt}").rstrip()

    def with_state(self, state: str) -> str:
        """The clip's name showing ``state``: `mg: dusty lofi keys [42%]`."""
        return f"{self.head} [{state}]"


def parse_name(name: str) -> PromptName | None:
    """The request a clip name makes, or None when it is an ordinary clip name."""
    found = _NAME.match(name or "")
    if found is None:
        return None
    kind = _MARKS[(found.group(1) or "").lower()]
    prompt = " ".join(found.group(2).split())
    if not prompt and kind != CONTINUE:  # a continuation may go on without a new prompt
        return None
    state = found.group(3)
    return PromptName(kind, prompt, state.strip() if state is not None else None)


def percent(progress: float) -> str:
    """Progress in tens of percent, so a job renames its clip (an undo step in Live) ten times at most."""
    return f"{int(max(0.0, min(1.0, progress)) * 10) * 10}%"
