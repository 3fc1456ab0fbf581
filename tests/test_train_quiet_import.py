"""train.quiet_import: TensorFlow's start-up notices are dropped, anything else still shows."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import REPO, requires_tf

IMPORT = "from train.quiet_import import import_keras; import_keras(); print('imported')"


def _run(code: str, pythonpath: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300, cwd=REPO)


def test_notices_dropped_other_lines_kept(tmp_path):
    # Stand-ins for tensorflow and keras that write to file descriptor 2 as TensorFlow's C++ does.
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text(
        "import os\n"
        "os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n')\n"
        "os.write(2, b'I0000 00:00:1.0  1 port.cc:153] oneDNN custom operations are on. You may see...\\n')\n"
        "os.write(2, b'E0000 something real went wrong\\n')\n")
    (tmp_path / "keras").mkdir()
    (tmp_path / "keras" / "__init__.py").write_text("")
    result = _run(IMPORT, [str(tmp_path), str(REPO)])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "imported"
    assert "something real went wrong" in result.stderr
    assert "oneDNN" not in result.stderr and "InitializeLog" not in result.stderr


@requires_tf
def test_real_tensorflow_import_is_quiet():
    result = _run(IMPORT + "; import sys; print('x', file=sys.stderr)", [str(REPO)])
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "x"  # stderr still works afterwards, and nothing else is there
