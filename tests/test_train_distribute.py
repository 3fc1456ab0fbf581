"""cifar-train --distribute multiworker: TF_CONFIG checked before TensorFlow starts, two worker
processes on 127.0.0.1 (CPU) training to the end, and a worker killed and restarted."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import REPO, cli_in_subprocess, requires_tf, write_folder_dataset

pytestmark = requires_tf

RUN = ["--model", "tiny", "--val-images", "10", "--quiet", "--distribute", "multiworker"]
WORKER_TIMEOUT = 300  # s: a hard limit for every worker process (they take 20-60 s here)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


class Worker:
    """One ``cifar-train`` worker process; its output goes to files (a full pipe would block it)."""

    def __init__(self, index: int, ports: list[int], args: list[str], logs: Path):
        logs.mkdir(parents=True, exist_ok=True)
        self.stdout_path, self.stderr_path = logs / f"worker{index}.out", logs / f"worker{index}.err"
        env = {**os.environ, "TF_CONFIG": _tf_config(ports, index), "TF_CPP_MIN_LOG_LEVEL": "3",
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               "CIFAR_EDGE_CACHE": str(logs / f"cache{index}")}  # as on separate machines
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "train.cli", *args], stdout=out, stderr=err,
                                         cwd=REPO, env=env)

    def wait(self, timeout: float = WORKER_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_running([self])
            pytest.fail(f"a worker ran past {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.stdout_path.read_text() + self.stderr_path.read_text()


def _run_workers(ports: list[int], args: list[str], logs: Path, outs: list[Path]) -> list[Worker]:
    return [Worker(i, ports, [*args, "--out", str(out)], logs) for i, out in enumerate(outs)]


def _kill_running(workers: list[Worker]) -> None:
    for w in workers:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()


def _both_succeed(workers: list[Worker]) -> tuple[str, str]:
    """Wait for the two workers, which must succeed; their outputs, the chief's first."""
    deadline = time.monotonic() + WORKER_TIMEOUT
    try:
        codes = [w.wait(max(1.0, deadline - time.monotonic())) for w in workers]
    finally:
        _kill_running(workers)
    chief, worker = (w.output() for w in workers)
    assert codes == [0, 0], f"{chief}\n---\n{worker}"
    return chief, worker


def _losses(output: str) -> list[str]:
    return [line.split("loss ")[1].split()[0] for line in output.splitlines() if line.startswith("epoch")]


def test_two_workers_train_to_the_end(tmp_path):
    from train.evaluate import load_keras_model
    from train.runfolder import read_history

    data = write_folder_dataset(tmp_path / "data", n_train=60, n_test=20)
    run, elsewhere = tmp_path / "run", tmp_path / "worker1-run"
    # No --seed: the chief's random seed must reach worker 1, or their data would differ.
    workers = _run_workers(_free_ports(2), ["--data", str(data), *RUN, "--epochs", "2", "--batch-size", "16"],
                           tmp_path / "logs", [run, elsewhere])
    chief, worker = _both_succeed(workers)
    assert ("MultiWorkerMirroredStrategy over 2 replicas (worker 0 of 2 workers): batch 16 in all, "
            "8 per replica" in chief)
    assert "(worker 1 of 2 workers)" in worker
    assert "done: this worker trained the run to epoch 2" in worker and "done: best validation accuracy" in chief
    # One training: both workers report the same global loss for every epoch.
    assert _losses(chief) == _losses(worker) and len(_losses(chief)) == 2
    # The chief wrote the run folder; worker 1 wrote nothing, not even its own --out.
    assert [r["epoch"] for r in read_history(run)] == [1, 2]
    assert json.loads((run / "config.json").read_text())["config"]["distribute"] == "multiworker"
    assert json.loads((run / "state.json").read_text())["finished"]
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]
    assert load_keras_model(run / "model.keras").count_params() > 0
    assert not elsewhere.exists()


def _poll(condition, workers: list[Worker], timeout: float = WORKER_TIMEOUT, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while not condition():
        if any(w.proc.poll() is not None for w in workers) or time.monotonic() > deadline:
            _kill_running(workers)
            pytest.fail("the run ended or stalled before the kill:\n" + "\n---\n".join(w.output() for w in workers))
        time.sleep(every)


def test_a_killed_worker_restarted_with_its_command_resumes_the_run(tmp_path):
    import keras

    import train.optim  # noqa: F401  (registers the optimizer that last.keras names)
    from train.runfolder import read_history, read_state

    # 390 training images in batches of 8: 49 steps, about a second an epoch here, so the kill
    # lands inside the run. Both workers get the same --out, as on shared storage.
    data = write_folder_dataset(tmp_path / "data", n_train=400, n_test=20)
    run, epochs = tmp_path / "run", 4
    args = ["--data", str(data), *RUN, "--epochs", str(epochs), "--batch-size", "8"]
    ports = _free_ports(2)
    workers = _run_workers(ports, args, tmp_path / "logs1", [run, run])
    _poll(lambda: (read_state(run) or {}).get("epoch", 0) >= 1, workers)
    workers[1].proc.send_signal(signal.SIGKILL)
    first_rows = read_history(run)
    chief_code = workers[0].wait()
    killed_at = read_state(run)["epoch"]

    # As TensorFlow documents: the surviving worker fails too (its coordination service stops
    # hearing the dead one); it says how to go on, and exits with the retryable code 138.
    chief = workers[0].output()
    assert chief_code == 138, chief
    error = chief.strip().splitlines()[-1]
    assert error.startswith("cifar-train: error: worker 0 lost the cluster") and "Traceback" not in chief
    assert "Restart every worker with the same command" in error
    assert 1 <= killed_at < epochs and not read_state(run)["finished"]

    # A cluster manager restarts both with their original command: the run resumes.
    chief, worker = _both_succeed(_run_workers(ports, args, tmp_path / "logs2", [run, run]))
    assert f"resuming {run} at epoch {killed_at + 1}/{epochs}" in chief
    assert f"resuming the run of the chief at epoch {killed_at + 1}/{epochs}" in worker
    rows = read_history(run)
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    assert rows[:len(first_rows)] == first_rows  # the epochs before the kill were not trained again
    assert read_state(run)["finished"]
    steps = -(-390 // 8)
    last = keras.saving.load_model(run / "last.keras", safe_mode=True)
    assert int(last.optimizer.iterations.numpy()) == epochs * steps  # no step trained twice


def test_sigterm_stops_a_worker_and_the_run_stays_resumable(tmp_path):
    from train.runfolder import check_resumable, read_state

    data = write_folder_dataset(tmp_path / "data", n_train=400, n_test=20)
    run = tmp_path / "run"
    workers = _run_workers(_free_ports(2), ["--data", str(data), *RUN, "--epochs", "4", "--batch-size", "8"],
                           tmp_path / "logs", [run, run])
    _poll(lambda: (read_state(run) or {}).get("epoch", 0) >= 1, workers)
    workers[1].proc.send_signal(signal.SIGTERM)  # what Kubernetes sends a pod it stops
    stopped, chief = workers[1].wait(), workers[0].wait()
    assert (stopped, chief) == (130, 138), "\n---\n".join(w.output() for w in workers)
    assert workers[1].output().strip().splitlines()[-1].startswith("cifar-train: error: stopped by SIGTERM")
    state = read_state(run)
    assert 1 <= state["epoch"] < 4 and check_resumable(run, multiworker=True) == state


# --- before TensorFlow: TF_CONFIG, the run folder ---------------------------------------------

@pytest.mark.parametrize("tf_config, message", [
    (None, "needs TF_CONFIG on every worker"),
    ("{not json", "TF_CONFIG is not JSON"),
    ('{"cluster": {"worker": ["127.0.0.1:1234"]}}', 'TF_CONFIG has no "task" of this cluster'),
    ('{"cluster": {"worker": ["127.0.0.1:1234"]}, "task": {"type": "worker", "index": 1}}',
     "task index 1 is out of range"),
    ('{"cluster": {"worker": ["127.0.0.1"]}, "task": {"type": "worker", "index": 0}}', "is not HOST:PORT"),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker", "index": 0}}', "has ps tasks"),
])
def test_bad_tf_config_is_one_line_and_creates_nothing(folder_dataset, tmp_path, tf_config, message):
    from train.cli import main

    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["--data", str(folder_dataset), *RUN, "--out", str(out)],
                                env={"TF_CONFIG": tf_config})
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cifar-train: error: ") and message in lines[0], result.output
    assert not out.exists()


def test_tf_config_is_checked_before_tensorflow_loads(folder_dataset, tmp_path):
    out = cli_in_subprocess(["--data", str(folder_dataset), *RUN, "--out", str(tmp_path / "run")], tmp_path,
                            env={"TF_CONFIG": ""})
    assert out.stdout.split() == ["exit", "1", "False"], out.stderr
    assert "needs TF_CONFIG on every worker" in out.stderr and not (tmp_path / "run").exists()


def test_the_chief_is_worker_0_or_the_chief_task():
    from train.multiworker import read_cluster

    cluster = {"chief": ["c:1"], "worker": ["w0:1", "w1:1"]}
    worker = read_cluster({"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}})})
    assert (worker.rank, worker.name, worker.size, worker.is_chief) == (2, "worker 1", 3, False)
    chief = read_cluster({"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "chief", "index": 0}})})
    assert chief.is_chief and chief.addresses == ("c:1", "w0:1", "w1:1")
    only_workers = {"cluster": {"worker": ["w0:1", "w1:1"]}, "task": {"type": "worker", "index": 0}}
    assert read_cluster({"TF_CONFIG": json.dumps(only_workers)}).is_chief


def _fake_run(run: Path, distribute: str, finished: bool) -> Path:
    run.mkdir()
    (run / "last.keras").write_bytes(b"")
    (run / "state.json").write_text(json.dumps({"epoch": 1, "step": 0, "best_val_acc": 0.5, "finished": finished}))
    (run / "config.json").write_text(json.dumps({"config": {"distribute": distribute}}))
    return run


def test_the_chief_resumes_an_unfinished_multiworker_run_even_with_overwrite(tmp_path, monkeypatch):
    from runtime.errors import CifarEdgeError
    from train.config import TrainConfig
    from train.multiworker import cluster_of
    from train.preflight import check_run

    def check_start(run_dir, overwrite):  # what cifar-train checks of TF_CONFIG and --out
        config = TrainConfig(distribute="multiworker")
        cluster = cluster_of(config)
        check_run(config, run_dir, overwrite=overwrite, cluster=cluster)
        return cluster

    monkeypatch.setenv("TF_CONFIG", _tf_config([1234, 1235], 0))
    assert check_start(_fake_run(tmp_path / "unfinished", "multiworker", False), overwrite=True).is_chief
    with pytest.raises(CifarEdgeError, match="this one finished all 1 epochs"):
        check_start(_fake_run(tmp_path / "finished", "multiworker", True), overwrite=False)
    with pytest.raises(CifarEdgeError, match="use --resume"):  # one machine's run is not the cluster's
        check_start(_fake_run(tmp_path / "single", "none", False), overwrite=False)
    monkeypatch.setenv("TF_CONFIG", _tf_config([1234, 1235], 1))  # worker 1 does not look at --out
    assert not check_start(tmp_path / "finished", overwrite=False).is_chief


def test_resume_of_a_multiworker_run_points_to_its_command(tmp_path):
    from train.cli import main

    run = _fake_run(tmp_path / "run", "multiworker", False)
    result = CliRunner().invoke(main, ["--resume", str(run)])
    assert result.exit_code == 1 and "run its cifar-train command again on every worker" in result.output


def test_the_last_batch_has_an_image_for_every_replica():
    from runtime.errors import CifarEdgeError
    from train.fit import Split, _fill_last_batch

    x, y = np.zeros((50, 32, 32, 3), np.uint8), np.arange(50)
    said = []
    kept = _fill_last_batch(Split(x[:49], y[:49], x[:5], y[:5]), 16, 2, said.append)  # 49 = 3 x 16 + 1
    assert len(kept.x_train) == len(kept.y_train) == 48 and said and "1 training image" in said[0]
    same = Split(x, y, x[:5], y[:5])  # 50 = 3 x 16 + 2: one each
    assert _fill_last_batch(same, 16, 2, said.append) is same
    with pytest.raises(CifarEdgeError, match="--batch-size 1 is less than the 2 replicas"):
        _fill_last_batch(same, 1, 2, said.append)
