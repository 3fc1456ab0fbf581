"""runtime.atomic: whole files or nothing, and generated blocks inside hand-written pages."""

from __future__ import annotations

import pytest

from runtime.atomic import atomic_write, replace_marked, write_marked
from runtime.errors import CifarEdgeError

B, E = "<!-- t:begin -->", "<!-- t:end -->"


def test_a_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as fh:
            fh.write("half of the new")
            raise RuntimeError("crash")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_replace_marked_changes_only_the_block():
    text = f"intro\n{B}\nold table\n{E}\noutro\n"
    assert replace_marked(text, B, E, "new table") == f"intro\n{B}\nnew table\n{E}\noutro\n"


@pytest.mark.parametrize("text", ["no markers", f"{E}\n{B}", f"{B}{E}{B}{E}"])
def test_replace_marked_refuses_missing_reversed_or_repeated_markers(text):
    with pytest.raises(CifarEdgeError, match="needs exactly one"):
        replace_marked(text, B, E, "x", "docs/speed.md")


def test_write_marked_rewrites_the_file(tmp_path):
    page = tmp_path / "speed.md"
    page.write_text(f"# Speed\n{B}\n{E}\n")
    write_marked(page, B, E, "| a |")
    assert page.read_text() == f"# Speed\n{B}\n| a |\n{E}\n"
