"""Audio in and out: reading clips, resampling, channel matching, fades, crossfades, loudness, atomic writes."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from bridge.errors import BadArgs, BadAudio, NotFound

MAX_CLIP_SECONDS = 600.0
MAX_CLIP_RATE = 384_000  # the highest rate a DAW records at; a header above it is not audio to trust
MAX_CLIP_CHANNELS = 8
FADE_SECONDS = 0.005
PEAK_CEILING = 10 ** (-1.0 / 20)  # -1 dBFS
LUFS_TARGET = -14.0
_HASH_BLOCK = 1 << 20


@dataclass(frozen=True)
class ClipInfo:
    """What a clip's header says, checked before a sample is read (see :func:`probe_clip`)."""

    path: Path
    sample_rate: int
    frames: int
    channels: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


@dataclass(frozen=True)
class Clip:
    """A user's audio file, read: ``data`` is (channels, samples) float32.

    ``data`` may be only the file's end (:func:`read_clip` with ``tail_seconds``): ``samples`` is
    what is held, ``frames`` and ``seconds`` the whole file's length.
    """

    path: Path
    data: np.ndarray
    sample_rate: int
    sha256: str
    file_frames: int | None = None

    @property
    def samples(self) -> int:
        return int(self.data.shape[1])

    @property
    def frames(self) -> int:
        return self.samples if self.file_frames is None else self.file_frames

    @property
    def channels(self) -> int:
        return int(self.data.shape[0])

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def probe_clip(path: str | os.PathLike[str], max_seconds: float = MAX_CLIP_SECONDS) -> ClipInfo:
    """Read a clip's header only and refuse what is not sane audio, with the reason (nothing is decoded)."""
    import soundfile as sf  # noqa: PLC0415

    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise NotFound(f"clip {p} does not exist: check the path (the daemon resolves it on its own machine)")
    if not p.is_file():
        raise BadAudio(f"clip {p} is not a file: give the path of an audio file")
    try:
        info = sf.info(str(p))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise BadAudio(f"clip {p} is not readable audio ({exc}): export it as WAV or FLAC") from None
    if info.frames <= 0:
        raise BadAudio(f"clip {p} is empty: it has no samples")
    if not 1 <= info.samplerate <= MAX_CLIP_RATE:
        raise BadAudio(f"clip {p} says it runs at {info.samplerate} Hz, outside 1 to {MAX_CLIP_RATE} Hz: its header "
                       "is damaged or it is not a recording; export it again as WAV or FLAC at 44100 or 48000 Hz")
    if not 1 <= info.channels <= MAX_CLIP_CHANNELS:
        raise BadAudio(f"clip {p} has {info.channels} channels; the bridge reads up to {MAX_CLIP_CHANNELS}: mix it "
                       "down to stereo or mono")
    if info.frames / info.samplerate > max_seconds:
        raise BadAudio(
            f"clip {p} is {info.frames / info.samplerate:.0f} s long, over the {max_seconds:.0f} s limit: "
            "trim it to the part you want continued"
        )
    return ClipInfo(path=p, sample_rate=int(info.samplerate), frames=int(info.frames), channels=int(info.channels))


def read_clip(path: str | os.PathLike[str], max_seconds: float = MAX_CLIP_SECONDS,
              tail_seconds: float | None = None) -> Clip:
    """Read any file libsndfile can read; refuse what is not sane audio with the reason.

    With ``tail_seconds``, only the file's last ``tail_seconds`` are decoded (a continuation's
    prompt), so a long or fast clip costs what the prompt needs, not the whole file.
    """
    import soundfile as sf  # noqa: PLC0415

    info = probe_clip(path, max_seconds)
    p = info.path
    start = 0
    if tail_seconds is not None:
        start = max(0, info.frames - math.ceil(tail_seconds * info.sample_rate))
    try:
        data, rate = sf.read(str(p), dtype="float32", always_2d=True, start=start)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise BadAudio(f"clip {p} could not be decoded ({exc}): export it as WAV or FLAC") from None
    if data.shape[0] == 0:
        raise BadAudio(f"clip {p} holds no samples where its header says it has {info.frames}: re-export it")
    if not np.isfinite(data).all():
        raise BadAudio(f"clip {p} holds NaN or infinite samples: re-export it")
    return Clip(path=p.resolve(), data=np.ascontiguousarray(data.T), sample_rate=int(rate), sha256=file_sha256(p),
                file_frames=start + int(data.shape[0]))


def file_sha256(path: Path) -> str:
    """The file's SHA-256, read in blocks (a clip's hash never holds the whole file in memory)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def resample(data: np.ndarray, rate_from: int, rate_to: int) -> np.ndarray:
    """Band-limited polyphase resampling along the last axis (exact length ratio where possible)."""
    if rate_from == rate_to:
        return data
    from scipy.signal import resample_poly  # noqa: PLC0415

    ratio = Fraction(rate_to, rate_from)
    out = resample_poly(data, ratio.numerator, ratio.denominator, axis=-1)
    return np.ascontiguousarray(out, dtype=np.float32)


def resampled_length(samples: int, rate_from: int, rate_to: int) -> int:
    """Length scipy's ``resample_poly`` produces for ``samples`` samples."""
    ratio = Fraction(rate_to, rate_from)
    return math.ceil(samples * ratio.numerator / ratio.denominator)


class StreamResampler:
    """Polyphase resampling of a stream in pieces, equal to resampling it in one go (up to float error).

    Keeps a left context and holds back a right context of input, so every output sample is computed
    with the same neighbours as in a one-shot ``resample_poly``.
    """

    def __init__(self, rate_from: int, rate_to: int, channels: int, context: int = 1024) -> None:
        ratio = Fraction(rate_to, rate_from)
        self.up, self.down = ratio.numerator, ratio.denominator
        self.context = math.ceil(context / self.down) * self.down
        self.history = np.zeros((channels, 0), dtype=np.float32)
        self.pending = np.zeros((channels, 0), dtype=np.float32)

    def _run(self, n: int, right: np.ndarray) -> np.ndarray:
        from scipy.signal import resample_poly  # noqa: PLC0415

        block = np.concatenate([self.history, self.pending[:, :n], right], axis=1)
        out = resample_poly(block, self.up, self.down, axis=1)
        left = self.history.shape[1] * self.up // self.down
        result = np.ascontiguousarray(out[:, left : left + n * self.up // self.down], dtype=np.float32)
        self.history = np.concatenate([self.history, self.pending[:, :n]], axis=1)[:, -self.context :]
        self.pending = self.pending[:, n:]
        return result

    def push(self, data: np.ndarray) -> np.ndarray:
        if self.up == self.down:
            return data
        self.pending = np.concatenate([self.pending, data.astype(np.float32)], axis=1)
        n = (self.pending.shape[1] - self.context) // self.down * self.down
        if n <= 0:
            return np.zeros((data.shape[0], 0), dtype=np.float32)
        return self._run(n, self.pending[:, n : n + self.context])

    def flush(self) -> np.ndarray:
        if self.up == self.down or self.pending.shape[1] == 0:
            return np.zeros((self.pending.shape[0], 0), dtype=np.float32)
        n = self.pending.shape[1]
        pad = (-n) % self.down
        self.pending = np.concatenate([self.pending, np.zeros((self.pending.shape[0], pad), np.float32)], axis=1)
        out = self._run(n + pad, np.zeros((self.pending.shape[0], 0), dtype=np.float32))
        return out[:, : math.ceil(n * self.up / self.down)]


def match_channels(data: np.ndarray, channels: int) -> np.ndarray:
    """Mix down to mono, or copy mono to both sides of a stereo pair."""
    have = data.shape[0]
    if have == channels:
        return data
    if channels == 1:
        return data.mean(axis=0, keepdims=True)
    if have == 1:
        return np.repeat(data, channels, axis=0)
    return data[:channels] if have > channels else np.concatenate([data, data[-1:]], axis=0)


def fit_length(data: np.ndarray, samples: int) -> np.ndarray:
    """Cut (or pad with silence) to exactly ``samples`` samples."""
    have = data.shape[-1]
    if have >= samples:
        return data[..., :samples]
    pad = np.zeros((*data.shape[:-1], samples - have), dtype=data.dtype)
    return np.concatenate([data, pad], axis=-1)


def fade_edges(data: np.ndarray, rate: int, head: bool = True, tail: bool = True,
               seconds: float = FADE_SECONDS) -> np.ndarray:
    """A few-millisecond raised-cosine fade on cut ends, so they do not click."""
    n = min(int(rate * seconds), data.shape[-1] // 2)
    if n < 2:
        return data
    out = data.copy()
    ramp = (0.5 - 0.5 * np.cos(np.linspace(0.0, math.pi, n, dtype=np.float64))).astype(np.float32)
    if head:
        out[..., :n] *= ramp
    if tail:
        out[..., -n:] *= ramp[::-1]
    return out


def crossfade_into(before: np.ndarray, after: np.ndarray, overlap: int) -> np.ndarray:
    """Blend the last ``overlap`` samples of ``before`` into ``after``'s first ones (equal power)."""
    overlap = min(overlap, before.shape[-1], after.shape[-1])
    if overlap <= 0:
        return np.concatenate([before, after], axis=-1)
    t = np.linspace(0.0, 1.0, overlap, dtype=np.float64)
    fade_in = np.sin(t * math.pi / 2).astype(np.float32)
    fade_out = np.cos(t * math.pi / 2).astype(np.float32)
    mixed = before[..., -overlap:] * fade_out + after[..., :overlap] * fade_in
    return np.concatenate([before[..., :-overlap], mixed, after[..., overlap:]], axis=-1)


def _loudness_lufs(data: np.ndarray, rate: int) -> float:
    """Integrated loudness after ITU-R BS.1770 K-weighting, with the -70 LUFS absolute gate."""
    from scipy.signal import lfilter  # noqa: PLC0415

    # K-weighting as two biquads, coefficients derived for the actual rate (pyloudnorm's formulas)
    def shelf(g: float, q: float, fc: float) -> tuple[np.ndarray, np.ndarray]:
        a = 10 ** (g / 40)
        w0 = 2 * math.pi * fc / rate
        alpha = math.sin(w0) / (2 * q)
        cos = math.cos(w0)
        b = np.array([a * ((a + 1) + (a - 1) * cos + 2 * math.sqrt(a) * alpha),
                      -2 * a * ((a - 1) + (a + 1) * cos),
                      a * ((a + 1) + (a - 1) * cos - 2 * math.sqrt(a) * alpha)])
        den = np.array([(a + 1) - (a - 1) * cos + 2 * math.sqrt(a) * alpha,
                        2 * ((a - 1) - (a + 1) * cos),
                        (a + 1) - (a - 1) * cos - 2 * math.sqrt(a) * alpha])
        return b / den[0], den / den[0]

    def highpass(q: float, fc: float) -> tuple[np.ndarray, np.ndarray]:
        w0 = 2 * math.pi * fc / rate
        alpha = math.sin(w0) / (2 * q)
        cos = math.cos(w0)
        b = np.array([(1 + cos) / 2, -(1 + cos), (1 + cos) / 2])
        den = np.array([1 + alpha, -2 * cos, 1 - alpha])
        return b / den[0], den / den[0]

    b1, a1 = shelf(4.0, 1 / math.sqrt(2), 1500.0)
    b2, a2 = highpass(0.5, 38.0)
    weighted = lfilter(b2, a2, lfilter(b1, a1, data.astype(np.float64), axis=-1), axis=-1)
    block, step = int(0.4 * rate), int(0.1 * rate)
    if weighted.shape[-1] < block:
        power = float((weighted**2).mean(axis=-1).sum())
        return -0.691 + 10 * math.log10(max(power, 1e-12))
    powers = np.array([(weighted[..., s : s + block] ** 2).mean(axis=-1).sum()
                       for s in range(0, weighted.shape[-1] - block + 1, step)])
    gated = powers[powers > 10 ** ((-70 + 0.691) / 10)]
    if gated.size == 0:
        return -70.0
    relative = -0.691 + 10 * math.log10(gated.mean()) - 10
    gated = gated[-0.691 + 10 * np.log10(gated) > relative]
    return -0.691 + 10 * math.log10(max(float(gated.mean()), 1e-12))


def normalize(data: np.ndarray, rate: int, mode: str) -> np.ndarray:
    """``off`` (only keeps it from clipping), ``peak`` (-1 dBFS) or ``lufs`` (-14 LUFS, peak-limited)."""
    out = data.astype(np.float32, copy=True)
    peak = float(np.abs(out).max()) if out.size else 0.0
    if mode == "peak" and peak > 0:
        out *= PEAK_CEILING / peak
    elif mode == "lufs" and peak > 0:
        gain = 10 ** ((LUFS_TARGET - _loudness_lufs(out, rate)) / 20)
        out *= gain
    elif mode not in ("off", "peak", "lufs"):
        raise BadArgs(f"normalize must be off, peak or lufs, got {mode!r}")
    peak = float(np.abs(out).max()) if out.size else 0.0
    if peak > PEAK_CEILING:
        out *= PEAK_CEILING / peak  # never clip, whatever the mode
    return out


def soft_limit(data: np.ndarray, ceiling: float = PEAK_CEILING) -> np.ndarray:
    """Leave samples under ``ceiling`` untouched and bend the rest smoothly below 1.0.

    Sample by sample, so streamed chunks get exactly what the whole piece would.
    """
    over = np.abs(data) > ceiling
    if not over.any():
        return data
    out = data.copy()
    headroom = 1.0 - ceiling
    excess = np.abs(out[over]) - ceiling
    out[over] = np.sign(out[over]) * (ceiling + headroom * np.tanh(excess / headroom))
    return out


def _temporary_beside(path: Path, suffix: str) -> str:
    """An empty file named for ``path``'s folder's clean-up (``bridge.app.storage``) to find if a writer dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".partial-", suffix=suffix, dir=path.parent)
    os.close(fd)
    return tmp


def write_atomic(path: Path, data: np.ndarray, rate: int, fmt: str = "wav") -> Path:
    """Write (channels, samples) audio under a temporary name in the same folder, then rename."""
    import soundfile as sf  # noqa: PLC0415

    subtype = "FLOAT" if fmt == "wav" else "PCM_24"
    tmp = _temporary_beside(path, f".{fmt}")
    try:
        sf.write(tmp, np.ascontiguousarray(data.T), rate, subtype=subtype, format=fmt.upper())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class StreamWriter:
    """Audio written piece by piece to one or more files, each under a temporary name in its folder and
    renamed into place by :meth:`close`: memory stays one piece however long the stream runs (a jam's
    take), and no reader ever sees half a file. :meth:`abort` removes the temporaries; what a crash
    leaves is removed at the next start, as for :func:`write_atomic`.
    """

    def __init__(self, paths: list[Path], rate: int, channels: int) -> None:
        import soundfile as sf  # noqa: PLC0415

        self.paths = list(paths)
        self.frames = 0
        self._files: list[tuple[Any, Path]] = []
        try:
            for path in self.paths:
                tmp = _temporary_beside(path, ".wav")
                try:
                    handle = sf.SoundFile(tmp, "w", rate, channels, subtype="FLOAT", format="WAV")
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
                self._files.append((handle, Path(tmp)))
        except BaseException:
            self.abort()
            raise

    def write(self, data: np.ndarray) -> None:
        """Append (channels, samples) audio to every file."""
        frames = np.ascontiguousarray(data.T)
        for handle, _ in self._files:
            handle.write(frames)
        self.frames += data.shape[-1]

    def close(self) -> None:
        """Finish every file and put it in place."""
        files, self._files = self._files, []
        for (handle, tmp), path in zip(files, self.paths, strict=True):
            handle.close()
            os.replace(tmp, path)

    def abort(self) -> None:
        files, self._files = self._files, []
        for handle, tmp in files:
            handle.close()
            tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, payload: dict[str, Any]) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=".partial-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2, sort_keys=True, default=str)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
