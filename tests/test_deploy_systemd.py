"""deploy/cifar-edge-camera.service: a unit systemd accepts, whose command cifar-run accepts,
and whose output is what a journal wants (JSON lines, rate-limited)."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import REPO

UNIT = REPO / "deploy" / "cifar-edge-camera.service"


def _service_section() -> dict[str, str]:
    section, values = None, {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values[key] = value
    return values


def test_the_unit_restarts_on_failure_and_stops_with_sigterm():
    service = _service_section()
    assert service["Restart"] == "on-failure" and service["KillSignal"] == "SIGTERM"
    assert service["Environment"] == "PYTHONUNBUFFERED=1"  # each line reaches the journal at once
    assert "video" in service["SupplementaryGroups"]


def test_its_command_is_one_cifar_run_accepts():
    from runtime.cli.run import main

    argv = shlex.split(_service_section()["ExecStart"])
    assert argv[0].endswith("/cifar-run")
    context = main.make_context("cifar-run", argv[1:])  # parses and validates, runs nothing
    assert context.params["headless"] and context.params["fmt"] == "json"
    assert context.params["every"] == 1.0 and context.params["camera"] == "picam"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_accepts_the_unit(tmp_path):
    # The unit names a Pi's paths: point them at this machine's cifar-run and a real folder.
    cifar_run = Path(sys.executable).with_name("cifar-run")
    if not cifar_run.exists():
        pytest.skip("cifar-run is not installed beside this Python")
    text = (UNIT.read_text().replace("/home/pi/cifar-edge/.venv/bin/cifar-run", str(cifar_run))
            .replace("WorkingDirectory=/home/pi/cifar-edge", f"WorkingDirectory={tmp_path}"))
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_rate_limits_the_headless_lines(tiny_model, tmp_path):
    cv2 = pytest.importorskip("cv2")
    from runtime.cli.run import main

    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (64, 48))
    for i in range(12):
        writer.write(np.full((48, 64, 3), i * 20, np.uint8))
    writer.release()
    args = ["--model", str(tiny_model), "--camera", str(clip), "--headless", "--json"]
    every_frame = CliRunner().invoke(main, args)
    once = CliRunner().invoke(main, [*args, "--every", "3600"])
    assert every_frame.exit_code == 0 and once.exit_code == 0, every_frame.output + once.output
    lines = [json.loads(line) for line in every_frame.stdout.splitlines()]
    assert len(lines) == 12
    assert [json.loads(line)["frame"] for line in once.stdout.splitlines()] == [lines[0]["frame"]]
