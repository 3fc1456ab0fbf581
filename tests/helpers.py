"""Helpers the tests import: paths, generated CIFAR-10-shaped data, skip markers.

Fixtures live in conftest.py (pytest finds them); plain functions and constants live here,
so no test imports conftest as a module. Nothing heavy is imported: the runtime tests also
run in the base-only environment (see .ci/run).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from qemu import qemu_missing

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("CIFAR10_DIR", REPO.parent / "shared" / "data" / "cifar10"))
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def make_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 32, 32, 3) uint8 images whose class is learnable: each class has its own colour."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    palette = rng.integers(0, 256, (10, 3))
    x = palette[y][:, None, None, :] + rng.normal(0, 20, (n, 32, 32, 3))
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)


def write_folder_dataset(root: Path, n_train: int = 60, n_test: int = 20, fmt: str = "png") -> Path:
    from PIL import Image

    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        x, y = make_images(n, seed)
        for i, (img, label) in enumerate(zip(x, y)):
            d = root / split / CLASSES[label]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:04d}.{fmt}")
    return root



def write_python_batches(root: Path, n_per_batch: int = 12) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10's python batches (data_batch_1..5, test_batch) of ``make_images`` in ``root``;
    returns each batch's (images, labels) by name."""
    import pickle

    root.mkdir(parents=True)
    originals = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        x, y = make_images(n_per_batch, seed=i)
        rows = x.transpose(0, 3, 1, 2).reshape(n_per_batch, -1)  # official CHW plane layout
        with open(root / name, "wb") as fh:
            pickle.dump({b"batch_label": name.encode(), b"labels": [int(v) for v in y],
                         b"data": rows, b"filenames": [b"x.png"] * n_per_batch}, fh)
        originals[name] = (x, y)
    return originals

OWN_CLASSES = ("parcel", "cat", "empty")  # not CIFAR-10's, and not in sorted order
OWN_SIZES = ((20, 24), (64, 48), (100, 100))  # (width, height): smaller, wider and larger than 32x32


def write_own_classes(root: Path, layout: str = "split", n_train: int = 30, n_test: int = 8,
                      classes: tuple[str, ...] = OWN_CLASSES, seed: int = 0) -> Path:
    """A dataset of ``classes``, each its own colour under noise, in mixed sizes (``OWN_SIZES``)
    and formats (PNG and JPEG): ``root/{train,test}/<class>/`` (``layout="split"``) or
    ``n_train + n_test`` images a class in ``root/<class>/`` (``layout="flat"``)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (len(classes), 3))
    splits = (("train", n_train), ("test", n_test)) if layout == "split" else (("", n_train + n_test),)
    for split, n in splits:
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                width, height = OWN_SIZES[i % len(OWN_SIZES)]
                pixels = palette[label] + rng.normal(0, 20, (height, width, 3))
                image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
                image.save(folder / f"{name}-{split or 'all'}-{i:03d}.{'png' if i % 2 else 'jpg'}")
    return root


def cli_in_subprocess(args, cwd, env: dict | None = None):
    """Run cifar-train's main in a fresh interpreter; report its exit code, stderr and whether
    TensorFlow got imported (``print`` of ``exit CODE True|False`` on stdout)."""
    import subprocess
    import sys

    code = ("import sys\nfrom train.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    print('exit', e.code, 'tensorflow' in sys.modules)\n")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120, env=None if env is None else {**os.environ, **env})


def loaded_by_import(statement: str, modules) -> list[str]:
    """Which of ``modules`` an ``import`` statement loads, run in a fresh interpreter on this
    checkout; fails the test if the statement itself fails."""
    import subprocess
    import sys

    code = f"import sys\n{statement}\nprint(' '.join(m for m in {tuple(modules)!r} if m in sys.modules))\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


KERNEL_NAME = "cifar-edge-test"


def write_kernelspec(jupyter_dir: Path) -> str:
    """A Jupyter kernelspec running this interpreter, in ``jupyter_dir/kernels`` (put
    ``jupyter_dir`` on JUPYTER_PATH): its name, for a notebook's metadata or nbclient."""
    import json
    import sys

    spec = jupyter_dir / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "cifar-edge test", "language": "python"}))
    return KERNEL_NAME


def has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


requires_tf = pytest.mark.skipif(not has_module("tensorflow"), reason="needs the train extra (TensorFlow)")
requires_notebook = pytest.mark.skipif(not has_module("ipywidgets"),
                                       reason="needs the notebook extra (ipywidgets)")
requires_real_data = pytest.mark.skipif(not (REAL_DATA / "test").is_dir(),
                                        reason=f"real CIFAR-10 not found at {REAL_DATA}")
# x86-64 Python on an emulated CPU without VNNI (tests/qemu.py); the reason says how to install it.
requires_qemu = pytest.mark.skipif(qemu_missing() is not None, reason=str(qemu_missing()))


def one_error_line(result, prog: str = "cifar-run", notices: tuple[str, ...] = (), code: int = 1) -> str:
    """The single stderr line of a command that failed with exit code ``code``, without its
    prefix. Lines starting with one of ``notices`` (progress said before the error was found)
    are allowed before it."""
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if not (notices and line.startswith(notices))]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), result.stderr
    return lines[0].removeprefix(f"{prog}: error: ")


def solid_frame(bgr, w: int = 80, h: int = 60) -> np.ndarray:
    """An (h, w, 3) uint8 BGR frame of one colour."""
    out = np.zeros((h, w, 3), np.uint8)
    out[...] = bgr
    return out


class ListSource:
    """A frame source for the camera loop that delivers ``frames`` once, then None (a video
    file's end)."""

    name, live, fps = "fake", False, None

    def __init__(self, frames):
        self.frames = list(frames)

    def read(self):
        return self.frames.pop(0) if self.frames else None

    def release(self):
        pass
