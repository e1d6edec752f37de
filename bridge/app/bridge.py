"""The one facade with the business rules: lengths, tempo, clips, presets, names, files.

OSC routes, MIDI and the CLI call only this; it calls the engine and the audio helpers. It is
what turns "8 bars at 92 bpm continuing this clip" into exact sample counts, and the engine's
codes into files a DAW imports.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from bridge import __version__, audio, tempo
from bridge.config import Config
from bridge.engine import Engine, GenerationSpec
from bridge.engine.decoding import Sampling
from bridge.engine.models import load_model
from bridge.errors import BadArgs, BadAudio, BridgeError, Internal, ModelError, NotFound
from bridge.options import Request, jam_fields

log = logging.getLogger(__name__)

DEFAULT_PROMPT_SECONDS = 8.0
MIN_PROMPT_SECONDS = 0.1
SEAM_CROSSFADE_SECONDS = 0.05
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._()+-]{0,119}$")


@dataclass(frozen=True)
class Chunk:
    """A piece of a result written while the job still runs (streaming)."""

    index: int
    path: Path
    start_seconds: float
    seconds: float


@dataclass
class JobResult:
    """What a finished job produced: one file per variation, with its sidecar."""

    paths: list[Path]
    seconds: float
    sample_rate: int
    sidecars: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class Plan:
    """The sample-exact layout of one job, worked out before any generation."""

    out_rate: int
    out_samples: int
    text: str
    frames: int
    prompt_frames: int
    seam: int  # where the new audio starts in the decoded audio, at ``out_rate``


def load_presets(folder: Path | None) -> Any | None:
    """The preset banks in ``folder``, or in the project's ``presets/`` when none is given and it exists."""
    from bridge.app.presets import PresetLibrary  # noqa: PLC0415

    if folder is not None:
        return PresetLibrary.load(folder)
    shipped = Path(__file__).resolve().parents[2] / "presets"
    return PresetLibrary.load(shipped) if shipped.is_dir() else None


class Bridge:
    """Owns the engine and the output folder; every front end goes through it."""

    def __init__(self, engine: Engine, config: Config, presets: Any | None = None) -> None:
        self.engine = engine
        self.config = config
        self.presets = presets
        self.output_dir = config.resolved_output_dir()
        self._jam: Any | None = None  # the running bridge.engine.jam.Jam, owned by the worker
        self._jam_stop = threading.Event()
        self._player: Any | None = None  # bridge.audio.playback.Player, made on the first play
        self._player_lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Config, presets: Any | None = None) -> Bridge:
        """Load the configured model (once) and build the bridge around it."""
        if presets is None:
            presets = load_presets(config.presets_dir)
        loaded = load_model(config.model, device=config.device, precision=config.precision)
        return cls(Engine(loaded), config, presets)

    # -- facts ------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        loaded = self.engine.loaded
        return {
            "version": __version__,
            "model": loaded.name,
            "device": str(loaded.device),
            "dtype": str(loaded.dtype).replace("torch.", ""),
            "precision": loaded.precision,
            "kernel": self.engine.loop.fast.describe() if self.engine.loop.fast is not None else "transformers",
            "sample_rate": loaded.sample_rate,
            "channels": loaded.channels,
            "melody": loaded.is_melody,
            "underruns": self.underruns,
            "jamming": self._jam is not None,
        }

    # -- requests ---------------------------------------------------------------------------
    def make_request(self, mode: str, prompt: str, seconds: float | None, clip: str | None,
                     options: Mapping[str, Any]) -> Request:
        """A validated Request from a front end's arguments and typed options."""
        base = Request(mode=mode, prompt=prompt, seconds=seconds if seconds else None, clip=clip or None)  # type: ignore[arg-type]
        request = base.with_options(options).validate()
        if request.name is not None:
            self.result_path(request.name, request.format)  # refuse a bad name before queueing
        if request.stream and (request.variations > 1 or request.include_prompt or request.normalize != "off"):
            raise BadArgs("stream 1 sends the audio as it is made, so it works with one variation, without "
                          "include_prompt and with normalize off: drop those options or use stream 0")
        if request.mode == "melody" and not self.engine.loaded.is_melody:
            raise BadArgs(
                f"melody mode needs a melody checkpoint, and the bridge runs {self.engine.loaded.name}: "
                "restart it with --model facebook/musicgen-melody (or tiny-random-melody to test)"
            )
        return request

    def preset_request(self, bank: str, preset: str, options: Mapping[str, Any]) -> Request:
        if self.presets is None:
            raise NotFound("no preset banks are loaded: start the bridge with --presets DIR")
        request: Request = self.presets.request(bank, preset, dict(options))
        return self.make_request(request.mode, request.prompt, request.seconds, request.clip,
                                 {k: v for k, v in dataclasses.asdict(request).items()
                                  if k not in ("mode", "prompt", "seconds", "clip", "extra")})

    # -- planning ---------------------------------------------------------------------------
    def plan(self, request: Request, clip: audio.Clip | None) -> Plan:
        """Exact output length, rate and the frames to generate for ``request``."""
        eng = self.engine
        rate_default = clip.sample_rate if (clip is not None and request.mode == "continue") else eng.sample_rate
        out_rate = request.sample_rate or rate_default
        text = request.prompt
        if request.bars is not None and request.bpm is not None:
            out_samples = tempo.bars_to_samples(request.bars, request.bpm, out_rate, request.beats_per_bar)
            text = tempo.tempo_text(text, request.bpm, request.beats_per_bar) if text.strip() else text
        else:
            out_samples = round((request.seconds or 0.0) * out_rate)
        if out_samples < 1:
            raise BadArgs("the asked length is under one sample: give more seconds or bars")
        prompt_frames = 0
        if request.mode == "continue" and clip is not None:
            prompt_frames = self._prompt_frames(request, clip)
        model_samples = math.ceil(Fraction(out_samples * eng.sample_rate, out_rate)) + 64  # resampler margin
        frames = prompt_frames + eng.frames_for_samples(model_samples)
        seam = round(Fraction(prompt_frames * eng.hop * out_rate, eng.sample_rate))
        return Plan(out_rate=out_rate, out_samples=out_samples, text=text, frames=frames,
                    prompt_frames=prompt_frames, seam=seam)

    def _prompt_frames(self, request: Request, clip: audio.Clip) -> int:
        eng = self.engine
        if request.prompt_seconds is not None:
            want = request.prompt_seconds
        elif request.bpm is not None:
            bar = float(tempo.bar_seconds(request.bpm, request.beats_per_bar))
            bars = max(1, min(tempo.whole_bars_near(DEFAULT_PROMPT_SECONDS, request.bpm, request.beats_per_bar),
                              int(clip.seconds // bar)))
            want = bars * bar
        else:
            want = DEFAULT_PROMPT_SECONDS
        want = min(want, clip.seconds, (eng.window_frames - 1) / eng.loaded.frame_rate * 0.9)
        frames = int(want * eng.loaded.frame_rate)
        if frames < max(1, int(MIN_PROMPT_SECONDS * eng.loaded.frame_rate)):
            raise BadAudio(f"clip {clip.path} is {clip.seconds:.3f} s long: continuation needs at least "
                           f"{MIN_PROMPT_SECONDS} s of audio")
        return frames

    # -- running ----------------------------------------------------------------------------
    def run(self, job_id: str, request: Request, progress: Callable[[float], None],
            is_cancelled: Callable[[], bool], on_chunk: Callable[[Chunk], None] | None = None,
            on_warning: Callable[[str], None] | None = None) -> JobResult:
        """Generate, post-process and write the files for one job. Blocks; one caller at a time.

        ``on_warning`` hears what the user should know while the job runs (a jam slower than real time).
        """
        if request.mode == "jam":
            return self._run_jam(job_id, request, is_cancelled, on_chunk, on_warning)
        started = time.monotonic()
        player = self.player() if request.play else None  # no device: fail before generating
        clip = audio.read_clip(request.clip) if request.clip else None
        plan = self.plan(request, clip)
        seed = request.seed if request.seed is not None else secrets.randbits(31)
        eng = self.engine
        prompt_codes = None
        chroma = None
        if request.mode == "continue" and clip is not None:
            prompt_codes = eng.encode_audio(self._prompt_audio(clip, plan.prompt_frames))
        elif request.mode == "melody" and clip is not None:
            wave = audio.match_channels(audio.resample(clip.data, clip.sample_rate, eng.sample_rate), 1)
            chroma = eng.melody_chroma(wave, plan.frames)
        sampling = Sampling(temperature=request.temperature, top_k=request.top_k, top_p=request.top_p,
                            guidance=request.guidance if plan.text.strip() or chroma is not None else 1.0)
        spec = GenerationSpec(prompt=plan.text, frames=plan.frames, variations=request.variations,
                              sampling=sampling, seed=seed, prompt_codes=prompt_codes, chroma=chroma)
        stem = (self.result_path(request.name, request.format).stem if request.name
                else self._auto_stem(job_id, request))
        writer = _ChunkWriter(self, request, plan, clip, stem, on_chunk) if request.stream else None
        try:
            codes = eng.generate_codes(spec, progress=progress, is_cancelled=is_cancelled,
                                       on_frames=None if writer is None else writer.on_frames)
            if writer is not None:
                outputs = [writer.finish(codes)]
            else:
                decoded = eng.decode(codes)
                outputs = [self._finish(decoded[i], plan, request, clip) for i in range(request.variations)]
        except BridgeError:
            raise
        except RuntimeError as exc:  # torch reports out-of-memory and device faults this way
            raise ModelError(f"the model failed while generating: {exc}. Try a shorter length or fewer "
                             "variations") from exc
        paths, sidecars = self._write(job_id, request, plan, seed, clip, outputs, time.monotonic() - started, stem)
        progress(1.0)
        if player is not None:
            player.play_file(paths[0])
        return JobResult(paths=paths, seconds=outputs[0].shape[-1] / plan.out_rate, sample_rate=plan.out_rate,
                         sidecars=sidecars)

    def _prompt_audio(self, clip: audio.Clip, frames: int) -> np.ndarray:
        """The clip's last ``frames`` frames' worth of audio at the model rate, channel-matched."""
        eng = self.engine
        clip_samples = Fraction(frames * eng.hop * clip.sample_rate, eng.sample_rate)
        take = min(clip.samples, math.ceil(clip_samples))
        tail = clip.data[:, clip.samples - take :]
        wave = audio.resample(tail, clip.sample_rate, eng.sample_rate)
        wave = audio.match_channels(wave, eng.channels)
        need = frames * eng.hop
        return wave[:, -need:] if wave.shape[1] >= need else audio.fit_length(wave, need)

    def _finish(self, decoded: np.ndarray, plan: Plan, request: Request, clip: audio.Clip | None) -> np.ndarray:
        eng = self.engine
        wave = audio.resample(decoded, eng.sample_rate, plan.out_rate)
        new = audio.fit_length(wave[:, plan.seam :], plan.out_samples)
        continuing = request.mode == "continue"
        new = audio.fade_edges(new, plan.out_rate, head=not continuing, tail=True)
        if continuing and clip is not None:
            # a continuation keeps the clip's channel layout, so it sits on the clip's track as is
            channels = max(clip.data.shape[0], eng.channels)
            new = audio.match_channels(new, channels)
        if continuing and request.include_prompt and clip is not None:
            original = audio.resample(clip.data, clip.sample_rate, plan.out_rate)
            original = audio.match_channels(original, new.shape[0])
            wave = audio.match_channels(wave, new.shape[0])
            overlap = min(int(SEAM_CROSSFADE_SECONDS * plan.out_rate), plan.seam, original.shape[1])
            rerender = wave[:, plan.seam - overlap : plan.seam]
            blended = audio.crossfade_into(original, rerender, overlap)
            new = np.concatenate([blended, new], axis=-1)
        return audio.normalize(new, plan.out_rate, request.normalize)

    # -- live: playback and the jam -----------------------------------------------------------
    def player(self) -> Any:
        """The output device player, opened on first use; NoAudioDevice says why there is none."""
        from bridge.audio.playback import Player, list_devices  # noqa: PLC0415

        with self._player_lock:
            if self._player is None:
                if not list_devices():
                    from bridge.errors import NoAudioDevice  # noqa: PLC0415

                    raise NoAudioDevice("no audio output here (no sound card, no JACK or PulseAudio server): "
                                        "the bridge still writes files; start an audio server to play")
                self._player = Player(device=self.config.audio_device, buffer_seconds=90.0, start_seconds=0.5)
            return self._player

    @property
    def underruns(self) -> int:
        return int(self._player.underruns) if self._player is not None else 0

    def play(self, path: str) -> Path:
        """Play a result file (any audio file) on the output device; returns at once."""
        clip = audio.read_clip(path)
        self.player().play_array(clip.data, clip.sample_rate)
        return clip.path

    def stop_playback(self) -> None:
        if self._player is not None:
            self._player.stop()

    def jam_set(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Change the running jam from its next segment on; a ``preset`` key brings a preset's prompt and
        sampling options (the jam keeps its tempo and bar length)."""
        jam = self._jam
        if jam is None:
            raise NotFound("no jam is running: start one with /musicgen/jam/start")
        changes = dict(changes)
        if "preset" in changes:
            bank, _, name = str(changes.pop("preset")).partition("/")
            if self.presets is None or not name:
                raise BadArgs("preset wants bank/name, and the bridge needs --presets DIR")
            preset_request: Request = self.presets.request(bank, name, {})
            changes = {"prompt": preset_request.prompt, **jam_fields(preset_request, groups=("sampling",))} | changes
        settings = jam.set(changes)
        return dataclasses.asdict(settings)

    def jam_stop(self) -> None:
        if self._jam is None:
            raise NotFound("no jam is running: nothing to stop")
        self._jam_stop.set()

    def _run_jam(self, job_id: str, request: Request, is_cancelled: Callable[[], bool],
                 on_chunk: Callable[[Chunk], None] | None,
                 on_warning: Callable[[str], None] | None = None) -> JobResult:
        from bridge.app.jam import run_jam  # noqa: PLC0415
        from bridge.engine.jam import Jam, JamSettings  # noqa: PLC0415

        settings = JamSettings(prompt=request.prompt,
                               **{"seed": secrets.randbits(31), **jam_fields(request)}).check()
        player = self.player() if request.play else None
        self._jam_stop.clear()
        self._jam = Jam(self.engine, settings)
        folder = self.output_dir / "jam" / (request.name or self._auto_stem(job_id, request))

        def stop() -> bool:
            return self._jam_stop.is_set()

        def warn(message: str) -> None:
            log.warning("jam %s: %s", job_id, message)
            if on_warning is not None:
                on_warning(message)

        def announce(index: int, path: Path, start: float) -> None:
            if on_chunk is not None:
                seconds = sf_frames(path) / self.engine.sample_rate
                on_chunk(Chunk(index=index, path=path, start_seconds=start, seconds=seconds))

        try:
            take = run_jam(self._jam, folder, lambda: stop() or is_cancelled(), player=player,
                           on_segment=announce, warn=warn)
        finally:
            self._jam = None
        if is_cancelled():
            from bridge.errors import Cancelled  # noqa: PLC0415

            raise Cancelled("the jam was cancelled")
        return JobResult(paths=[take.path], seconds=take.seconds, sample_rate=self.engine.sample_rate,
                         sidecars=[])

    # -- files ------------------------------------------------------------------------------
    def result_path(self, name: str, fmt: str) -> Path:
        """The path for a client-chosen file name: a name under the output folder, never a path."""
        if not _NAME_OK.match(name) or ".." in name:
            raise BadArgs(f"name {name!r} is not a plain file name: use letters, digits, spaces and ._()+- "
                          "(no folders, at most 120 characters)")
        stem = name[: -len(fmt) - 1] if name.lower().endswith("." + fmt) else name
        path = (self.output_dir / f"{stem}.{fmt}").resolve()
        if path.parent != self.output_dir.resolve():
            raise BadArgs(f"name {name!r} would leave the output folder: give a plain file name")
        return path

    def _auto_stem(self, job_id: str, request: Request) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", request.prompt.lower()).strip("-")[:40] or request.mode
        safe_id = re.sub(r"[^A-Za-z0-9_-]+", "", job_id)[:24]
        return f"{time.strftime('%Y%m%d-%H%M%S')}-{request.mode}-{slug}" + (f"-{safe_id}" if safe_id else "")

    def _unique(self, stem: str, fmt: str) -> Path:
        path = self.output_dir / f"{stem}.{fmt}"
        n = 2
        while path.exists():
            path = self.output_dir / f"{stem}-{n}.{fmt}"
            n += 1
        return path

    def _write(self, job_id: str, request: Request, plan: Plan, seed: int, clip: audio.Clip | None,
               outputs: list[np.ndarray], elapsed: float, stem: str) -> tuple[list[Path], list[Path]]:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        paths: list[Path] = []
        sidecars: list[Path] = []
        for i, data in enumerate(outputs):
            path = self._unique(stem if len(outputs) == 1 else f"{stem}-v{i + 1}", request.format)
            try:
                audio.write_atomic(path, data, plan.out_rate, request.format)
            except OSError as exc:
                raise Internal(f"could not write {path}: {exc}. Check the output folder's free space "
                               "and permissions") from exc
            sidecar = path.with_name(path.name + ".json")
            audio.write_json_atomic(sidecar, self._sidecar(job_id, request, plan, seed, clip, i, elapsed))
            paths.append(path)
            sidecars.append(sidecar)
        return paths, sidecars

    def _sidecar(self, job_id: str, request: Request, plan: Plan, seed: int, clip: audio.Clip | None,
                 variation: int, elapsed: float) -> dict[str, Any]:
        options = {k: v for k, v in dataclasses.asdict(request).items() if k not in ("extra",)}
        return {
            "bridge_version": __version__,
            "job_id": job_id,
            "model": self.engine.loaded.name,
            "device": str(self.engine.loaded.device),
            "dtype": str(self.engine.loaded.dtype).replace("torch.", ""),
            "mode": request.mode,
            "prompt": request.prompt,
            "text_sent_to_model": plan.text,
            "seed": seed,
            "variation": variation,
            "options": options,
            "tempo": {"bpm": request.bpm, "bars": request.bars, "beats_per_bar": request.beats_per_bar},
            "sample_rate": plan.out_rate,
            "samples": plan.out_samples,
            "seconds": plan.out_samples / plan.out_rate,
            "prompt_frames": plan.prompt_frames,
            "source_clip": None if clip is None else {"path": str(clip.path), "sha256": clip.sha256,
                                                      "sample_rate": clip.sample_rate, "samples": clip.samples},
            "generation_seconds": round(elapsed, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


def sf_frames(path: Path) -> int:
    import soundfile as sf  # noqa: PLC0415

    return int(sf.info(str(path)).frames)


class _ChunkWriter:
    """Streams one job: decodes chunks as frames complete, writes each, and joins them at the end.

    The final file is exactly the chunks joined: both come out of this one path.
    """

    def __init__(self, bridge: Bridge, request: Request, plan: Plan, clip: audio.Clip | None, stem: str,
                 on_chunk: Callable[[Chunk], None] | None) -> None:
        from bridge.engine.streaming import StreamingDecoder  # noqa: PLC0415

        self.bridge = bridge
        self.request = request
        self.plan = plan
        self.on_chunk = on_chunk
        self.channels = max(clip.data.shape[0], bridge.engine.channels) if (clip is not None and
                                                                             request.mode == "continue") else None
        self.decoder = StreamingDecoder(bridge.engine, start_frame=plan.prompt_frames, total_frames=plan.frames)
        self.folder = bridge.output_dir / "chunks" / stem
        self.pieces: list[np.ndarray] = []
        self.written = 0

    def _out_pos(self, frame: int) -> int:
        eng = self.bridge.engine
        return round(Fraction((frame - self.plan.prompt_frames) * eng.hop * self.plan.out_rate, eng.sample_rate))

    def on_frames(self, codes: Any, complete: int) -> None:
        for chunk in self.decoder.feed(codes, complete):
            self._emit(chunk)

    def _emit(self, chunk: Any) -> None:
        eng = self.bridge.engine
        plan = self.plan
        start, end = self._out_pos(chunk.start), min(self._out_pos(chunk.end), plan.out_samples)
        if start >= plan.out_samples or end <= start:
            return
        if plan.out_rate == eng.sample_rate:
            piece = chunk.audio[0][:, : end - start]
        else:
            region = audio.resample(chunk.context_audio[0], eng.sample_rate, plan.out_rate)
            region_start = self._out_pos(chunk.start - chunk.offset // eng.hop)
            piece = audio.fit_length(region[:, start - region_start :], end - start)
        if self.channels is not None:
            piece = audio.match_channels(piece, self.channels)
        head = start == 0 and self.request.mode != "continue"
        tail = end == plan.out_samples
        if head or tail:
            piece = audio.fade_edges(piece, plan.out_rate, head=head, tail=tail)
        piece = audio.soft_limit(piece)
        self.pieces.append(piece)
        path = self.folder / f"{chunk.index:04d}.{self.request.format}"
        audio.write_atomic(path, piece, plan.out_rate, self.request.format)
        if self.on_chunk is not None:
            self.on_chunk(Chunk(index=chunk.index, path=path, start_seconds=start / plan.out_rate,
                                seconds=(end - start) / plan.out_rate))
        self.written = end

    def finish(self, codes: Any) -> np.ndarray:
        self.on_frames(codes, self.plan.frames)
        if self.written < self.plan.out_samples:
            raise Internal(f"streaming produced {self.written} of {self.plan.out_samples} samples; "
                           "please report this with the job's options")
        return np.concatenate(self.pieces, axis=-1)
