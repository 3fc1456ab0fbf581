"""The run folder: what a training run leaves on disk, and the checks made before touching it.

    model.keras    best epoch on the validation images (or the tail average); plain Keras opens it
    last.keras     the latest state, optimizer included (what --resume continues from)
    state.json     where training stands: epoch, step within it, best accuracy, finished
    config.json    the TrainConfig and where the data came from
    history.csv    one row per epoch
    curves.png     loss and accuracy per epoch
    snapshots/     the last epochs' weights, when the config asks to keep them

Every file is written atomically. Nothing here imports TensorFlow, so the checks run before
the 6-second import and a refused command creates nothing. In a multi-worker run only the chief
writes the folder, and an unfinished one is resumed by running its command again.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

from runtime.atomic import atomic_path, atomic_write
from runtime.errors import CifarEdgeError

RUN_FILES = ("model.keras", "last.keras", "state.json", "config.json", "history.csv", "curves.png")
HISTORY_FIELDS = ("epoch", "lr", "loss", "train_acc", "val_loss", "val_acc", "seconds", "images_per_s")
SNAPSHOTS = "snapshots"
NEW_STATE = {"epoch": 0, "step": 0, "best_val_acc": -1.0, "finished": False}


def read_state(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / "state.json").read_text())
    except (OSError, ValueError):
        return None


def save_state(run_dir: Path, state: dict) -> None:
    with atomic_write(Path(run_dir) / "state.json") as fh:
        json.dump(state, fh, indent=2)


def read_config(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "config.json").read_text())


def check_new_run(run_dir: Path, overwrite: bool = False) -> None:
    """Refuse to start a run where one is already, unless ``overwrite``; the message says
    what to type."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise CifarEdgeError(f"{run_dir}: exists and is not a folder; choose another --out")
    if overwrite or not (run_dir / "last.keras").exists():
        return
    state = read_state(run_dir) or {}
    if state.get("finished"):
        raise CifarEdgeError(
            f"{run_dir}: a run is already there; use --resume only for an unfinished run, and this "
            f"one finished all {state.get('epoch', '?')} epochs (its model: {run_dir / 'model.keras'}). "
            "Add --overwrite to train it again from scratch, or choose another --out")
    raise CifarEdgeError(
        f"{run_dir}: a run is already there; use --resume {run_dir} to continue it, "
        "--overwrite to train it again from scratch, or choose another --out")


def check_resumable(run_dir: Path, multiworker: bool = False) -> dict:
    """The saved state of an unfinished run in ``run_dir``; one-line errors otherwise.
    ``multiworker``: resumed by the chief of a cluster (a multi-worker run resumes only so)."""
    run_dir = Path(run_dir)
    state = read_state(run_dir)
    if not (run_dir / "last.keras").exists() or state is None or not (run_dir / "config.json").exists():
        raise CifarEdgeError(f"{run_dir}: nothing to resume (no last.keras/state.json/config.json); "
                             f"start a run there with cifar-train --out {run_dir}")
    if _distribute(run_dir) == "multiworker" and not multiworker:
        raise CifarEdgeError(f"{run_dir}: that run trains on several machines (--distribute multiworker); to "
                             "continue it, run its cifar-train command again on every worker: the chief "
                             "resumes it from here")
    if state.get("finished"):
        model = run_dir / "model.keras"
        raise CifarEdgeError(
            f"{run_dir}: that run already finished all {state.get('epoch', '?')} epochs; its model is "
            f"{model}. Export it with: cifar-export {model} (or train it again: the original "
            "command plus --overwrite)")
    return state


def unfinished_multiworker_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds an unfinished multi-worker run: the chief of a cluster resumes
    it when its command runs again (a restarted job), without --resume."""
    state = read_state(run_dir)
    return (state is not None and not state.get("finished") and (Path(run_dir) / "last.keras").exists()
            and _distribute(run_dir) == "multiworker")


def _distribute(run_dir: Path) -> str | None:
    try:
        return read_config(run_dir).get("config", {}).get("distribute")
    except (OSError, ValueError, AttributeError):
        return None


def clear_run(run_dir: Path) -> None:
    """Remove a previous run's files (``--overwrite``), leaving anything else in the folder."""
    for name in RUN_FILES:
        (Path(run_dir) / name).unlink(missing_ok=True)
    shutil.rmtree(Path(run_dir) / SNAPSHOTS, ignore_errors=True)


class RunLock:
    """An exclusive lock on a run folder while a run trains in it, so that a second
    ``cifar-train`` there (a restart while the old process still saves its checkpoint, two
    terminals) is refused in one line instead of writing into the same files.

    It is an ``flock`` on the folder itself (no lock file to clean up), released by the
    operating system when the process ends, however it ends. Taken only once the folder
    exists (a refused command creates nothing); where the platform or file system has no
    such locks, there is no lock."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is not None or not self.run_dir.is_dir():
            return
        try:
            import fcntl
        except ImportError:  # Windows
            return
        fd = os.open(self.run_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CifarEdgeError(f"{self.run_dir}: another cifar-train is training in this folder; wait for it to "
                                 "finish or stop it (Ctrl+C, or kill its process), or choose another --out") from None
        except OSError:  # a file system without locks
            os.close(fd)
            return
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def write_history(run_dir: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(Path(run_dir) / "history.csv") as fh:
        fh.write(buf.getvalue())


def read_history(run_dir: Path) -> list[dict]:
    """history.csv as a list of rows: ``epoch`` an int, every other field a float."""
    path = Path(run_dir) / "history.csv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [{k: (float(v) if k != "epoch" else int(v)) for k, v in row.items()} for row in csv.DictReader(fh)]


def plot_curves(rows: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = curves_figure(rows)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def curves_figure(rows: list[dict]):
    """Loss and accuracy per epoch, each epoch a marker (a one-epoch run is one point)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["loss"] for r in rows], marker="o", markersize=3, label="train (label-smoothed, + L2)")
    ax_loss.plot(epochs, [r["val_loss"] for r in rows], marker="o", markersize=3, label="validation (cross-entropy)")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_acc.plot(epochs, [100 * r["train_acc"] for r in rows], marker="o", markersize=3, label="train (augmented)")
    ax_acc.plot(epochs, [100 * r["val_acc"] for r in rows], marker="o", markersize=3, label="validation")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig
