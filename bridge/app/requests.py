"""The one request builder: every way a job comes in becomes a :class:`bridge.options.Request` here.

A front end's arguments (through :meth:`bridge.app.bridge.Bridge.make_request`, which adds the rules
that need the running bridge; the CLI also checks its arguments here before loading the model), a
preset bank's layers (:mod:`bridge.app.presets`) and a journal's record
(:mod:`bridge.app.journal_records`) are built the same way: the job's own fields (mode, prompt,
length, clips), then the typed options of the table, then every rule of ``Request.validate``. So a
misspelt option or a value out of range gets the same answer whichever way the job came.

A seed left to chance is picked by :func:`bridge.options.pick_seed`, and only there (the engine's
jam uses it too, so it lives in the core).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridge.options import Request


def build_request(mode: str, prompt: str = "", options: Mapping[str, Any] | None = None, *,
                  seconds: float | None = None, clip: str | None = None, clip_after: str | None = None,
                  extra: Mapping[str, Any] | None = None) -> Request:
    """A validated Request: the job's fields, then ``options`` (typed; keys that are not fields are left
    out), then :meth:`Request.validate`, whose BadArgs says what to change. The values are taken as given:
    a front end that means "none" by 0 or "" says None (``Bridge.make_request`` does)."""
    base = Request(mode=mode, prompt=prompt, seconds=seconds,  # type: ignore[arg-type]  # validate() checks the mode
                   clip=clip, clip_after=clip_after, extra=dict(extra or {}))
    return base.with_options(options or {}).validate()
