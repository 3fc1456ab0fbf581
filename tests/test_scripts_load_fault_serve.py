"""scripts/load_fault_serve.py's pure parts: what the probes send, and the table of saved runs.
Nothing here starts a server (the script itself does, for minutes)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from helpers import REPO


@pytest.fixture(scope="module")
def probes():
    spec = importlib.util.spec_from_file_location("load_fault_serve", REPO / "scripts" / "load_fault_serve.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(module)  # defines functions only: importing has no side effects
    return module


def test_the_semicolon_form_is_the_issue_s(probes):
    body, headers = probes.semicolon_form()
    assert headers["Content-Type"] == "multipart/form-data; boundary=b"
    head = body.split(b"\r\n")[1]
    assert head.startswith(b'Content-Disposition: form-data; name="image"; filename="')
    assert head.count(b";") == 100_000 + 2 and 190_000 < len(body) < 210_000


def test_saved_runs_side_by_side(probes):
    runs = [{"label": "before", "machine": "Measured then", "rows": {"a": "1", "b": "2"}},
            {"label": "after", "machine": "Measured now", "rows": {"a": "3", "c": "4"}}]
    assert probes.table(runs).splitlines()[:5] == [
        "| probe | before | after |", "| --- | --- | --- |", "| a | 1 | 3 |", "| b | 2 | - |", "| c | - | 4 |"]
    assert "| b |" not in probes.table(runs, common=True) and "before: Measured then." in probes.table(runs)
