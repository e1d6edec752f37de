"""The result store: where results go, what they are called, and the sidecar that recalls each one.

One output folder; one unique file per job and variation, written under a temporary name and
renamed (``audio.write_atomic``), so a DAW never imports half a file; beside each, ``NAME.wav.json``
with everything it takes to make the same result again. A client's ``name`` is a file name under
the folder, never a path.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bridge import __version__, audio
from bridge.app.planning import Plan
from bridge.app.storage import storage_error
from bridge.errors import BadArgs, Cancelled
from bridge.options import Request

_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._()+-]{0,119}$")


class ResultStore:
    """Names, atomic files and sidecars under one output folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def result_path(self, name: str, fmt: str) -> Path:
        """The path for a client-chosen file name: a name under the output folder, never a path."""
        if not _NAME_OK.match(name) or ".." in name:
            raise BadArgs(f"name {name!r} is not a plain file name: use letters, digits, spaces and ._()+- "
                          "(no folders, at most 120 characters)")
        stem = name[: -len(fmt) - 1] if name.lower().endswith("." + fmt) else name
        path = (self.folder / f"{stem}.{fmt}").resolve()
        if path.parent != self.folder.resolve():
            raise BadArgs(f"name {name!r} would leave the output folder: give a plain file name")
        return path

    def stem(self, job_id: str, request: Request) -> str:
        """The file stem of a job's result: the client's name, else date, mode, prompt and id."""
        if request.name:
            return self.result_path(request.name, request.format).stem
        slug = re.sub(r"[^a-z0-9]+", "-", request.prompt.lower()).strip("-")[:40] or request.mode
        safe_id = re.sub(r"[^A-Za-z0-9_-]+", "", job_id)[:24]
        return f"{time.strftime('%Y%m%d-%H%M%S')}-{request.mode}-{slug}" + (f"-{safe_id}" if safe_id else "")

    def chunk_folder(self, stem: str) -> Path:
        return self.folder / "chunks" / stem

    def jam_folder(self, stem: str) -> Path:
        return self.folder / "jam" / stem

    def _unique(self, stem: str, fmt: str) -> Path:
        path = self.folder / f"{stem}.{fmt}"
        n = 2
        while path.exists():
            path = self.folder / f"{stem}-{n}.{fmt}"
            n += 1
        return path

    def write(self, job_id: str, request: Request, plan: Plan, seed: int, clip: audio.Clip | None,
              outputs: list[np.ndarray], elapsed: float, stem: str,
              model: dict[str, Any], details: dict[str, Any] | None = None,
              is_cancelled: Callable[[], bool] | None = None) -> tuple[list[Path], list[Path]]:
        """Write each variation and its sidecar (``details``: a loop's or fill's own record); returns
        (paths, sidecars).

        ``is_cancelled`` is asked before each variation: a job cancelled while writing removes the
        files it wrote and raises Cancelled, so a cancelled job leaves no result behind.
        """
        try:
            self.folder.mkdir(parents=True, exist_ok=True)  # again: a folder may vanish while a job runs
        except OSError as exc:
            raise storage_error(exc, self.folder, "make the output folder") from exc
        paths: list[Path] = []
        sidecars: list[Path] = []
        for i, data in enumerate(outputs):
            if is_cancelled is not None and is_cancelled():
                for written in paths + sidecars:
                    written.unlink(missing_ok=True)
                raise Cancelled("the job was cancelled while its files were written")
            path = self._unique(stem if len(outputs) == 1 else f"{stem}-v{i + 1}", request.format)
            sidecar = path.with_name(path.name + ".json")
            try:
                audio.write_atomic(path, data, plan.out_rate, request.format)
                payload = sidecar_for(job_id, request, plan, seed, clip, i, elapsed, model)
                if details is not None:
                    payload[str(details.get("kind", request.mode))] = details  # a loop's or fill's own record
                audio.write_json_atomic(sidecar, payload)
            except (OSError, RuntimeError) as exc:  # libsndfile reports a full disk as a RuntimeError
                raise storage_error(exc, path, "write") from exc
            paths.append(path)
            sidecars.append(sidecar)
        return paths, sidecars


def sidecar_for(job_id: str, request: Request, plan: Plan, seed: int, clip: audio.Clip | None, variation: int,
                elapsed: float, model: dict[str, Any]) -> dict[str, Any]:
    """What it takes to recall a result: prompt, model, seed, every option, tempo, the source clip's hash."""
    options = {k: v for k, v in dataclasses.asdict(request).items() if k not in ("extra",)}
    return {
        "bridge_version": __version__,
        "job_id": job_id,
        "model": model.get("model"),
        "device": model.get("device"),
        "dtype": model.get("dtype"),
        "engine": model.get("engine"),  # weights, kernel, attention dtype, CUDA graph or eager: the numbers' path
        "mode": request.mode,
        "preset": request.extra.get("preset"),
        "prompt": request.prompt,
        "text_sent_to_model": plan.text,
        "seed": seed,
        "variation": variation,
        "options": options,
        "tempo": {"bpm": request.bpm, "bars": request.bars, "beats_per_bar": request.beats_per_bar},
        "key": request.key,
        "sample_rate": plan.out_rate,
        "samples": plan.out_samples,
        "seconds": plan.out_samples / plan.out_rate,
        "prompt_frames": plan.prompt_frames,
        "source_clip": None if clip is None else {"path": str(clip.path), "sha256": clip.sha256,
                                                  "sample_rate": clip.sample_rate, "samples": clip.frames},
        "generation_seconds": round(elapsed, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
