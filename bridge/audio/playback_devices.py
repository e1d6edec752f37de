"""Output devices: what ``--audio-device`` means, and listing devices by asking a fresh playback child."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bridge.audio.playback_child import OutputInfo
from bridge.errors import NoAudioDevice

__all__ = ["OutputInfo", "child_command", "list_devices", "parse_device"]


def parse_device(value: str | int | None) -> str | int | None:
    """``--audio-device`` as sounddevice takes it: an index (``"3"``) or a part of the name (``"system"``)."""
    if value is None or isinstance(value, int):
        return value
    text = value.strip()
    if not text:
        return None
    if text.lstrip("-").isdigit():
        return int(text)
    return text



def child_command(*args: str) -> tuple[list[str], dict[str, str]]:
    """``python -m bridge.audio.playback_child``, importing this very copy of the package (a checkout or an install)."""
    env = dict(os.environ)
    package_root = Path(__file__).resolve().parents[2]
    if package_root.name not in ("site-packages", "dist-packages"):  # never put site-packages before the stdlib
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(package_root), env.get("PYTHONPATH", "")) if p)
    return [sys.executable, "-m", "bridge.audio.playback_child", *args], env


def list_devices(timeout: float = 15.0) -> list[OutputInfo]:
    """The output devices PortAudio sees now (asked in a fresh process, so a JACK server started late shows up).

    Raises NoAudioDevice when PortAudio itself cannot be loaded; no devices at all is an empty list.
    """
    command, env = child_command("--list")
    try:
        done = subprocess.run(command, env=env, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise NoAudioDevice(f"listing audio devices took over {timeout:.0f} s (is the audio server stuck?): "
                            "restart it and try again") from None
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise NoAudioDevice(f"the audio device lister failed with code {done.returncode} ({tail[0]}): "
                            "check that PortAudio (libportaudio2) is installed") from None
    if "error" in answer:
        raise NoAudioDevice(answer["error"])
    return [OutputInfo(**d) for d in answer["devices"]]

