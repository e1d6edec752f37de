"""The output folder's health: usable and big enough before a job runs, clean of dead temporaries at start.

:func:`check_output_folder` is what the CLI and the daemon call before generating: the folder
exists or can be made, is a folder, really takes a file, and has room for the asked audio (see
:func:`estimate_bytes`). Anything else is a :class:`~bridge.errors.StorageError` (wire code
``storage``) whose message says what to do. :func:`storage_error` turns an ``OSError`` met while
writing (a folder that vanished, a disk that filled up mid-job) into the same error.

:func:`remove_stale_temporaries` deletes what ``bridge.audio.write_atomic`` and
``write_json_atomic`` leave behind when the process dies mid-write: files named
``.partial-XXXXXXXX.wav|flac|json`` (``tempfile.mkstemp``'s 8 random characters). Nothing else
is touched, so a user's own files in the folder are safe.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from bridge.errors import StorageError

log = logging.getLogger(__name__)

TEMP_PREFIX = ".partial-"
"""The prefix ``bridge.audio.write_atomic`` and ``write_json_atomic`` give their temporary files."""

_STALE_TEMPORARY = re.compile(r"^\.partial-[a-z0-9_]{8}\.(wav|flac|json)$")
"""``TEMP_PREFIX`` + mkstemp's 8 characters (lowercase letters, digits, _) + the suffix they pass."""

FILE_OVERHEAD = 64 * 1024
"""Bytes per written file beyond its samples: the WAV or FLAC header and the JSON sidecar."""

RESERVE_BYTES = 16 * 1024 * 1024
"""Free space left untouched after a job, so the job journal and the sidecars can still be written."""

BYTES_PER_SAMPLE = {"wav": 4, "flac": 4}
"""Bytes per sample on disk: WAV is 32-bit float; FLAC is 24-bit, counted as 4 for its worst case."""


class DiskUsage(NamedTuple):
    total: int
    used: int
    free: int


DiskUsageFn = Callable[[str], DiskUsage]


def _disk_usage(path: str) -> DiskUsage:
    usage = shutil.disk_usage(path)
    return DiskUsage(usage.total, usage.used, usage.free)


def estimate_bytes(samples: int, channels: int, *, variations: int = 1, fmt: str = "wav", copies: int = 1) -> int:
    """About how many bytes a job writes: samples x channels x bytes per sample x variations, plus headers.

    ``copies`` counts the audio written more than once (2 when streaming: the chunks and the joined
    file; a continuation with ``include_prompt`` passes the clip's samples in ``samples`` too). An
    eighth is added for what the estimate does not see (a resampler's margin, a filesystem's blocks).
    """
    files = max(1, variations) * max(1, copies)
    audio = max(0, samples) * max(1, channels) * BYTES_PER_SAMPLE.get(fmt, 4) * files
    return audio + audio // 8 + files * FILE_OVERHEAD


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def check_output_folder(folder: Path | str, need_bytes: int = 0, *,
                        disk_usage: DiskUsageFn = _disk_usage) -> Path:
    """Make sure results can be written under ``folder``; return it resolved.

    Creates the folder (and its parents) when missing, writes and removes a probe file (so a
    read-only disk, a full inode table or a procfs path fails here, whatever the permission bits
    say), and checks that ``need_bytes`` plus a reserve are free. Raises StorageError saying what to do.
    """
    path = Path(os.path.expanduser(str(folder))).resolve()
    if path.exists() and not path.is_dir():
        raise StorageError(f"the output folder {path} is a file, not a folder: move the file away or give "
                           "--output-dir another folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(exc, path, "create the output folder") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=path)
    except OSError as exc:
        raise storage_error(exc, path, "write in the output folder") from None
    try:
        os.write(fd, b"x")
    except OSError as exc:
        raise storage_error(exc, path, "write in the output folder") from None
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(probe)
    try:
        usage = disk_usage(str(path))
    except OSError as exc:
        raise storage_error(exc, path, "see the free space of the output folder") from None
    if need_bytes > 0 and usage.free < need_bytes + RESERVE_BYTES:
        raise StorageError(f"not enough space in {path}: {_mb(usage.free)} free, and this job needs about "
                           f"{_mb(need_bytes)} plus {_mb(RESERVE_BYTES)} kept free: free some space, ask for less "
                           "audio, or give --output-dir a folder on another disk")
    return path


def storage_error(exc: BaseException, path: Path | str, doing: str = "write") -> StorageError:
    """The StorageError for a failure met while trying to ``doing`` at ``path``, saying what to do.

    An ``OSError`` tells its cause by its errno. Other writers do not: libsndfile reports a full disk
    as ``soundfile.LibsndfileError("System error.")``, a RuntimeError. For those, the folder is
    looked at (missing, full, not writable) to say which it was.
    """
    reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
    code = exc.errno if isinstance(exc, OSError) else _diagnose(Path(path))
    virtual = _virtual_filesystem(Path(path))
    if virtual is not None:  # the OS's own words ("No such file or directory") would not be true here
        return StorageError(f"cannot {doing} {path}: {virtual} is on a filesystem that holds no files (a system "
                            "folder like /proc or /sys): give --output-dir a folder on a disk")
    if code in (errno.ENOSPC, errno.EDQUOT):
        advice = "the disk is full: free some space or give --output-dir a folder on another disk"
    elif code == errno.ENOENT:
        advice = ("the folder (or one above it) does not exist and cannot be made here: create it, or give "
                  "--output-dir a folder you can write")
    elif code == errno.ENOTDIR:
        advice = "a file stands where a folder should be: move it away or give --output-dir another folder"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = "the folder is not writable: fix its permissions, or give --output-dir a folder you can write"
    else:
        advice = "check the disk and the folder, or give --output-dir another folder"
    return StorageError(f"cannot {doing} {path}: {reason}; {advice}")


def _virtual_filesystem(path: Path) -> Path | None:
    """The nearest existing folder at or above ``path`` when it is on a filesystem without blocks (procfs,
    sysfs: files there are the kernel's, never the user's), else None."""
    for folder in (path, *path.parents):
        try:
            if folder.is_dir():
                return folder if os.statvfs(folder).f_blocks == 0 else None
        except OSError:
            return None
    return None


def _diagnose(path: Path) -> int | None:
    """The errno that best explains why writing at ``path`` (a file or a folder) failed, or None."""
    folder = path if path.is_dir() else path.parent
    if not folder.exists():
        return errno.ENOENT
    if not folder.is_dir():
        return errno.ENOTDIR
    try:
        if _disk_usage(str(folder)).free < RESERVE_BYTES:
            return errno.ENOSPC
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder)
    except OSError as exc:
        return exc.errno
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return None


def remove_stale_temporaries(folder: Path | str, *, older_than: float | None = None) -> list[Path]:
    """Delete the temporary files a dead writer left under ``folder`` (recursively); return them.

    Only names ``write_atomic`` / ``write_json_atomic`` make are removed; links are not followed.
    With ``older_than`` (a ``time.time()``, e.g. when the daemon started) a temporary touched
    since then is kept, in case another process is writing it right now. A missing folder is empty.
    """
    root = Path(os.path.expanduser(str(folder)))
    removed: list[Path] = []
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            if not _STALE_TEMPORARY.match(name):
                continue
            path = Path(dirpath) / name
            try:
                info = path.lstat()
                if not stat.S_ISREG(info.st_mode):
                    continue
                if older_than is not None and info.st_mtime >= older_than:
                    continue
                path.unlink()
            except FileNotFoundError:
                continue  # someone else removed it first
            except OSError as exc:
                log.warning("could not remove the stale temporary file %s: %s; delete it by hand", path,
                            exc.strerror or exc)
                continue
            removed.append(path)
    return sorted(removed)
