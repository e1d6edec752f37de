"""The fake Live the Remote Script's tests use has Live's own API, as ableton-live-stubs (made from a
running Live 12.3) records it, for every name the script uses: same methods with the same numbers
of arguments, same properties (settable where the script sets them).
"""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path

import pytest
from ableton import fake_live

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "daw_scripts" / "ableton" / "MusicGenBridge"
STUBS = next((Path(p) / "Live-stubs" for p in sys.path if (Path(p) / "Live-stubs").is_dir()), None)  # read, not imported
pytestmark = pytest.mark.skipif(STUBS is None, reason="pip install ableton-live-stubs (in the test extra)")

# fake class -> (stub module, stub class); the full-featured fakes (Live 12.2+)
PAIRS = [
    (fake_live.Song, "Song", "Song"),
    (fake_live.TrackCreatingAudio, "Track", "Track"),
    (fake_live.ClipSlotCreatingAudio, "ClipSlot", "ClipSlot"),
    (fake_live.Clip, "Clip", "Clip"),
    (fake_live.WarpMarker, "Clip", "WarpMarker"),
]


def _stub_members(module: str, name: str) -> dict[str, tuple[str, int]]:
    """``{member: ("method", positional count without self) | ("property", 0) | ("settable", 0)}``."""
    assert STUBS is not None  # (the module is skipped without them)
    tree = ast.parse((STUBS / f"{module}.pyi").read_text(encoding="utf-8"))
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name]
    members: dict[str, tuple[str, int]] = {}
    for node in cls.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        decorators = [ast.unparse(d) for d in node.decorator_list]
        if "property" in decorators:
            members[node.name] = ("property", 0)
        elif any(d.endswith(".setter") for d in decorators):
            members[node.name] = ("settable", 0)
        else:
            args = node.args
            members[node.name] = ("method", len(args.posonlyargs) + len(args.args) - 1)
    return members


def _fake_members(cls: type) -> dict[str, tuple[str, int]]:
    members: dict[str, tuple[str, int]] = {}
    for name, value in inspect.getmembers(cls):
        if name.startswith("_") and name != "__init__":
            continue
        if isinstance(value, property):
            members[name] = ("settable" if value.fset is not None else "property", 0)
        elif callable(value):
            params = list(inspect.signature(value).parameters.values())[1:]
            members[name] = ("method", len([p for p in params if p.kind is not p.VAR_KEYWORD]))
    return members


def _script_names() -> set[str]:
    """Every attribute name the script reads, sets or calls (its own classes' attributes left out),
    every ``add_*_listener``/``remove_*_listener`` it builds, and every name it asks ``hasattr`` about."""
    found: set[str] = set()
    own: set[str] = set()
    for path in SCRIPT.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for cls in [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]:
            own |= {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
            own |= {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
            own |= {n.attr for n in ast.walk(cls) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
                    and isinstance(n.value, ast.Name) and n.value.id == "self"}
        found |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        for call in [n for n in ast.walk(tree) if isinstance(n, ast.Call) and len(n.args) > 1]:
            named = call.args[1]
            if not isinstance(named, ast.Constant) or not isinstance(named.value, str):
                continue
            called = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
            if called == "_listen":  # self._listen(clip, "name", ...): add_name_listener, remove_name_listener
                found |= {f"add_{named.value}_listener", f"remove_{named.value}_listener"}
            elif called == "hasattr":
                found.add(named.value)
    return found - (own - {"name", "clip"})  # names both the script's objects and Live's have


# What the script uses of each Live class (kept honest by the last test below).
USES = {
    "Song": {"tempo", "is_ableton_link_enabled", "signature_numerator", "signature_denominator", "tracks", "scenes", "create_audio_track",
             "create_scene", "add_tracks_listener", "remove_tracks_listener", "add_scenes_listener",
             "remove_scenes_listener", "is_playing", "add_is_playing_listener", "remove_is_playing_listener",
             "current_song_time", "record_mode", "root_note", "scale_name"},
    "Track": {"name", "has_audio_input", "is_foldable", "is_frozen", "clip_slots", "arrangement_clips",
              "create_audio_clip", "delete_clip", "add_arrangement_clips_listener", "remove_arrangement_clips_listener"},
    "ClipSlot": {"has_clip", "clip", "create_audio_clip", "add_has_clip_listener", "remove_has_clip_listener"},
    "Clip": {"name", "is_audio_clip", "file_path", "length", "warping", "start_time", "end_time", "is_playing",
             "looping", "loop_start", "loop_end", "start_marker", "end_marker", "sample_length", "sample_rate",
             "warp_markers", "add_warp_marker", "remove_warp_marker", "add_name_listener", "remove_name_listener",
             "add_playing_status_listener", "remove_playing_status_listener"},
    "WarpMarker": {"__init__", "beat_time", "sample_time"},
}
SETS = {"Track": {"name"}, "Clip": {"name", "warping", "looping", "loop_start", "loop_end", "start_marker", "end_marker"}}


@pytest.mark.parametrize(("fake", "module", "name"), PAIRS, ids=[p[2] for p in PAIRS])
def test_the_fake_has_lives_signatures_for_what_the_script_uses(fake, module, name):
    stub, mine = _stub_members(module, name), _fake_members(fake)
    for member in sorted(USES[name]):
        assert member in stub, f"the script uses {name}.{member}, which Live 12.3 does not have"
        assert member in mine, f"the script uses {name}.{member} and the fake lacks it"
        if stub[member][0] == "method":
            assert mine[member] == stub[member], f"{name}.{member}: Live's is {stub[member]}, the fake's {mine[member]}"
        else:
            assert mine[member][0] in ("property", "settable"), f"{name}.{member} is a property in Live"
    for member in sorted(SETS.get(name, set())):
        assert stub[member][0] == mine[member][0] == "settable", f"{name}.{member} is set by the script"


@pytest.mark.parametrize(("fake", "module", "name"), PAIRS, ids=[p[2] for p in PAIRS])
def test_the_fake_has_nothing_live_lacks(fake, module, name):
    stub = _stub_members(module, name)
    for member, (kind, count) in _fake_members(fake).items():
        if member.startswith("t_") or (member == "__init__" and name != "WarpMarker"):  # the tests' own helpers
            continue  # (Live makes songs, tracks and clips itself; a script constructs only WarpMarker)
        assert member in stub, f"the fake's {name}.{member} is not in Live 12.3"
        if kind == "method":
            assert stub[member] == (kind, count), f"{name}.{member}: Live's is {stub[member]}, the fake's {(kind, count)}"


def test_the_list_of_what_the_script_uses_is_complete_and_not_stale():
    live_names = set().union(*(_stub_members(module, name) for _fake, module, name in PAIRS))
    listed = set().union(*USES.values())
    used = _script_names() | {"__init__"}  # Live.Clip.WarpMarker(...) is the constructor
    assert (used & live_names) - listed == set(), "the script uses these Live names: add them to USES"
    assert listed - used == set(), f"USES lists names the script no longer uses: {listed - used}"


def test_what_the_script_relies_on_is_in_the_stubs():
    clip, track, slot = _stub_members("Clip", "Clip"), _stub_members("Track", "Track"), _stub_members("ClipSlot", "ClipSlot")
    assert track["create_audio_clip"] == ("method", 2) and slot["create_audio_clip"] == ("method", 1)
    assert clip["add_warp_marker"] == ("method", 1) and clip["remove_warp_marker"] == ("method", 1)
    assert _stub_members("Clip", "WarpMarker")["__init__"] == ("method", 2)  # (sample_time, beat_time)


def test_the_script_is_python_37_and_imports_only_the_standard_library_and_live():
    for path in SCRIPT.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"), feature_version=(3, 7))  # raises on 3.8+ syntax
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module}
        outside = imported - set(sys.stdlib_module_names) - {"Live", "_Framework", "__future__"}
        assert outside == set(), f"{path.name} imports {outside}, which Live's Python does not have"
    bad = "def f(a, /):\n    return (b := a)\n"
    with pytest.raises(SyntaxError):
        ast.parse(bad, feature_version=(3, 7))  # the check above can fail
