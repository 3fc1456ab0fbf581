"""Fitting: build the model, train with a one-cycle schedule, checkpoint every epoch.

Run folder (every file written atomically):
    model.keras    best epoch on the validation images
    last.keras     the latest state, optimizer included (what --resume continues from)
    state.json     where training stands: epoch, step within it, best accuracy
    config.json    the TrainConfig and where the data came from
    history.csv    one row per epoch
    curves.png     loss and accuracy per epoch
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from runtime.atomic import atomic_path, atomic_write
from runtime.errors import CifarEdgeError

from .augment import augment_epoch
from .config import TrainConfig
from .data import Cifar10, load_cifar10, take_slice
from .models import as_float32, build_model, resolve_precision
from .quiet_import import import_keras

HISTORY_FIELDS = ("epoch", "lr", "loss", "train_acc", "val_loss", "val_acc", "seconds", "images_per_s")


class Interrupted(CifarEdgeError):
    """Training stopped by Ctrl+C or SIGTERM after saving a resumable checkpoint."""

    exit_code = 130


@dataclass
class FitResult:
    run_dir: Path
    best_val_acc: float
    epochs_done: int
    seconds: float


def _keras():
    return import_keras()


def _register_schedule():
    """Register the custom objects a checkpoint refers to (so safe-mode loading finds them)."""
    keras = _keras()

    @keras.saving.register_keras_serializable(package="cifar_edge", name="OneCycle")
    class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
        """Linear warm-up from ``start``·peak to ``peak`` over ``warmup_steps``, then linear
        decay to ``final``·peak at ``total_steps``."""

        def __init__(self, peak, total_steps, warmup_steps, final, start=0.0):
            self.peak, self.total_steps = float(peak), int(total_steps)
            self.warmup_steps, self.final, self.start = int(warmup_steps), float(final), float(start)

        def __call__(self, step):
            ops = keras.ops
            step = ops.cast(step, "float32")
            warm = self.start + (1.0 - self.start) * step / max(self.warmup_steps, 1)
            decay = 1.0 - (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1)
            frac = ops.where(step < self.warmup_steps, warm,
                             self.final + (1.0 - self.final) * ops.maximum(decay, 0.0))
            return self.peak * frac

        def get_config(self):
            return dict(peak=self.peak, total_steps=self.total_steps, warmup_steps=self.warmup_steps,
                        final=self.final, start=self.start)

    @keras.saving.register_keras_serializable(package="cifar_edge", name="BiasScaledSGD")
    class BiasScaledSGD(keras.optimizers.SGD):
        """SGD whose BatchNorm biases (``beta``) take ``bias_lr_scale`` times the learning rate."""

        def __init__(self, bias_lr_scale=1.0, **kwargs):
            super().__init__(**kwargs)
            self.bias_lr_scale = float(bias_lr_scale)

        def update_step(self, gradient, variable, learning_rate):
            # Keras passes its own variable or, on TensorFlow, the tf.Variable behind it.
            name = getattr(variable, "path", None) or variable.name
            if name.split("/")[-1].split(":")[0] == "beta":
                learning_rate = learning_rate * self.bias_lr_scale
            return super().update_step(gradient, variable, learning_rate)

        def get_config(self):
            return {**super().get_config(), "bias_lr_scale": self.bias_lr_scale}

    return OneCycle, BiasScaledSGD


class _Lookahead:
    """airbench's lookahead: every 5 steps, move a running average of all float weights (BatchNorm
    statistics included) towards the weights and copy it back into the model. The average's
    decay grows as (step/total)^3, so it is weak early and strong at the end; after the last
    step the model holds the average. A resumed run restarts the average from the weights."""

    EVERY = 5

    def __init__(self, model, total_steps: int):
        self.variables = [v for v in model.weights if "float" in str(v.dtype)]
        self.average = [np.array(v.numpy()) for v in self.variables]
        self.total_steps = total_steps

    def step(self, global_step: int):
        if global_step % self.EVERY:
            return
        decay = 0.95 ** 5 * (min(global_step, self.total_steps) / self.total_steps) ** 3
        for v, avg in zip(self.variables, self.average):
            avg += (1.0 - decay) * (v.numpy() - avg)
            v.assign(avg)

    def finish(self):
        for v, avg in zip(self.variables, self.average):
            v.assign(avg)


def setup_devices(distribute: str, cpu_replicas: int = 2):
    """Return a tf.distribute strategy (or None). Must run before TensorFlow builds anything."""
    if distribute == "none":
        return None
    if distribute != "mirrored":
        raise CifarEdgeError(f"unknown --distribute {distribute!r}; choose none or mirrored")
    import_keras()
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return tf.distribute.MirroredStrategy()
    # No GPU: split the CPU into logical devices so the mirrored path runs (and is tested).
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_replicas)])
    except RuntimeError:
        pass  # already initialised: use whatever logical CPUs exist
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices=devices,
                                          cross_device_ops=tf.distribute.ReductionToOneDevice())


def compile_model(model, config: TrainConfig, steps_per_epoch: int):
    """Compile with the recipe in ``config``: Nesterov SGD on a one-cycle schedule, label smoothing."""
    keras = _keras()
    OneCycle, BiasScaledSGD = _register_schedule()
    total = steps_per_epoch * config.epochs
    schedule = OneCycle(config.lr, total, int(total * config.warmup), config.final_lr, config.start_lr)
    optimizer = BiasScaledSGD(learning_rate=schedule, momentum=config.momentum, nesterov=True,
                              bias_lr_scale=config.bias_lr_scale)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="acc")],
    )


class _Progress:
    """Per-epoch progress bar with images/s; stops training at the next batch on a signal."""

    def __init__(self, total_steps: int, batch_size: int, epoch: int, epochs: int, quiet: bool,
                 lookahead: "_Lookahead | None" = None, first_global_step: int = 0):
        keras = _keras()
        outer = self

        class Callback(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                outer.steps_done += 1
                if lookahead is not None:
                    lookahead.step(first_global_step + outer.steps_done)
                if outer.bar is not None:
                    outer.bar.update(1)
                    if logs and outer.steps_done % 5 == 0:
                        rate = outer.steps_done * batch_size / max(time.perf_counter() - outer.t0, 1e-9)
                        outer.bar.set_postfix(loss=f"{float(logs['loss']):.3f}", img_s=f"{rate:.0f}")
                if _STOP.is_set():
                    self.model.stop_training = True

        self.callback = Callback()
        self.steps_done = 0
        self.t0 = time.perf_counter()
        self.bar = None
        if not quiet:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, desc=f"epoch {epoch + 1}/{epochs}", unit="step",
                            leave=False, file=sys.stderr, dynamic_ncols=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


_STOP = threading.Event()


def _install_signal_handlers():
    """Ctrl+C / SIGTERM: finish the current batch, save, exit. A second Ctrl+C is immediate."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        if _STOP.is_set():
            raise KeyboardInterrupt
        _STOP.set()
        print("\nstopping after this batch and saving a resumable checkpoint "
              "(press Ctrl+C again to abort without saving)", file=sys.stderr)

    for s in previous:
        signal.signal(s, handler)

    def restore():
        for s, h in previous.items():
            signal.signal(s, h)

    return restore


def _save_state(run_dir: Path, state: dict):
    with atomic_write(run_dir / "state.json") as fh:
        json.dump(state, fh, indent=2)


def _append_history(run_dir: Path, rows: list[dict]):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(run_dir / "history.csv") as fh:
        fh.write(buf.getvalue())


def read_history(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "history.csv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [{k: (float(v) if k != "epoch" else int(v)) for k, v in row.items()} for row in csv.DictReader(fh)]


def plot_curves(rows: list[dict], path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["loss"] for r in rows], label="train (label-smoothed, + L2)")
    ax_loss.plot(epochs, [r["val_loss"] for r in rows], label="validation (cross-entropy)")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_acc.plot(epochs, [100 * r["train_acc"] for r in rows], label="train (augmented)")
    ax_acc.plot(epochs, [100 * r["val_acc"] for r in rows], label="validation")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _split_validation(data: Cifar10, config: TrainConfig, seed: int):
    """(x_train, y_train, x_val, y_val): a fixed held-out slice of train, or the test split."""
    if config.val_images <= 0:
        return data.x_train, data.y_train, data.x_test, data.y_test
    if config.val_images >= len(data.x_train):
        raise CifarEdgeError(f"--val-images {config.val_images} leaves no training images "
                             f"(the training split has {len(data.x_train)})")
    order = np.random.default_rng([seed, 1]).permutation(len(data.x_train))
    val, train = order[:config.val_images], np.sort(order[config.val_images:])
    return data.x_train[train], data.y_train[train], data.x_train[val], data.y_train[val]


def fit(config: TrainConfig, out: str | os.PathLike, data: str | os.PathLike | Cifar10 | None = None,
        resume: bool = False, quiet: bool = False,
        log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> FitResult:
    """Train ``config.model`` into the run folder ``out``. With ``resume=True``, continue the
    run saved there (its config.json wins over ``config``)."""
    run_dir = Path(out)
    if resume:
        if not (run_dir / "last.keras").exists() or not (run_dir / "state.json").exists():
            raise CifarEdgeError(f"{run_dir}: nothing to resume (no last.keras/state.json)")
        saved = json.loads((run_dir / "config.json").read_text())
        config = TrainConfig.load(run_dir / "config.json")
        data = data if data is not None else saved.get("data")
        state = json.loads((run_dir / "state.json").read_text())
        if state.get("finished"):
            raise CifarEdgeError(f"{run_dir}: that run already finished all {config.epochs} epochs")
    else:
        if (run_dir / "last.keras").exists():
            raise CifarEdgeError(f"{run_dir}: a run is already there; use --resume {run_dir} "
                                 "to continue it or choose another --out")
        seed = config.seed if config.seed is not None else int.from_bytes(os.urandom(4), "little")
        config = config.with_(seed=seed)
        state = {"epoch": 0, "step": 0, "best_val_acc": -1.0, "finished": False}
    # "auto" becomes what this machine uses; config.json records it.
    config = config.with_(precision=resolve_precision(config.precision))
    precision = config.precision
    strategy = setup_devices(config.distribute)
    if strategy is not None:
        log(f"distributing with {type(strategy).__name__} over {strategy.num_replicas_in_sync} replicas")
    keras = _keras()
    keras.utils.set_random_seed(config.seed)

    dataset = data if isinstance(data, Cifar10) else load_cifar10(data)
    dataset = take_slice(dataset, config.train_limit, config.test_limit, seed=config.seed)
    x_train, y_train, x_val, y_val = _split_validation(dataset, config, config.seed)

    n_classes = len(dataset.class_names)
    steps_per_epoch = int(np.ceil(len(x_train) / config.batch_size))

    run_dir.mkdir(parents=True, exist_ok=True)
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    # Layers take the global dtype policy when built (a loaded checkpoint keeps its own).
    with scope, _dtype_policy(precision):
        if resume:
            _register_schedule()
            model = keras.saving.load_model(run_dir / "last.keras", compile=True, safe_mode=True)
        else:
            model = build_model(config.model, num_classes=n_classes, train_images=x_train,
                                weight_decay=config.weight_decay)
            compile_model(model, config, steps_per_epoch)
    # Validation and model.keras use a float32 twin of a mixed-precision model: what is
    # measured here is what gets exported.
    model32 = as_float32(model)
    if not resume:
        meta = {"config": asdict(config), "data": dataset.source if not isinstance(data, Cifar10) else str(data.source),
                "class_names": list(dataset.class_names), "parameters": int(model.count_params()),
                "train_images": len(x_train), "validation_images": len(x_val),
                "versions": _versions()}
        with atomic_write(run_dir / "config.json") as fh:
            json.dump(meta, fh, indent=2)
        log(f"{config.model}: {model.count_params():,} parameters; {len(x_train):,} training / "
            f"{len(x_val):,} validation images; {config.epochs} epochs of {steps_per_epoch} steps; "
            f"{precision}")
    else:
        log(f"resuming {run_dir} at epoch {state['epoch'] + 1}/{config.epochs}"
            + (f", step {state['step']}" if state["step"] else ""))

    lookahead = _Lookahead(model, steps_per_epoch * config.epochs) if config.lookahead else None
    rows = read_history(run_dir) if resume else []
    eye = np.eye(n_classes, dtype=np.float32)
    restore_signals = _install_signal_handlers()
    _STOP.clear()
    t_start = time.perf_counter()
    try:
        for epoch in range(state["epoch"], config.epochs):
            # The epoch's data depends only on (seed, epoch): a resumed run sees the same batches.
            rng = np.random.default_rng([config.seed, epoch])
            order = rng.permutation(len(x_train))
            x_epoch = augment_epoch(x_train[order], rng, config.translate, config.flip, config.cutout)
            y_epoch = eye[y_train[order]]
            skip = state["step"] * config.batch_size
            progress = _Progress(steps_per_epoch - state["step"], config.batch_size, epoch, config.epochs, quiet,
                                 lookahead, epoch * steps_per_epoch + state["step"])
            t0 = time.perf_counter()
            hist = model.fit(x_epoch[skip:], y_epoch[skip:], batch_size=config.batch_size, epochs=1,
                             shuffle=False, verbose=0, callbacks=[progress.callback])
            progress.close()
            seconds = time.perf_counter() - t0
            steps_now = state["step"] + progress.steps_done
            if _STOP.is_set() and steps_now < steps_per_epoch:
                state.update(epoch=epoch, step=steps_now)
                _checkpoint(model, run_dir, state)
                raise Interrupted(f"interrupted in epoch {epoch + 1} at step {steps_now}/{steps_per_epoch}; "
                                  f"checkpoint saved. Resume with: cifar-train --resume {run_dir}")
            if lookahead is not None and epoch + 1 == config.epochs:
                lookahead.finish()  # the model ends as the average, as in airbench
            if model32 is not model:
                model32.set_weights(model.get_weights())
            val_probs = model32.predict(x_val, batch_size=1000, verbose=0)
            val_acc = float(np.mean(np.argmax(val_probs, 1) == y_val))
            val_loss = float(np.mean(-np.log(np.clip(val_probs[np.arange(len(y_val)), y_val], 1e-7, 1))))
            lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
            row = {"epoch": epoch + 1, "lr": lr, "loss": float(hist.history["loss"][-1]),
                   "train_acc": float(hist.history["acc"][-1]), "val_loss": val_loss, "val_acc": val_acc,
                   "seconds": round(seconds, 2),
                   "images_per_s": round((len(x_train) - skip) / seconds, 1)}
            rows.append(row)
            improved = val_acc > state["best_val_acc"]
            if improved:
                state["best_val_acc"] = val_acc
                with atomic_path(run_dir / "model.keras") as tmp:
                    model32.save(tmp)
            state.update(epoch=epoch + 1, step=0, finished=epoch + 1 == config.epochs)
            _checkpoint(model, run_dir, state)
            _append_history(run_dir, rows)
            plot_curves(rows, run_dir / "curves.png")
            log(f"epoch {epoch + 1:>3}/{config.epochs}  loss {row['loss']:.4f}  train acc {100 * row['train_acc']:5.2f}%  "
                f"val loss {val_loss:.4f}  val acc {100 * val_acc:5.2f}%{' *' if improved else '  '}  "
                f"{seconds:6.1f}s  {row['images_per_s']:.0f} img/s")
            if _STOP.is_set():
                raise Interrupted(f"interrupted after epoch {epoch + 1}; checkpoint saved. "
                                  f"Resume with: cifar-train --resume {run_dir}")
    finally:
        restore_signals()
        _STOP.clear()
    return FitResult(run_dir, state["best_val_acc"], state["epoch"], time.perf_counter() - t_start)


@contextlib.contextmanager
def _dtype_policy(name: str):
    keras = _keras()
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _checkpoint(model, run_dir: Path, state: dict):
    # last.keras first, then state.json: state never points past what is on disk.
    with atomic_path(run_dir / "last.keras") as tmp:
        model.save(tmp)
    _save_state(run_dir, state)


def _versions() -> dict:
    import platform

    import keras
    import tensorflow as tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "machine": platform.machine()}
