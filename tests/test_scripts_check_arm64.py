"""scripts/check_arm64.py's pure parts: the prerequisite lines and the host-vs-arm64 comparison.
The emulated run itself needs root, debootstrap and qemu, and minutes: it is run by hand."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from helpers import REPO


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("check_arm64", REPO / "scripts" / "check_arm64.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_arm64"] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)  # defines functions only: importing has no side effects
    yield module
    del sys.modules["check_arm64"]


def binfmt_dir(tmp_path, entry: str | None):
    (tmp_path / "register").touch()
    if entry is not None:
        (tmp_path / "qemu-aarch64").write_text(entry)
    return tmp_path


REGISTERED = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\noffset 0\n"


def test_nothing_missing_when_all_is_there(check, tmp_path):
    assert check.missing_prerequisites(True, which=lambda tool: f"/usr/bin/{tool}",
                                       binfmt=binfmt_dir(tmp_path, REGISTERED)) == []


def test_each_missing_prerequisite_is_one_line_with_its_fix(check, tmp_path):
    missing = check.missing_prerequisites(False, which=lambda tool: None, binfmt=tmp_path)
    assert len(missing) == 6 and all("\n" not in line for line in missing)
    assert missing[0].startswith("not root:") and "sudo" in missing[0]
    assert "debootstrap not found: apt-get install debootstrap" in missing
    assert any(line.startswith("qemu-aarch64-static not found") and "qemu-user-static" in line for line in missing)
    assert missing[-1].startswith("binfmt_misc is not mounted") and "mount -t binfmt_misc" in missing[-1]


@pytest.mark.parametrize("entry, says", [
    (None, "update-binfmts --enable qemu-aarch64"),
    ("disabled\nflags: PF\n", "is disabled"),
    ("enabled\nflags: P\n", "lacks the F flag"),
])
def test_binfmt_problems_say_what_to_do(check, tmp_path, entry, says):
    assert says in check.binfmt_problem(binfmt_dir(tmp_path, entry))


def cifar_run_json(rows: dict[str, dict[str, float]], folder: str) -> str:
    """``cifar-run --json`` lines for {file name: {label: probability}}, highest first."""
    lines = []
    for name, probs in rows.items():
        top_k = [{"label": label, "probability": p} for label, p in sorted(probs.items(), key=lambda kv: -kv[1])]
        lines.append(json.dumps({"file": f"{folder}/{name}", "label": top_k[0]["label"], "top_label": top_k[0]["label"],
                                 "confidence": top_k[0]["probability"], "top_k": top_k, "error": None}))
    return "\n".join(lines) + "\n"


HOST = {"cat.jpg": {"cat": 0.9, "dog": 0.1}, "ship.jpg": {"ship": 0.6, "truck": 0.4}}


def compare(check, arm64: dict, tolerance=1e-4):
    host_rows = check.read_rows(cifar_run_json(HOST, "/work/repo/samples"))
    arm_rows = check.read_rows(cifar_run_json(arm64, "/opt/cifar-check/images"))
    return check.compare("FP32", host_rows, arm_rows, tolerance)


def test_same_labels_within_tolerance_pass_and_report_the_worst_difference(check):
    result = compare(check, {"cat.jpg": {"cat": 0.90003, "dog": 0.09997}, "ship.jpg": {"ship": 0.60008, "truck": 0.39992}})
    assert result.passed and result.images == 2 and result.problems == ()
    assert result.max_diff == pytest.approx(8e-5) and result.worst in ("ship.jpg, ship", "ship.jpg, truck")
    assert result.line().startswith("FP32  PASS  2 images, same labels, max |dp| 8.0e-05")


def test_a_probability_beyond_tolerance_fails_with_its_figure(check):
    result = compare(check, {"cat.jpg": {"cat": 0.8998, "dog": 0.1002}, "ship.jpg": HOST["ship.jpg"]})
    assert not result.passed and result.problems == ()
    assert result.max_diff == pytest.approx(2e-4) and "FAIL" in result.line() and "2.0e-04" in result.line()


def test_a_different_label_fails_even_within_tolerance(check):
    result = compare(check, {"cat.jpg": HOST["cat.jpg"], "ship.jpg": {"ship": 0.4, "truck": 0.6}}, tolerance=1.0)
    assert not result.passed and result.problems == ("ship.jpg: host ship, arm64 truck",)


def test_an_image_on_one_side_only_fails(check):
    result = compare(check, {"cat.jpg": HOST["cat.jpg"]})
    assert not result.passed and result.problems == ("ship.jpg only on the host",)
