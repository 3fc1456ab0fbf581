"""Fitting: build the model, train it with a one-cycle schedule, checkpoint every epoch.

``fit`` reads top to bottom as its steps: open the run folder (new, resumed or overwritten),
load and split the data, size the batches to it, build or load the model, record the run,
then train epoch by epoch. What lands on disk is described in ``train.runfolder``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from runtime.atomic import atomic_path, atomic_write
from runtime.errors import CifarEdgeError
from runtime.model.contract import CIFAR10_CLASSES

from . import budget, multiworker, runfolder
from .augment import augment_epoch, augmented_epoch
from .average import average_tail, snapshot_path
from .callable import callable_module
from .config import AUTO_BATCH_MAX, RECIPE_BATCH, TrainConfig
from .data import ImageDataset, load_dataset, recorded_test_files, take_slice
from .models import (as_float32, build_model, check_init, copy_features, load_keras_model, precision_reason,
                     resolve_precision, save_keras_model)
from .optim import BiasScaledSGD, OneCycle
from .preflight import check_run
from .progress import plural, progress_bar
from .quiet_import import import_keras
from .replay import forgetting_warning
from .split import Split, auto_val_images, split_validation  # noqa: F401 (importable from here too)

keras = import_keras()

FEW_STEPS = 10  # an epoch of fewer optimizer steps than this gets a warning
MIN_AUTO_BATCH = 8  # images: the smallest batch chosen or suggested for an epoch of FEW_STEPS steps
HEARTBEAT_S = 30.0  # in a log (no progress bar), a line at least this often within an epoch
SPEED_STEPS = 3  # steps timed after the first (compiled) one before the speed is told
Log = Callable[[str], None]
clock = time.perf_counter  # every duration here (tests replace it with a fake clock)


class Interrupted(CifarEdgeError):
    """Training stopped by Ctrl+C or SIGTERM after saving a resumable checkpoint."""

    exit_code = 130
    label = ""  # "cifar-train: interrupted in epoch 3 ...; checkpoint saved ...": asked for, not an error


@dataclass
class FitResult:
    run_dir: Path | None  # None: a worker of a cluster other than the chief, which writes nothing
    best_val_acc: float
    epochs_done: int
    seconds: float


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class FitControl:
    """What steers a ``fit`` from outside it, beside its options (a notebook rarely needs it)."""

    stop: "StopRequest | None" = None  # ends training early (Ctrl+C/SIGTERM set one when it is None)
    # Extra Keras callbacks, called before the built-in one at every step (so a stop they
    # request takes effect at that same step).
    callbacks: Sequence = ()
    # When ``config.time_budget`` began: a ``train.fit.clock()`` reading (the CLI's start, so
    # the budget counts the whole command); None: now.
    started: float | None = None


def fit(config: TrainConfig, out: str | os.PathLike, data: str | os.PathLike | ImageDataset | None = None,
        resume: bool = False, overwrite: bool = False, quiet: bool | None = None, log: Log = _stderr,
        control: FitControl = FitControl()) -> FitResult:
    """Train ``config.model`` into the run folder ``out``.

    resume: continue the unfinished run saved there (its config.json wins over ``config``).
    overwrite: replace a run already there instead of refusing.
    quiet: no progress bars (None: bars only when stderr is a terminal; ``log`` lines always).
    control: a stop request, extra Keras callbacks, when a time budget began (``FitControl``).

    ``config.distribute == "multiworker"``: this process is one worker of the cluster in
    TF_CONFIG (``train.multiworker``); the chief resumes the unfinished multi-worker run in
    ``out`` by itself, and only the chief writes. A stop request is refused there: a worker that
    stops alone leaves the others waiting.
    """
    cluster = multiworker.cluster_of(config)
    if cluster is not None and control.stop is not None:
        raise CifarEdgeError("a stop request cannot end a multi-worker run: a worker that stops alone leaves "
                             "the others waiting")
    run = _Run(config, Path(out), log, quiet, control.stop or StopRequest(), list(control.callbacks),
               clock() if control.started is None else control.started, cluster)
    with multiworker.lost_workers_as_error(cluster, run.run_dir):
        with runfolder.RunLock(run.run_dir) if run.chief else contextlib.nullcontext() as lock:
            return _fit_locked(run, data, resume, overwrite, lock)


@dataclass
class _Run:
    """One call of ``fit``, handed down whole: what it was asked, then what its steps found
    (the config as it trains, the state, the data split, the model)."""

    config: TrainConfig
    run_dir: Path
    log: Log
    quiet: bool | None
    stop: "StopRequest"
    callbacks: list
    started: float  # a clock() reading: when config.time_budget began
    cluster: "multiworker.Cluster | None"
    state: dict | None = None
    split: Split | None = None
    steps_per_epoch: int = 0
    model: object = None
    why: str = ""  # why the run trains in its precision
    speed_note: "_SpeedNote | None" = None
    deadline: float | None = None  # a budgeted run ends here, finished

    @property
    def chief(self) -> bool:
        """Whether this process writes the run folder (the only one, outside a cluster)."""
        return self.cluster is None or self.cluster.is_chief


def _fit_locked(run: _Run, data, resume: bool, overwrite: bool, lock: "runfolder.RunLock | None") -> FitResult:
    """``fit``'s steps, in the run folder's lock."""
    asked = run.config.precision
    run.config, run.state, data, resume = _open_run(run.config, run.run_dir, data, resume, overwrite, run.cluster)
    run.why = "as the run was started" if resume else precision_reason(asked)
    strategy = setup_devices(run.config.distribute)  # a multi-worker strategy must come before any other op
    if run.cluster is not None:
        run.config, run.state = multiworker.share_run(strategy, run.cluster, run.config, run.state)
    dataset = _load_dataset(data, run.config, run.run_dir if resume and run.chief else None, run.quiet, run.log)
    init = _prepare_model(run, dataset, strategy, resume)
    fresh = not (resume or run.state["epoch"])
    if run.config.time_budget is not None and fresh:
        run.config, planned = _plan_to_budget(run.model, run.config, run.split, run.steps_per_epoch, run.started,
                                              run.why, run.log)
        run.deadline = run.started + run.config.time_budget - END_RESERVE_S - planned.finish_s
    else:  # a planned run has told its speed already; any other tells it after its first steps
        run.speed_note = _SpeedNote(run.config, run.steps_per_epoch, run.why, run.log)
    if not fresh:
        run.log(f"resuming {run.run_dir if run.chief else 'the run of the chief'} at epoch "
                f"{run.state['epoch'] + 1}/{run.config.epochs}"
                + (f", step {run.state['step']}" if run.state["step"] else ""))
    elif run.chief:
        _start_run_folder(run, dataset, data, overwrite, init, lock)
    return _train_epochs(run)


def _prepare_model(run: _Run, dataset: ImageDataset, strategy, resume: bool) -> dict | None:
    """Split the data, size the batches to it, and build (or load) the model into ``run``;
    returns what --init copied, or None."""
    config, log = run.config, run.log
    split = split_validation(dataset, config.val_images, config.seed)
    run.config = config = _fit_batches_to_data(config, len(split.x_train), log)
    if strategy is not None:
        split = _fill_last_batch(split, config.batch_size, strategy.num_replicas_in_sync, log)
        log(_distributing(strategy, run.cluster, config))
    run.split, run.steps_per_epoch = split, -(-len(split.x_train) // config.batch_size)  # ceil
    keras.utils.set_random_seed(config.seed)
    # In a cluster every worker builds the model alike (the strategy pairs their variables in the
    # order they are made), then takes the chief's weights: its last.keras when it resumes.
    run.model, init = _build_or_load(config, run.run_dir, resume and run.cluster is None, strategy, split,
                                     len(dataset.class_names), run.steps_per_epoch, log)
    if run.cluster is not None:
        multiworker.share_state(strategy, run.cluster, run.model, split,
                                run.run_dir / "last.keras" if resume else None)
    if init is not None:
        counts = np.bincount(split.y_train, minlength=len(dataset.class_names)).tolist()
        warning = forgetting_warning(Path(init["from"]), dataset.source, tuple(dataset.class_names), counts)
        if warning:
            log(warning)
    if init is not None and config.init == "shipped" and tuple(dataset.class_names) == CIFAR10_CLASSES \
            and config.val_images != 0:
        log("note: the shipped model was trained on all of CIFAR-10's training split, these validation images "
            "included, so validation accuracy reads high; the test split (cifar-export, cifar-eval) it never saw")
    return init


def _schedule_words(config: TrainConfig, steps_per_epoch: int) -> str:
    """"6 epochs of 44 steps", or for a run planned to end inside an epoch "130 steps
    (2.95 epochs of 44)"."""
    total = config.total_steps(steps_per_epoch)
    if total == steps_per_epoch * config.epochs:
        return f"{plural(config.epochs, 'epoch')} of {plural(steps_per_epoch, 'step')}"
    return f"{plural(total, 'step')} ({total / steps_per_epoch:.2f} epochs of {steps_per_epoch:,})"


# --- the steps ------------------------------------------------------------------------------

def _open_run(config: TrainConfig, run_dir: Path, data, resume: bool, overwrite: bool,
              cluster: "multiworker.Cluster | None"):
    """(config, state, data, resume) for a new or resumed run, once ``check_run`` has let it
    start (a refused run creates nothing). "auto" settings become what this machine uses.
    In a cluster, the chief resumes the unfinished multi-worker run in ``run_dir`` (a restarted
    job runs its first command again); the other workers open nothing and take the chief's run."""
    resume = check_run(config, run_dir, data, resume, overwrite, cluster)
    if cluster is not None and not cluster.is_chief:
        return config, dict(runfolder.NEW_STATE), data, False
    if resume:
        state = runfolder.read_state(run_dir)
        config = TrainConfig.load(run_dir / "config.json")
        data = data if data is not None else runfolder.read_config(run_dir).get("data")
    else:
        seed = config.seed if config.seed is not None else int.from_bytes(os.urandom(4), "little")
        config, state = config.with_(seed=seed), dict(runfolder.NEW_STATE)
    return config.with_(precision=resolve_precision(config.precision)), state, data, resume


def _load_dataset(data, config: TrainConfig, resumed: Path | None, quiet: bool | None, log: Log) -> ImageDataset:
    """The dataset at the run's input size; a resumed run on a DIR/<class>/ folder keeps the
    test split it recorded."""
    if isinstance(data, ImageDataset):
        dataset = data
    else:
        dataset = load_dataset(data, quiet=quiet, log=log, input_size=config.input_size,
                               test_files=recorded_test_files(resumed) if resumed else None)
    return take_slice(dataset, config.train_limit, config.test_limit, seed=config.seed)


def batch_for_steps(n_train: int, most: int) -> int:
    """The largest power of two up to ``most`` that makes an epoch of ``n_train`` images at
    least FEW_STEPS steps, but not below MIN_AUTO_BATCH images, nor above ``n_train``."""
    batch = 1 << (max(most, 1).bit_length() - 1)  # the power of two at or below ``most``
    while batch > MIN_AUTO_BATCH and -(-n_train // batch) < FEW_STEPS:
        batch //= 2
    return max(1, min(batch, n_train))


def _fit_batches_to_data(config: TrainConfig, n_train: int, log: Log) -> TrainConfig:
    """The recipe's batch sized to the data (``batch_size`` "auto" or None: ``size_batch``); a
    batch someone chose no larger than one epoch can fill, and a warning when it leaves an epoch
    only a few steps. config.json records the batch (and rate) used."""
    if config.batch_size in ("auto", None):
        return size_batch(config, n_train, log)
    if config.batch_size > n_train:
        log(f"batch size {config.batch_size:,} is more than the {n_train:,} training images: "
            f"using {n_train:,}")
        config = config.with_(batch_size=n_train)
    steps, smaller = -(-n_train // config.batch_size), batch_for_steps(n_train, config.batch_size)
    # Nothing smaller to suggest (a batch sized to the data, resumed, is at the floor): no warning.
    if steps < FEW_STEPS and smaller < config.batch_size:
        log(f"warning: only {plural(steps, 'step')} per epoch ({n_train:,} images, batch {config.batch_size:,}); "
            f"the schedule has few updates to work with: a smaller --batch-size (e.g. {smaller}) trains better "
            "on this little data")
    return config


def size_batch(config: TrainConfig, n_train: int, log: Log) -> TrainConfig:
    """``config`` with the recipe's batch halved until ``n_train`` images make an epoch of
    FEW_STEPS steps (``batch_for_steps``), said in one line when it is smaller than the recipe's:
    from RECIPE_BATCH, the peak rate scaled with it (``batch_size`` "auto", training from
    scratch), or from AUTO_BATCH_MAX, the rate as given (None, the fine-tuning recipe's)."""
    scale = config.batch_size == "auto"
    most = RECIPE_BATCH if scale else AUTO_BATCH_MAX
    batch = batch_for_steps(n_train, most)
    # Linear scaling: a batch k times smaller, a peak rate k times smaller. airbench94, where the
    # recipe comes from, sets its rate "per 1024 examples" on a loss summed over the batch, so at
    # a fixed rate its step shrinks with the batch; on our mean loss that is lr * batch / 1024
    # (airbench's 11.5 over its momentum factor 1 + 1/(1 - 0.85) is our 1.5). It is also Goyal
    # et al.'s rule for SGD ("Accurate, Large Minibatch SGD", 2017), weight decay unchanged, so
    # the decay per step follows the batch, as airbench's does. Square-root scaling (Krizhevsky
    # 2014; Hoffer et al. 2017) would keep a hotter rate. Measured: `default`, 2 epochs on 1,800
    # CIFAR-10 images, 27.0% on 2,000 test images at 128/0.1875 against 12.1% at 1,024/1.5; and
    # from scratch on 900 images of 3 classes at batch 64, a third of 1.5 trained 14 points better
    # than 1.5 (docs/training.md, "Your own classes").
    lr = config.lr * batch / most if scale else config.lr
    if batch < most:
        log(f"batch size {batch:,} for {n_train:,} training images: {plural(-(-n_train // batch), 'step')} "
            f"per epoch (the recipe's {most:,} is halved on little data, down to {MIN_AUTO_BATCH}; "
            "--batch-size sets one)"
            + (f", and the peak learning rate with it: {lr:g} (lr {config.lr:g} x {batch:,}/{most:,})"
               if scale else ""))
    return config.with_(batch_size=batch, lr=lr)


def _fill_last_batch(split: Split, batch_size: int, replicas: int, log: Log) -> Split:
    """A distributed split whose last batch has an image for every replica: one with none would
    train on an empty batch, which BatchNormalization cannot. The few images left over are
    dropped (the split's last ones, the same on every worker)."""
    if batch_size < replicas:
        raise CifarEdgeError(f"--batch-size {batch_size} is less than the {replicas} replicas: "
                             f"every replica needs an image of each batch; use --batch-size {replicas} or more")
    extra = len(split.x_train) % batch_size
    if not 0 < extra < replicas:
        return split
    log(f"leaving out {plural(extra, 'training image')}: the last batch of an epoch needs one image for each "
        f"of the {replicas} replicas")
    keep = len(split.x_train) - extra
    return Split(split.x_train[:keep], split.y_train[:keep], split.x_val, split.y_val)


def _distributing(strategy, cluster: "multiworker.Cluster | None", config: TrainConfig) -> str:
    replicas = strategy.num_replicas_in_sync
    # MultiWorkerMirroredStrategy's class is called CollectiveAllReduceStrategy.
    name = type(strategy).__name__ if cluster is None else "MultiWorkerMirroredStrategy"
    return (f"distributing with {name} over {plural(replicas, 'replica')}"
            + (f" ({cluster.name} of {plural(cluster.size, 'worker')})" if cluster is not None else "")
            + f": batch {config.batch_size:,} in all, {config.batch_size // replicas:,} per replica; "
              f"--lr {config.lr:g} is for the global batch")


def _build_or_load(config: TrainConfig, run_dir: Path, resume: bool, strategy, split: Split,
                   n_classes: int, steps_per_epoch: int, log: Log) -> tuple[object, dict | None]:
    """(the compiled model, what --init copied into it or None)."""
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    # Layers take the global dtype policy when built (a loaded checkpoint keeps its own).
    with scope, _dtype_policy(config.precision):
        if resume:
            return keras.saving.load_model(run_dir / "last.keras", compile=True, safe_mode=True), None
        model = build_for_config(config, n_classes, split.x_train)
        init = _copy_init(model, config, log) if config.init is not None else None
        compile_model(model, config, steps_per_epoch)
        return model, init


END_RESERVE_S = 3.0  # seconds a budgeted run keeps for its last lines and the exit (TensorFlow's teardown)


def _plan_to_budget(model, config: TrainConfig, split: Split, steps_per_epoch: int, started: float, why: str,
                    log: Log) -> tuple[TrainConfig, budget.Plan]:
    """Time real steps (``_Probe``), plan the run's steps to end within ``config.time_budget``
    of ``started``, and recompile ``model`` with the learning-rate curve over exactly those
    steps. The timed steps train at the warm-up's start rate and are not counted in the plan."""
    import tempfile

    bs = config.batch_size
    n = min(len(split.x_train), bs * PROBE_MAX_STEPS)
    x = split.x_train[:n]
    y = np.eye(int(model.output_shape[-1]), dtype=np.float32)[split.y_train[:n]]
    probe = _Probe()
    t0 = clock()
    model.fit(x, y, batch_size=bs, epochs=1, shuffle=False, verbose=0, callbacks=[probe])
    call_s = clock() - t0
    if probe.timed:
        step_s = probe.timed_s / probe.timed
    else:  # the training split is a single batch: time a second, compiled, call
        t1 = clock()
        model.fit(x, y, batch_size=bs, epochs=1, shuffle=False, verbose=0)
        step_s = clock() - t1
    speed = budget.Speed(step_s=max(step_s, 1e-6), first_step_s=probe.first_s, batch_size=bs)
    # What each epoch costs beside its steps: its fit call, augmenting it, evaluating, saving.
    call_overhead = max(0.0, call_s - probe.first_s - probe.timed_s)
    t0 = clock()
    augment_epoch(x, np.random.default_rng([config.seed, 2]), config.translate, config.flip, config.cutout)
    augment_s = (clock() - t0) * len(split.x_train) / n
    t0 = clock()
    k = min(len(split.x_val), 1000)
    loss_and_accuracy(model, split.x_val[:k], split.y_val[:k])
    evaluate_s = (clock() - t0) * len(split.x_val) / k
    with tempfile.TemporaryDirectory() as tmp:
        t0 = clock()
        save_keras_model(model, Path(tmp) / "model.keras")
        model.save(Path(tmp) / "last.keras")
        runfolder.plot_curves([{"epoch": 1, "lr": 0.0, "loss": 1.0, "train_acc": 0.5, "val_loss": 1.0,
                                "val_acc": 0.5, "seconds": 1.0, "images_per_s": 1.0}], Path(tmp) / "curves.png")
        save_s = clock() - t0
    overhead = call_overhead + augment_s + evaluate_s + save_s
    remaining = config.time_budget - (clock() - started) - END_RESERVE_S
    restart = max(0.0, probe.first_s - step_s)  # the recompiled model traces its step again
    planned = budget.plan(remaining, speed, steps_per_epoch, overhead, restart_s=restart,
                          finish_s=evaluate_s + save_s + call_overhead)
    config = config.with_(steps=planned.steps, epochs=planned.epochs)
    compile_model(model, config, steps_per_epoch)
    log(f"time budget {budget.format_duration(config.time_budget)}: "
        f"{budget.format_duration(clock() - started)} gone (start-up, data, {1 + probe.timed} timed steps); "
        + budget.estimate_line(speed, config.precision, why, planned.steps, steps_per_epoch, overhead))
    log(f"planned: {_schedule_words(config, steps_per_epoch)}, the learning rate over exactly those, "
        f"~{budget.format_duration(planned.seconds)} of training"
        + ("; less than one epoch: each image is seen at most once, so a longer --time trains better"
           if planned.steps < steps_per_epoch else ""))
    return config, planned


PROBE_S = 2.0  # seconds of compiled steps a budgeted run times before it plans
PROBE_MAX_STEPS = 60


class _Probe(keras.callbacks.Callback):
    """Times the steps of one fit call: the first (tracing and compiling) apart, then the
    compiled ones until there are SPEED_STEPS of them and PROBE_S seconds."""

    def __init__(self):
        super().__init__()
        self.t0 = clock()
        self.first_s, self.timed, self.timed_s = 0.0, 0, 0.0
        self._last = None

    def on_train_batch_end(self, batch, logs=None):
        now = clock()
        if self._last is None:
            self.first_s = now - self.t0
        else:
            self.timed += 1
            self.timed_s += now - self._last
            if self.timed >= SPEED_STEPS and self.timed_s >= PROBE_S:
                self.model.stop_training = True
        self._last = now


class _SpeedNote:
    """Once the first steps of a run are timed: the speed, the precision and why, and how long
    the run will take; a warning when that is more than ``budget.LONG_RUN_S``."""

    def __init__(self, config: TrainConfig, steps_per_epoch: int, why: str, log: Log):
        self.config, self.steps_per_epoch, self.why, self.log = config, steps_per_epoch, why, log
        self.told = False

    def tell(self, speed: budget.Speed, steps_left: int) -> None:
        if self.told:
            return
        self.told = True
        self.log(budget.estimate_line(speed, self.config.precision, self.why, steps_left, self.steps_per_epoch)
                 + (" from here" if steps_left < self.config.total_steps(self.steps_per_epoch) else ""))
        run_s = steps_left * speed.step_s
        if run_s > budget.LONG_RUN_S:
            self.log(f"warning: at this speed the run takes about {budget.format_duration(run_s)}; "
                     "--time 30m (or any budget) plans the best run that fits in the time, "
                     "and --model quick trains a smaller model in minutes")


def _copy_init(model, config: TrainConfig, log: Log) -> dict:
    """Start ``model`` from the features of the model ``config.init`` names; say what was copied."""
    import hashlib

    path = check_init(config.init, config.model)
    copied, fresh = copy_features(model, load_keras_model(path), path.name)
    log(f"init: copied {len(copied)} layers from {path} ({', '.join(copied)}); starting fresh: {', '.join(fresh)}")
    return {"from": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "copied": copied,
            "fresh": fresh}


def _start_run_folder(run: _Run, dataset: ImageDataset, data, overwrite: bool, init: dict | None,
                      lock: "runfolder.RunLock | None" = None) -> None:
    """Create the run folder (only now, when everything before has worked), lock it, write
    config.json, and say what the run is."""
    config, split, model = run.config, run.split, run.model
    run.run_dir.mkdir(parents=True, exist_ok=True)
    if lock is not None:
        lock.acquire()
    if overwrite:
        runfolder.clear_run(run.run_dir)
    meta = {"config": asdict(config), "data": str(data.source) if isinstance(data, ImageDataset) else dataset.source,
            "class_names": list(dataset.class_names), "input_size": config.input_size, "split": dataset.split,
            "init": init, "parameters": int(model.count_params()),
            "train_images": len(split.x_train), "validation_images": len(split.x_val),
            "versions": _versions()}
    with atomic_write(run.run_dir / "config.json") as fh:
        json.dump(meta, fh, indent=2)
    run.log(f"{config.model}: {model.count_params():,} parameters; {len(split.x_train):,} training / "
            f"{len(split.x_val):,} validation images; {_schedule_words(config, run.steps_per_epoch)}; "
            f"{config.precision} ({run.why})")


@dataclass(frozen=True)
class _Epoch:
    """What one epoch's training steps did."""

    seconds: float
    steps: int  # steps done in this call (a resumed epoch starts past its first)
    loss: float
    train_acc: float
    out_of_time: bool  # the deadline of a budgeted run ended it


def _train_epochs(run: _Run) -> FitResult:
    """Train from ``run.state`` to the last epoch. Outside the chief (``run.chief`` False: a
    worker of a cluster, which only trains) nothing is evaluated or written. A budgeted run
    (``run.deadline``) whose plan was too hopeful ends at the deadline, finished."""
    multiworker_run = run.config.distribute == "multiworker"
    # Validation and model.keras use a float32 twin of a mixed-precision model: what is
    # measured here is what gets exported. In a cluster the twin is always a copy outside the
    # strategy, so that the chief evaluates alone, with no collective op for the others to join.
    model32 = as_float32(run.model, copy=multiworker_run) if run.chief else None
    total = run.config.total_steps(run.steps_per_epoch)
    lookahead = Lookahead(run.model, total) if run.config.lookahead else None
    rows = [r for r in runfolder.read_history(run.run_dir) if r["epoch"] <= run.state["epoch"]] if run.chief else []
    t_start = clock()
    # No signal handlers in a cluster: a worker that stopped alone would leave the others waiting.
    with run.stop.on_signals() if not multiworker_run else contextlib.nullcontext():
        for epoch in range(run.state["epoch"], run.config.epochs):
            first_step = run.state["step"]
            trained = _train_one_epoch(run, epoch, first_step, lookahead)
            steps_now = first_step + trained.steps
            epoch_steps = run.config.epoch_steps(epoch, run.steps_per_epoch)
            if run.stop.is_set() and steps_now < epoch_steps:
                _stop_inside_epoch(run, epoch, steps_now)
            if trained.out_of_time and not run.stop.is_set() and (steps_now < epoch_steps
                                                                 or epoch + 1 < run.config.epochs):
                run.log(f"time is up at step {epoch * run.steps_per_epoch + steps_now:,} of the {total:,} "
                        "planned: the run ends here")
                run.config = run.config.with_(epochs=epoch + 1, steps=epoch * run.steps_per_epoch + steps_now,
                                              average_last=0)
            if lookahead is not None and epoch + 1 == run.config.epochs:
                lookahead.finish()  # the model ends as the average, as in airbench
            if model32 is None:  # not the chief: it only trains
                run.state.update(epoch=epoch + 1)
                run.log(f"{_trained_words(run, epoch, trained)}{trained.seconds:6.1f}s (the chief evaluates and saves)")
                continue
            if _finish_epoch(run, model32, rows, epoch, first_step, steps_now, trained):
                break  # the last epoch (a budgeted run whose time is up ends before its planned ones)
            if run.stop.is_set():
                raise Interrupted(f"interrupted after epoch {epoch + 1}; checkpoint saved "
                                  f"({run.run_dir / 'last.keras'}; the best model so far is "
                                  f"{run.run_dir / 'model.keras'}). Resume with: cifar-train --resume {run.run_dir}")
    return FitResult(run.run_dir if run.chief else None, run.state["best_val_acc"], run.state["epoch"],
                     clock() - t_start)


def _trained_words(run: _Run, epoch: int, trained: _Epoch) -> str:
    return (f"epoch {epoch + 1:>3}/{run.config.epochs}  loss {trained.loss:.4f}  "
            f"train acc {100 * trained.train_acc:5.2f}%  ")


def _stop_inside_epoch(run: _Run, epoch: int, steps_now: int) -> None:
    """A stop asked for inside an epoch: checkpoint that step and raise Interrupted."""
    run.state.update(epoch=epoch, step=steps_now)
    _checkpoint(run.model, run.run_dir, run.state)
    raise Interrupted(f"interrupted in epoch {epoch + 1} at step {steps_now}/{run.steps_per_epoch}; "
                      f"checkpoint saved ({run.run_dir / 'last.keras'}, {run.run_dir / 'state.json'}; "
                      f"the best model so far is {run.run_dir / 'model.keras'}). "
                      f"Resume with: cifar-train --resume {run.run_dir}")


def _finish_epoch(run: _Run, model32, rows: list[dict], epoch: int, first_step: int, steps_now: int,
                  trained: _Epoch) -> bool:
    """Evaluate the epoch's model (the tail average after the last epoch), save it, log it.
    Returns whether this was the run's last epoch."""
    config, run_dir = run.config, run.run_dir
    if model32 is not run.model:
        model32.set_weights(run.model.get_weights())
    last_epoch = epoch + 1 == config.epochs
    if epoch + 1 > config.epochs - max(config.snapshots, config.averaged_epochs):
        with atomic_path(snapshot_path(run_dir, epoch + 1)) as tmp:
            model32.save_weights(tmp)
    averaged = _tail_average(model32, config, run_dir) if last_epoch else None
    final = averaged or model32
    val_loss, val_acc = loss_and_accuracy(final, run.split.x_val, run.split.y_val)
    images = min(len(run.split.x_train), steps_now * config.batch_size) - first_step * config.batch_size
    row = {"epoch": epoch + 1, "lr": float(keras.ops.convert_to_numpy(run.model.optimizer.learning_rate)),
           "loss": trained.loss, "train_acc": trained.train_acc, "val_loss": val_loss, "val_acc": val_acc,
           "seconds": round(trained.seconds, 2), "images_per_s": round(images / trained.seconds, 1)}
    rows.append(row)
    improved = _save_epoch(run.model, final, run_dir, run.state, rows, last_epoch, keep=averaged is not None)
    run.log(f"{_trained_words(run, epoch, trained)}val loss {val_loss:.4f}  val acc {100 * val_acc:5.2f}%"
            f"{' *' if improved else '  '}  {trained.seconds:6.1f}s  {row['images_per_s']:.0f} img/s"
            + (f"  (the mean of the last {plural(config.averaged_epochs, 'epoch')})" if averaged else ""))
    return last_epoch


def _train_one_epoch(run: _Run, epoch: int, first_step: int, lookahead: "Lookahead | None") -> _Epoch:
    """One pass over the augmented training split, from ``first_step`` (a resumed epoch) to the
    epoch's last step (a planned run's last epoch may end early), or to ``run.deadline``."""
    config, spe = run.config, run.steps_per_epoch
    x_epoch, labels = augmented_epoch(run.split.x_train, run.split.y_train, config, epoch)  # the same on resume
    y_epoch = np.eye(int(run.model.output_shape[-1]), dtype=np.float32)[labels]
    epoch_steps = config.epoch_steps(epoch, spe)
    skip, end = first_step * config.batch_size, epoch_steps * config.batch_size
    name = f"epoch {epoch + 1}/{config.epochs}"
    bar = progress_bar(epoch_steps - first_step, name, "step", run.quiet)
    heartbeat = _Heartbeat(name, first_step, epoch_steps, run.log) if bar.disable else None
    step_callback = StepCallback(run, epoch * spe + first_step, bar, lookahead, heartbeat)
    t0 = clock()
    try:
        hist = run.model.fit(x_epoch[skip:end], y_epoch[skip:end], batch_size=config.batch_size, epochs=1,
                             shuffle=False, verbose=0, callbacks=[*run.callbacks, step_callback])
    finally:
        bar.close()
    return _Epoch(clock() - t0, step_callback.steps_done, float(hist.history["loss"][-1]),
                  float(hist.history["acc"][-1]), step_callback.out_of_time)


def loss_and_accuracy(model, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(cross-entropy, accuracy) of ``model`` on (N, S, S, 3) uint8 images."""
    probs = model.predict(x, batch_size=1000, verbose=0)  # (N, classes) float32
    accuracy = float(np.mean(np.argmax(probs, 1) == y))
    loss = float(np.mean(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1))))
    return loss, accuracy


def _tail_average(model32, config: TrainConfig, run_dir: Path):
    """The run's final model as the mean of its last ``config.averaged_epochs`` epochs
    (``train.average``), in a float32 copy; None when the recipe does not average."""
    if not config.averaged_epochs:
        return None
    target = as_float32(model32, copy=True)
    epochs = range(config.epochs - config.averaged_epochs + 1, config.epochs + 1)
    average_tail(target, [snapshot_path(run_dir, e) for e in epochs], images=None)
    return target


def _save_epoch(model, model32, run_dir: Path, state: dict, rows: list[dict], last_epoch: bool,
                keep: bool = False) -> bool:
    """model.keras if the epoch is the best so far (or ``keep``: the run's tail average), then
    history, last.keras, state, curves. Returns whether model.keras was written."""
    row = rows[-1]
    improved = keep or row["val_acc"] > state["best_val_acc"]
    if improved:
        state["best_val_acc"] = row["val_acc"]
        save_keras_model(model32, run_dir / "model.keras")
    state.update(epoch=row["epoch"], step=0, finished=last_epoch)
    # history.csv before state.json: a run stopped in between resumes at the epoch state.json
    # names, and drops the rows after it (_train_epochs), so no row goes missing or twice.
    runfolder.write_history(run_dir, rows)
    _checkpoint(model, run_dir, state)
    runfolder.plot_curves(rows, run_dir / "curves.png")
    return improved


def _checkpoint(model, run_dir: Path, state: dict) -> None:
    # last.keras first, then state.json: state never points past what is on disk.
    with atomic_path(run_dir / "last.keras") as tmp:
        model.save(tmp)
    runfolder.save_state(run_dir, state)


# --- the pieces the steps use ---------------------------------------------------------------

def build_for_config(config: TrainConfig, n_classes: int, train_images: np.ndarray):
    """A new ``config.model`` for ``n_classes``, its whitening kernel computed from
    ``train_images`` ((N, S, S, 3) uint8) and its weight decay as ``config`` says."""
    return build_model(config.model, num_classes=n_classes, train_images=train_images,
                       input_size=config.input_size, weight_decay=config.weight_decay,
                       bias_weight_decay=config.bias_weight_decay, whiten_bias=config.whiten_bias_epochs > 0)


def compile_model(model, config: TrainConfig, steps_per_epoch: int) -> None:
    """Compile with the recipe in ``config``: Nesterov SGD on a one-cycle schedule, label smoothing."""
    total = config.total_steps(steps_per_epoch)
    schedule = OneCycle(config.lr, total, int(total * config.warmup), config.final_lr, config.start_lr)
    optimizer = BiasScaledSGD(learning_rate=schedule, momentum=config.momentum, nesterov=True,
                              bias_lr_scale=config.bias_lr_scale,
                              whiten_bias_steps=steps_per_epoch * config.whiten_bias_epochs)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="acc")],
    )


class Lookahead:
    """airbench's lookahead: every 5 steps, move a running average of all float weights (BatchNorm
    statistics included) towards the weights and copy it back into the model. The average's
    decay grows as (step/total)^3, so it is weak early and strong at the end; after the last
    step the model holds the average. A resumed run restarts the average from the weights."""

    EVERY = 5

    def __init__(self, model, total_steps: int):
        self.variables = [v for v in model.weights if "float" in str(v.dtype)]
        self.average = [np.array(v.numpy()) for v in self.variables]
        self.total_steps = total_steps

    def step(self, global_step: int) -> None:
        if global_step % self.EVERY:
            return
        decay = 0.95 ** 5 * (min(global_step, self.total_steps) / self.total_steps) ** 3
        for v, avg in zip(self.variables, self.average):
            avg += (1.0 - decay) * (v.numpy() - avg)
            v.assign(avg)

    def finish(self) -> None:
        for v, avg in zip(self.variables, self.average):
            v.assign(avg)


class StopRequest:
    """A request to stop training after the current batch, and a resumable checkpoint.

    Set it from anywhere (another thread, a callback); while ``on_signals()`` is active, Ctrl+C
    and SIGTERM set it, and a second Ctrl+C aborts at once without saving.
    """

    def __init__(self):
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    @contextlib.contextmanager
    def on_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be installed from the main thread
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):
            if self.is_set():
                raise KeyboardInterrupt
            self.set()
            print("\nstopping after this batch and saving a resumable checkpoint "
                  "(press Ctrl+C again to abort without saving)", file=sys.stderr)

        for s in previous:
            signal.signal(s, handler)
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


class _Heartbeat:
    """In a log, where no bar is drawn: a line at least every ``HEARTBEAT_S`` within an epoch,
    "epoch 2/6: step 20/44, loss 1.834, 1,590 images/s, ~17 s to the epoch's end"."""

    def __init__(self, name: str, first_step: int, epoch_steps: int, log: Log):
        self.name, self.first_step, self.epoch_steps, self.log = name, first_step, epoch_steps, log
        self.t0 = self.last = clock()

    def step(self, steps_done: int, batch_size: int, loss: float | None) -> None:
        now = clock()
        if now - self.last < HEARTBEAT_S:
            return
        self.last = now
        step_s = (now - self.t0) / steps_done
        left = (self.epoch_steps - self.first_step - steps_done) * step_s
        self.log(f"  {self.name}: step {self.first_step + steps_done}/{self.epoch_steps}"
                 + (f", loss {loss:.3f}" if loss is not None else "")
                 + f", {batch_size / step_s:,.0f} images/s, ~{budget.format_duration(left)} to the epoch's end")


class StepCallback(keras.callbacks.Callback):
    """After every optimizer step: the lookahead average, the progress bar (or in a log, a
    heartbeat line), the speed once the first steps are timed, the stop request."""

    def __init__(self, run: _Run, first_global_step: int, bar, lookahead: Lookahead | None = None,
                 heartbeat: _Heartbeat | None = None):
        """For one fit call within ``run`` (its stop request, batch, speed note and deadline),
        starting at the run's step ``first_global_step``."""
        super().__init__()
        self.stop, self.speed_note, self.deadline = run.stop, run.speed_note, run.deadline
        self.batch_size = run.config.batch_size
        self.first_global_step, self.bar = first_global_step, bar
        self.steps_left = run.config.total_steps(run.steps_per_epoch) - first_global_step
        self.lookahead, self.heartbeat = lookahead, heartbeat
        self.out_of_time = False
        self.steps_done = 0
        self.t0 = clock()
        self.t_first = None  # the end of the first step: tracing and compiling are behind it
        self._last_end = self.t0

    def on_train_batch_end(self, batch, logs=None):
        self.steps_done += 1
        now = clock()
        if self.lookahead is not None:
            self.lookahead.step(self.first_global_step + self.steps_done)
        self.bar.update(1)
        loss = float(logs["loss"]) if logs and "loss" in logs else None
        if loss is not None and self.steps_done % 5 == 0 and not self.bar.disable:
            rate = self.steps_done * self.batch_size / max(now - self.t0, 1e-9)
            self.bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{rate:.0f}")
        if self.steps_done == 1:
            self.t_first = now
        elif self.speed_note is not None and self.steps_done == 1 + SPEED_STEPS:
            speed = budget.Speed(step_s=max((now - self.t_first) / SPEED_STEPS, 1e-9),
                                 first_step_s=self.t_first - self.t0, batch_size=self.batch_size)
            self.speed_note.tell(speed, self.steps_left)
        if self.heartbeat is not None:
            self.heartbeat.step(self.steps_done, self.batch_size, loss)
        # Stop when another step like the last one would end past the deadline.
        if self.deadline is not None and now + (now - self._last_end) > self.deadline:
            self.out_of_time = self.model.stop_training = True
        self._last_end = now
        if self.stop.is_set():
            self.model.stop_training = True


def setup_devices(distribute: str, cpu_replicas: int = 2):
    """Return a tf.distribute strategy (or None). Must run before TensorFlow builds anything."""
    if distribute == "none":
        return None
    if distribute == "multiworker":
        return multiworker.make_strategy()
    if distribute != "mirrored":
        raise CifarEdgeError(f"unknown --distribute {distribute!r}; choose none, mirrored or multiworker")
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


@contextlib.contextmanager
def _dtype_policy(name: str):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _versions() -> dict:
    import platform

    import tensorflow as tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "machine": platform.machine()}


# ``from train import fit`` gives this module once it is imported: calling it calls fit().
callable_module(__name__)
