"""tools/check_imports.py (run by `make lint`): circles and layers, with imports by name and in functions."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

CHECK = Path(__file__).resolve().parents[1] / "tools" / "check_imports.py"

_LAYERS = """
[tool.importlinter]
root_package = "planted"

[[tool.importlinter.contracts]]
name = "high over low"
type = "layers"
layers = ["planted.high", "planted.low"]
"""


def _check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CHECK), str(config)], capture_output=True, text=True, timeout=120,
                          check=False)


def _package(tmp_path: Path, files: dict[str, str], config: str = _LAYERS) -> Path:
    (tmp_path / "planted").mkdir()
    (tmp_path / "planted" / "__init__.py").write_text("")
    for name, source in files.items():
        (tmp_path / "planted" / name).write_text(textwrap.dedent(source))
    (tmp_path / "pyproject.toml").write_text(config)
    return tmp_path / "pyproject.toml"


def test_bridge_has_no_import_circle_and_keeps_its_layers_counting_imports_by_name():
    proc = _check(CHECK.parents[1] / "pyproject.toml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no import circle between bridge's" in proc.stdout


def test_a_circle_through_a_function_level_and_a_by_name_import_fails(tmp_path):
    config = _package(tmp_path, {
        "high.py": "",
        "low.py": "",
        "one.py": """
            def f():
                from planted import two
                return two
        """,
        "two.py": """
            def g():
                return __import__("planted.one", fromlist=["f"])
        """,
    })
    proc = _check(config)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "import circle: planted.one -> planted.two -> planted.one" in proc.stdout
    assert "planted/two.py:3: return __import__(\"planted.one\"" in proc.stdout
    assert "planted/one.py:3: from planted import two" in proc.stdout
    assert "high over low KEPT" in proc.stdout  # the contracts alone do not see it


def test_a_layer_broken_by_an_import_of_a_name_from_a_list_fails(tmp_path):
    config = _package(tmp_path, {
        "high.py": "",
        "low.py": """
            import importlib

            def load_all():
                return [importlib.import_module(name) for name in ("planted.high", "json")]
        """,
    })
    proc = _check(config)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "planted.low -> planted.high  (line 5:" in proc.stdout
    assert "high over low BROKEN" in proc.stdout
    assert "no import circle between planted's 3 modules" in proc.stdout


def test_an_import_by_a_name_it_cannot_read_fails_and_says_where(tmp_path):
    config = _package(tmp_path, {
        "high.py": "",
        "low.py": """
            import importlib

            def load(name):
                return importlib.import_module(name)
        """,
    })
    proc = _check(config)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "planted/low.py:5: cannot tell which module `importlib.import_module(name)` imports" in proc.stdout
    assert "high over low KEPT" in proc.stdout


def test_a_package_without_circles_passes(tmp_path):
    config = _package(tmp_path, {
        "high.py": """
            def f():
                from planted import low
                return __import__("planted.low")
        """,
        "low.py": "import json\n",
    })
    proc = _check(config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "planted.high -> planted.low  (line 4:" in proc.stdout
    assert "no import circle between planted's 3 modules" in proc.stdout
