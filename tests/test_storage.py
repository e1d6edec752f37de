"""The output folder's checks and the clean-up of dead writers' temporaries (issue 12), on real folders."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from bridge import audio
from bridge.app.storage import (
    RESERVE_BYTES,
    DiskUsage,
    check_output_folder,
    estimate_bytes,
    remove_stale_temporaries,
    storage_error,
)
from bridge.errors import StorageError

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def tmpfs(where: Path, *options: str):
    """A real tmpfs mounted at ``where`` (root only); the test is skipped where mounting is not allowed."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(where)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not root'})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def test_a_missing_folder_and_its_parents_are_made(tmp_path):
    folder = tmp_path / "a" / "b" / "out"
    assert check_output_folder(folder, 1000) == folder.resolve()
    assert folder.is_dir() and list(folder.iterdir()) == []  # the probe file is gone again


def test_a_file_where_the_folder_should_be_is_refused(tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(StorageError, match="is a file, not a folder") as caught:
        check_output_folder(tmp_path / "out")
    assert caught.value.code == "storage" and "--output-dir" in caught.value.message


def test_a_file_as_a_parent_is_refused_and_nothing_is_made(tmp_path):
    (tmp_path / "file").write_text("a file")
    with pytest.raises(StorageError, match="a file stands where a folder should be"):
        check_output_folder(tmp_path / "file" / "out")
    assert (tmp_path / "file").read_text() == "a file"


def test_a_procfs_path_is_refused_at_once_even_for_root():
    # the example: /proc says it is writable (os.access is True for root) but takes no folder
    name = f"/proc/musicgen-bridge-{uuid.uuid4().hex[:8]}"
    with pytest.raises(StorageError, match="cannot create the output folder") as caught:
        check_output_folder(name)
    assert name in caught.value.message


def test_a_folder_that_takes_no_file_is_refused_whatever_its_permission_bits_say():
    # /proc exists and is a folder, and os.access says root may write it: only really trying tells
    assert os.path.isdir("/proc")
    with pytest.raises(StorageError, match="cannot write in the output folder /proc"):
        check_output_folder("/proc")


def test_a_read_only_mount_is_refused(tmp_path):
    with tmpfs(tmp_path / "ro", "size=1m", "ro") as folder:
        with pytest.raises(StorageError, match="not writable") as caught:
            check_output_folder(folder)
        assert "Read-only file system" in caught.value.message


def test_a_full_tmpfs_is_refused_before_generating(tmp_path):
    with tmpfs(tmp_path / "small", "size=256k") as folder:
        need = estimate_bytes(samples=32000 * 10, channels=1)  # 10 s at 32 kHz: about 1.5 MB
        with pytest.raises(StorageError, match="not enough space") as caught:
            check_output_folder(folder, need)
        assert "free some space" in caught.value.message
        check_output_folder(folder, 0)  # no length asked: only usable is checked


def test_a_write_that_fills_the_disk_leaves_no_partial_file_and_maps_to_storage(tmp_path):
    with tmpfs(tmp_path / "small", "size=128k") as folder:
        target = folder / "result.wav"
        # libsndfile reports ENOSPC as LibsndfileError("System error."), a RuntimeError, not an OSError
        with pytest.raises((OSError, RuntimeError)) as raised:
            audio.write_atomic(target, np.zeros((1, 320_000), dtype=np.float32), 32000)
        error = storage_error(raised.value, target)
        assert error.code == "storage" and "disk is full" in error.message
        assert list(folder.iterdir()) == []  # neither the result nor a temporary is left


def test_a_folder_that_vanished_mid_job_says_so(tmp_path):
    gone = tmp_path / "out"
    error = storage_error(RuntimeError("System error."), gone / "result.wav")
    assert error.code == "storage" and "does not exist" in error.message and "System error." in error.message
    error = storage_error(FileNotFoundError(2, "No such file or directory"), gone / "result.wav.json")
    assert "does not exist" in error.message


def test_free_space_is_compared_with_the_estimate_plus_a_reserve(tmp_path):
    need = estimate_bytes(samples=48000 * 30, channels=2, variations=2)
    assert need >= 48000 * 30 * 2 * 4 * 2

    def usage(free: int):
        return lambda _path: DiskUsage(total=10**12, used=0, free=free)

    check_output_folder(tmp_path, need, disk_usage=usage(need + RESERVE_BYTES))
    with pytest.raises(StorageError, match=r"not enough space .*MB free"):
        check_output_folder(tmp_path, need, disk_usage=usage(need + RESERVE_BYTES - 1))


def test_the_estimate_counts_channels_variations_copies_and_headers():
    one = estimate_bytes(samples=1000, channels=1)
    assert estimate_bytes(samples=1000, channels=2) > one
    assert estimate_bytes(samples=1000, channels=1, variations=3) >= 3 * one - 3
    assert estimate_bytes(samples=1000, channels=1, copies=2) >= 2 * one - 2
    assert estimate_bytes(samples=0, channels=1) > 0  # headers and sidecars still take room


def _die_mid_write(folder: Path, which: str) -> Path:
    """Run write_atomic / write_json_atomic in a child that is killed halfway; return the folder it wrote in."""
    code = textwrap.dedent("""
        import json, os, signal, sys
        from pathlib import Path
        import numpy as np
        import soundfile as sf
        from bridge import audio

        def die(*args, **kwargs):
            target = args[0] if isinstance(args[0], str) else args[1].name
            with open(target, "ab") as fh:
                fh.write(b"half a file")
            os.kill(os.getpid(), signal.SIGKILL)

        folder = Path(sys.argv[1])
        folder.mkdir(parents=True, exist_ok=True)
        if sys.argv[2] == "wav":
            sf.write = die
            audio.write_atomic(folder / "take.wav", np.zeros((1, 100), np.float32), 8000)
        elif sys.argv[2] == "flac":
            sf.write = die
            audio.write_atomic(folder / "take.flac", np.zeros((1, 100), np.float32), 8000, "flac")
        else:
            json.dump = die
            audio.write_json_atomic(folder / "take.wav.json", {"a": 1})
    """)
    child = subprocess.run([sys.executable, "-c", code, str(folder), which], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                           capture_output=True, text=True, timeout=60, check=False)
    assert child.returncode == -9, child.stderr
    return folder


def test_temporaries_of_writers_killed_mid_write_are_removed_and_results_kept(tmp_path):
    out = tmp_path / "out"
    _die_mid_write(out, "wav")
    _die_mid_write(out / "chunks" / "piece", "flac")
    _die_mid_write(out / "jam" / "take", "json")
    left = sorted(p.relative_to(out) for p in out.rglob(".partial-*"))
    assert len(left) == 3  # the dead writers really left their temporaries behind
    result = audio.write_atomic(out / "result.wav", np.zeros((1, 100), np.float32), 8000)
    sidecar = audio.write_json_atomic(out / "result.wav.json", {"seed": 1})
    user_files = [out / ".partial-notes.txt", out / "partial-abcdefgh.wav", out / ".partial-toolongname1.wav"]
    for path in user_files:
        path.write_text("the user's")

    removed = remove_stale_temporaries(out)
    assert sorted(p.relative_to(out) for p in removed) == left
    assert sorted(out.rglob(".partial-*")) == [out / ".partial-notes.txt", out / ".partial-toolongname1.wav"]
    assert result.exists() and sidecar.exists() and all(p.read_text() == "the user's" for p in user_files)
    assert remove_stale_temporaries(out) == []


def test_a_temporary_touched_since_the_daemon_started_is_kept(tmp_path):
    out = _die_mid_write(tmp_path / "out", "wav")
    (stale,) = out.glob(".partial-*")
    started = time.time()
    os.utime(stale, (started - 60, started - 60))
    fresh = out / ".partial-abcd1234.wav"
    fresh.write_bytes(b"being written right now")
    assert remove_stale_temporaries(out, older_than=started) == [stale]
    assert fresh.exists()


def test_a_missing_folder_has_no_temporaries(tmp_path):
    assert remove_stale_temporaries(tmp_path / "nothing-here") == []

