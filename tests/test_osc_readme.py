"""The README's OSC address table matches the registered routes, cell for cell."""

from __future__ import annotations

import re
from pathlib import Path

from bridge.frontends.osc.routes import routes

README = Path(__file__).resolve().parent.parent / "README.md"
HEADING = "## OSC addresses"


def table_rows(markdown: str) -> list[list[str]]:
    """The cells of the first table in ``markdown``, header and separator left out."""
    rows: list[list[str]] = []
    for line in markdown.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip("|"))]
        rows.append(cells)
    return [r for r in rows[2:]]


def readme_table() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    assert HEADING in text, (f"{README} has no '{HEADING}' section; paste the table that "
                             "`python -m bridge.frontends.osc.routes` prints under that heading")
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    return table_rows(section)


def test_the_generated_table_parses_back_to_the_routes():
    rows = table_rows(routes.markdown())
    assert [r[0].strip("`") for r in rows] == routes.addresses()


def test_readme_table_matches_the_registered_routes():
    expected = table_rows(routes.markdown())
    actual = readme_table()
    assert [r[0] for r in actual] == [r[0] for r in expected], (
        "the README's addresses differ from the registered routes; regenerate with `python -m bridge.frontends.osc.routes`")
    for got, want in zip(actual, expected, strict=True):
        assert got == want, (f"README row for {want[0]} differs from the route's declaration and docstring; "
                             "regenerate with `python -m bridge.frontends.osc.routes`")
