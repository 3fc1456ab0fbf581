"""The same network and recipe on three CPU trainers, each for the same wall-clock budget:
images/s and test accuracy of Keras 3 on TensorFlow (the project's trainer), Keras 3 on JAX
(XLA) and PyTorch (eager).

    PYTHONPATH=. python scripts/compare_trainers.py --budget 120 --out runs/compare-trainers.json
    PYTHONPATH=. python scripts/compare_trainers.py --limit 2048 --test-limit 1000 --budget 15  # smoke run

The network is train/models.py's ``quick`` model and the recipe train/config.py's, with its
``quick`` changes, alike in all three: batch 1,024, Nesterov SGD at peak rate 1.5 on the mean
loss, one-cycle schedule, label smoothing, flips and 2-pixel translation. Two parts of it are
left out of all three: the whitening convolution is frozen (the project trains its bias for the
first 3 epochs) and there is no lookahead. Keras builds the model with train.fit.build_for_config
and compiles it with train.fit.compile_model (train.optim's BiasScaledSGD and OneCycle) on
either backend; PyTorch runs the port in scripts/compare_trainers_torch.py.

Every trainer sees the same batches (data order and augmentation from --seed) and starts from
the same kind of weights (Glorot uniform, dirac 3x3 convolutions), each drawn by its own
framework. A trainer's speed is only known once it runs, so each plans its run alike: one
warm-up step (tracing and compiling), 3 timed steps, then budget x steps/s steps from the
initial weights again, so that the schedule ends inside the budget. The augmentation is the
project's numpy code (train.augment.augmented_epoch), run once per epoch inside the training
time of every trainer: "train (s)" includes it, images/s leaves it out. The test split is
scored after training.

Keras picks its backend when it is imported (KERAS_BACKEND), so each trainer runs in a process
of its own, one after the other: the script runs itself with --trainer NAME on a .npz of the
data it decoded once, and reads back one JSON line. A trainer that is not installed is one line
on stderr, and the others still run (exit code 3). Writes the figures as JSON (--out).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import date
from importlib.util import find_spec
from pathlib import Path
from typing import Callable

import click
import numpy as np

from runtime.atomic import atomic_write
from runtime.cli.common import run_cli, traceback_option
from runtime.cpu import FLAGS_OF_INTEREST, cpu_features, cpu_flags
from runtime.errors import CifarEdgeError, ExitCode, OptionError
from train.augment import augmented_epoch
from train.config import RECIPE_BATCH, TrainConfig

REPO = Path(__file__).resolve().parents[1]
PROG = "compare_trainers"
TRAINERS = ("tf", "jax", "torch")
BF16 = "tf-bf16"  # --bf16: TensorFlow again, with the mixed_bfloat16 policy
# What each trainer imports, and how to install it; checked before its process starts.
INSTALL = {
    "tf": (("tensorflow", "keras"), 'pip install -e ".[train]"'),
    BF16: (("tensorflow", "keras"), 'pip install -e ".[train]"'),
    "jax": (("jax", "jaxlib", "keras"), "pip install jax jaxlib"),
    "torch": (("torch",), "pip install torch --index-url https://download.pytorch.org/whl/cpu  (the CPU build)"),
}
KERAS_BACKENDS = {"tf": "tensorflow", BF16: "tensorflow", "jax": "jax"}
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
WARMUP_STEPS = 1  # traces and compiles (Keras); PyTorch's first step sets up its kernels
PROBE_STEPS = 3  # timed after the warm-up: the steps/s the run is planned with
# PyTorch's memory layout. channels_last (NHWC, as Keras) was the faster on the 2-core AMD EPYC:
# 1,451 against 1,041 images/s over the 3 timed steps, 630 against 505 over the run (2,048
# images, --budget 15, while another training run shared the cores).
TORCH_LAYOUTS = ("channels_last", "nchw")
DEFAULT_TORCH_LAYOUT = "channels_last"
Log = Callable[[str], None]


def _stderr(line: str) -> None:
    click.echo(line, err=True)


def recipe(seed: int, n_train: int) -> TrainConfig:
    """The ``quick`` recipe with the whitening bias and lookahead off (in every trainer alike),
    and a batch no larger than the training split."""
    config = TrainConfig.for_model("quick", whiten_bias_epochs=0, lookahead=False, seed=seed, precision="float32")
    return config.with_(batch_size=min(RECIPE_BATCH, n_train))


# --- one trainer, in its own process --------------------------------------------------------

def import_keras(backend: str):
    """Keras 3 on ``backend`` ("tensorflow" or "jax"), which must be the first to import it."""
    os.environ["KERAS_BACKEND"] = backend
    if backend == "tensorflow":
        from train.quiet_import import import_keras as quiet_import_keras

        keras = quiet_import_keras()
    else:  # not train.quiet_import, which imports TensorFlow first
        import keras
    if keras.backend.backend() != backend:
        raise CifarEdgeError(f"Keras was already imported on {keras.backend.backend()}, not {backend}")
    return keras


class KerasTrainer:
    """The project's model and compile step on Keras 3 with ``backend``, fit a slice of an
    epoch at a time as train.fit does. ``compile(total_steps)``, ``train(x, y)``, ``reset()``,
    ``accuracy(x, y)`` on (N, 32, 32, 3) uint8 RGB images and (N,) int labels."""

    def __init__(self, backend: str, config: TrainConfig, x_train: np.ndarray, n_classes: int, precision: str):
        self.keras = keras = import_keras(backend)
        from train.fit import build_for_config

        # Keras' initializers draw their seeds from Python's random (keras.utils.set_random_seed
        # would also import TensorFlow into the JAX process, to seed tf.data).
        random.seed(config.seed)
        np.random.seed(config.seed)
        keras.config.set_dtype_policy(precision)
        self.config, self.backend, self.precision = config, backend, precision
        self.model = build_for_config(config, n_classes, x_train)
        self.initial = self.model.get_weights()
        self.one_hot = np.eye(n_classes, dtype=np.float32)

    @property
    def versions(self) -> dict:
        versions = {"keras": self.keras.__version__}
        if self.backend == "tensorflow":
            import tensorflow as tf

            versions["tensorflow"] = tf.__version__
        else:
            import jax
            import jaxlib

            versions.update(jax=jax.__version__, jaxlib=jaxlib.__version__, device=jax.devices()[0].platform,
                            xla_flags=os.environ.get("XLA_FLAGS"))  # e.g. XLA:CPU's experimental oneDNN calls
        return versions

    def compile(self, total_steps: int) -> None:
        from train.fit import compile_model

        # compile_model sizes its schedule as steps_per_epoch x epochs: one "epoch" of them all.
        compile_model(self.model, self.config.with_(epochs=1), total_steps)

    def reset(self) -> None:
        """The initial weights and BatchNorm statistics, no momentum, the schedule at step 0."""
        self.model.set_weights(self.initial)
        for variable in self.model.optimizer.variables:
            variable.assign(self.keras.ops.zeros(variable.shape, variable.dtype))

    def train(self, x: np.ndarray, y: np.ndarray) -> None:
        self.model.fit(x, self.one_hot[y], batch_size=self.config.batch_size, epochs=1, shuffle=False, verbose=0)

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        from train.fit import loss_and_accuracy
        from train.models import as_float32

        return loss_and_accuracy(as_float32(self.model), x, y)[1]  # float32, as cifar-train scores a bfloat16 run


def make_trainer(name: str, config: TrainConfig, data: dict, torch_layout: str):
    """The trainer ``name`` and what it computes in: (trainer, precision, layout)."""
    if name == "torch":
        from compare_trainers_torch import TorchTrainer  # beside this script, on sys.path

        channels_last = torch_layout == "channels_last"
        trainer = TorchTrainer(config, data["x_train"], channels_last, threads=os.cpu_count() or 1)
        return trainer, "float32", "NHWC (channels_last)" if channels_last else "NCHW"
    precision = "mixed_bfloat16" if name == BF16 else "float32"
    trainer = KerasTrainer(KERAS_BACKENDS[name], config, data["x_train"], len(data["class_names"]), precision)
    return trainer, precision, "NHWC"


def _timed(call, *args):
    """(what ``call(*args)`` returns, the wall seconds it took)."""
    start = time.perf_counter()
    result = call(*args)
    return result, time.perf_counter() - start


def probe_speed(trainer, x0: np.ndarray, y0: np.ndarray, batch: int) -> tuple[float, float]:
    """(seconds of ``WARMUP_STEPS`` steps, seconds per step of the ``PROBE_STEPS`` after them)
    on the first batches of epoch 0 (round again when it has fewer). ``trainer`` must be
    compiled; the steps are undone by its ``reset()``."""
    probe = np.arange((WARMUP_STEPS + PROBE_STEPS) * batch) % len(x0)
    warm, timed = probe[:WARMUP_STEPS * batch], probe[WARMUP_STEPS * batch:]
    _, warmup_s = _timed(trainer.train, x0[warm], y0[warm])
    _, probe_s = _timed(trainer.train, x0[timed], y0[timed])
    return warmup_s, probe_s / PROBE_STEPS


def plan_steps(budget: float, step_s: float, augment_per_step_s: float) -> int:
    """Optimizer steps that fit in ``budget`` seconds at the probed rate, augmentation included."""
    return max(1, int(budget / (step_s + augment_per_step_s)))


def train_steps(trainer, config: TrainConfig, x: np.ndarray, y: np.ndarray, total_steps: int) -> dict:
    """``total_steps`` steps, epoch by epoch, each epoch augmented first; the last one may end
    part-way. Returns the wall seconds (augmentation included), those of augmentation, and the
    images trained."""
    steps_per_epoch = -(-len(x) // config.batch_size)
    done = epoch = images = 0
    augment_s, start = 0.0, time.perf_counter()
    while done < total_steps:
        (x_epoch, y_epoch), seconds = _timed(augmented_epoch, x, y, config, epoch)
        augment_s += seconds
        steps = min(steps_per_epoch, total_steps - done)
        n = min(steps * config.batch_size, len(x))
        trainer.train(x_epoch[:n], y_epoch[:n])
        done, epoch, images = done + steps, epoch + 1, images + n
    return {"train_s": time.perf_counter() - start, "augment_s": augment_s, "images": images}


def run_budget(trainer, config: TrainConfig, data: dict, budget: float, log: Log) -> dict:
    """Plan ``trainer``'s run from its probed speed, train it for ``budget`` seconds from its
    initial weights, score the test split."""
    x, y = data["x_train"], data["y_train"]
    batch, steps_per_epoch = config.batch_size, -(-len(x) // config.batch_size)
    (x0, y0), augment_epoch_s = _timed(augmented_epoch, x, y, config, 0)
    trainer.compile(steps_per_epoch)  # any schedule: probe_speed's steps are undone
    warmup_s, step_s = probe_speed(trainer, x0, y0, batch)
    total = plan_steps(budget, step_s, augment_epoch_s / steps_per_epoch)
    trainer.compile(total)
    # Keras traces its train step again for the new optimizer, and for the smaller last batch of
    # an epoch (50,000 = 48 x 1,024 + 848): here, not inside the budget.
    _, rewarmup_s = _timed(trainer.train, x0[:batch], y0[:batch])
    if len(x) % batch:
        _, last_batch_s = _timed(trainer.train, x0[:len(x) % batch], y0[:len(x) % batch])
        rewarmup_s += last_batch_s
    trainer.reset()
    log(f"warm-up {warmup_s:.1f} s, {batch / step_s:,.0f} images/s over {PROBE_STEPS} steps: "
        f"{total:,} steps ({total / steps_per_epoch:.1f} epochs) for {budget:g} s")

    trained = train_steps(trainer, config, x, y, total)
    accuracy, eval_s = _timed(trainer.accuracy, data["x_test"], data["y_test"])
    step_time = trained["train_s"] - trained["augment_s"]
    return {"warmup_s": round(warmup_s, 2), "rewarmup_s": round(rewarmup_s, 2),
            "probe_images_per_s": round(batch / step_s, 1), "images_per_s": round(trained["images"] / step_time, 1),
            "steps": total, "epochs": round(trained["images"] / len(x), 2), "train_s": round(trained["train_s"], 2),
            "augment_s": round(trained["augment_s"], 3), "test_accuracy": accuracy, "eval_s": round(eval_s, 2)}


def run_trainer(name: str, npz: Path, budget: float, seed: int, torch_layout: str, log: Log) -> dict:
    """One trainer's row (the child process's work)."""
    with np.load(npz) as arrays:
        data = {key: arrays[key] for key in arrays.files}
    config = recipe(seed, len(data["x_train"]))
    (trainer, precision, layout), setup_s = _timed(make_trainer, name, config, data, torch_layout)
    row = {"trainer": name, "status": "ok", "versions": trainer.versions, "precision": precision, "layout": layout,
           "setup_s": round(setup_s, 2), **run_budget(trainer, config, data, budget, log)}
    log(f"{row['images_per_s']:,.0f} images/s, {row['steps']:,} steps in {row['train_s']:.1f} s, "
        f"test accuracy {100 * row['test_accuracy']:.2f}%")
    return row


# --- the comparison, in the parent process --------------------------------------------------

def cannot_run(name: str) -> str | None:
    """Why trainer ``name`` cannot run here, in one line that says what to do (install a module;
    leave out --bf16 on a CPU without bfloat16 instructions), else None."""
    from train.models import resolve_precision

    modules, command = INSTALL[name]
    for module in modules:
        if find_spec(module) is None:
            return f"{module} is not installed: {command}"
    if name == BF16 and resolve_precision("auto") != "mixed_bfloat16":  # cifar-train's own rule
        return (f"this CPU has no bfloat16 instructions ({', '.join(BF16_FLAGS)}): TensorFlow would emulate "
                "mixed_bfloat16, slower than float32; leave out --bf16")
    return None


def run_child(name: str, npz: Path, budget: float, seed: int, torch_layout: str, log: Log) -> dict:
    """Run this script with ``--trainer name`` and return the JSON row it prints; its stderr
    passes through as it comes, and its last line is the row's error if it fails."""
    command = [sys.executable, str(Path(__file__).resolve()), "--trainer", name, "--npz", str(npz),
               "--budget", str(budget), "--seed", str(seed), "--torch-layout", torch_layout]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = ""
    for line in child.stderr:  # stdout is one short JSON line: it cannot fill its pipe meanwhile
        sys.stderr.write(line)
        last = line.strip() or last
    output = child.stdout.read()
    if child.wait() == 0:
        rows = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
        if rows:
            return rows[-1]
        last = "printed no result"
    return {"trainer": name, "status": "failed",
            "error": last.split(": error: ", 1)[-1] or f"exited with code {child.returncode}"}


def compare(data: Path, trainers: list[str], budget: float, limit: int | None, test_limit: int | None,
            seed: int, torch_layout: str, log: Log) -> dict:
    """Decode the data once, run each trainer on it in turn, return the report."""
    from train.data import load_dataset, take_slice

    dataset = take_slice(load_dataset(data, log=log), limit, test_limit, seed=seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cifar-edge-compare-") as tmp:
        npz = Path(tmp) / "data.npz"
        np.savez(npz, x_train=dataset.x_train, y_train=dataset.y_train, x_test=dataset.x_test,
                 y_test=dataset.y_test, class_names=np.array(dataset.class_names))
        for name in trainers:
            reason = cannot_run(name)
            if reason is not None:
                _stderr(f"{PROG}: error: {reason}")
                rows.append({"trainer": name, "status": "failed", "error": reason})
                continue
            log(f"{name}: training for {budget:g} s")
            rows.append(run_child(name, npz, budget, seed, torch_layout, log))
    config = recipe(seed, len(dataset.x_train))
    return {"date": date.today().isoformat(), "cpu": machine(), "threads": os.cpu_count(), "budget_s": budget,
            "data": dataset.source, "train_images": len(dataset.x_train), "test_images": len(dataset.x_test),
            "seed": seed, "recipe": asdict(config), "left_out": ["whitening bias (the conv is frozen)", "lookahead"],
            "augmentation": "numpy, per epoch, inside train_s; images_per_s leaves it out", "rows": rows}


def machine() -> dict:
    """The CPU and the flags that matter for training speed (SIMD width, bfloat16)."""
    cpu, flags = cpu_features(), cpu_flags()
    return {"model": cpu.model, "arch": cpu.arch, "cores": cpu.cores,
            "flags": [f for f in (*FLAGS_OF_INTEREST, *BF16_FLAGS) if f in flags]}


def markdown(report: dict) -> str:
    cpu = report["cpu"]
    lines = [f"Measured {report['date']} on {cpu['model']} ({', '.join(cpu['flags']) or 'no flags reported'}), "
             f"{report['threads']} threads: {report['budget_s']:g} s of training per trainer on "
             f"{report['train_images']:,} training images, test accuracy on {report['test_images']:,}. "
             "The quick model and recipe, whitening conv frozen, no lookahead; train (s) includes the numpy "
             "augmentation, images/s leaves it out.", "",
             "| trainer | versions | precision | layout | warm-up (s) | images/s | steps | epochs | train (s) | "
             "test accuracy | status |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in report["rows"]:
        if row["status"] != "ok":
            lines.append(f"| {row['trainer']} | | | | | | | | | | failed: {row['error']} |")
            continue
        versions = ", ".join(f"{k} {v}" for k, v in row["versions"].items() if isinstance(v, str))
        lines.append(f"| {row['trainer']} | {versions} | {row['precision']} | {row['layout']} | {row['warmup_s']:.1f} "
                     f"| {row['images_per_s']:,.0f} | {row['steps']:,} | {row['epochs']:.2f} | {row['train_s']:.1f} "
                     f"| {100 * row['test_accuracy']:.2f}% | ok |")
    return "\n".join(lines)


def exit_status(rows: list[dict]) -> ExitCode:
    failed = sum(row["status"] != "ok" for row in rows)
    return ExitCode.OK if not failed else ExitCode.PARTIAL if failed < len(rows) else ExitCode.ERROR


def parse_trainers(text: str, bf16: bool) -> list[str]:
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in TRAINERS]
    if unknown or not names:
        raise OptionError(f"--trainers {text!r}: choose from {', '.join(TRAINERS)}, comma-separated")
    return names + [BF16] * bf16


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--data", type=click.Path(path_type=Path), default=REPO.parent / "shared" / "data" / "cifar10",
              help="CIFAR-10 (DIR/train/<class>/*.jpg and DIR/test/...), or any dataset cifar-train reads.")
@click.option("--budget", type=click.FloatRange(min=1), default=120.0,
              help="Wall-clock seconds of training per trainer (warm-up and scoring come on top).")
@click.option("--trainers", default=",".join(TRAINERS), help="Which trainers, comma-separated: tf, jax, torch.")
@click.option("--limit", type=click.IntRange(min=10), default=None,
              help="Train on this many training images (smoke runs). Default: all.")
@click.option("--test-limit", type=click.IntRange(min=10), default=None,
              help="Score on this many test images (smoke runs). Default: all.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=REPO / "runs" / "compare-trainers.json",
              help="Write the report here as JSON (atomically).")
@click.option("--bf16", is_flag=True,
              help="Also TensorFlow with the mixed_bfloat16 policy (CPUs with avx512_bf16 or amx_bf16).")
@click.option("--seed", type=int, default=0,
              help="Seed of the data order and augmentation (the same batches for every trainer) and of "
                   "each trainer's own draw of the initial weights.")
@click.option("--torch-layout", type=click.Choice(TORCH_LAYOUTS), default=DEFAULT_TORCH_LAYOUT,
              help="PyTorch's memory layout for images and convolutions.")
@click.option("--trainer", "child", type=click.Choice((*TRAINERS, BF16)), default=None, hidden=True,
              help="Internal: run this one trainer on --npz and print its row as JSON.")
@click.option("--npz", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, hidden=True,
              help="Internal: the data the parent decoded, for --trainer.")
@traceback_option
def main(data, budget, trainers, limit, test_limit, out, bf16, seed, torch_layout, child, npz, show_traceback):
    """Train the quick model with the same recipe on Keras/TensorFlow, Keras/JAX and PyTorch
    for the same wall-clock budget each; print images/s and test accuracy as a Markdown table
    and write them as JSON. Run the trainers on an otherwise idle machine: they use every core."""
    if child is not None:
        def body():
            row = run_trainer(child, npz, budget, seed, torch_layout, log=lambda line: _stderr(f"{child}: {line}"))
            click.echo(json.dumps(row))

        run_cli(f"{PROG} --trainer {child}", body, show_traceback)

    def body():
        names = parse_trainers(trainers, bf16)
        report = compare(data, names, budget, limit, test_limit, seed, torch_layout, log=_stderr)
        click.echo(markdown(report))
        with atomic_write(out) as fh:
            json.dump(report, fh, indent=2)
        _stderr(f"wrote {out}")
        return exit_status(report["rows"])

    run_cli(PROG, body, show_traceback)


if __name__ == "__main__":
    main()
