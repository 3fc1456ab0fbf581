"""cifar-train: a thin click wrapper over ``train.fit``.

Arguments, the data path and the run folder are checked before TensorFlow is imported (a
6-second import), by the checks ``train.fit`` makes itself (``train.preflight``): a refused
command answers at once and creates nothing; errors become messages in ``run_cli`` only.
"""

from __future__ import annotations

import time

import click

from runtime.cli.common import run_cli, traceback_option
from runtime.errors import OptionError

from .config import AUTO_BATCH_MAX, FINE_TUNE, MAX_INPUT_SIZE, MIN_INPUT_SIZE, RECIPE_BATCH, RECIPES, TrainConfig
from .models import MODELS, PRECISIONS
from .progress import plural
from .replay import DEFAULT_PER_CLASS

_D = TrainConfig()
_STARTED = time.perf_counter()  # about when the command started: the budget of --time counts all of it (train.fit.clock)


# How --help says a batch sized to the data (TrainConfig.batch_size "auto" or None).
_SIZED_BATCH = {"auto": f"{RECIPE_BATCH:,}, halved on little data until an epoch has 10 steps, --lr with it",
                None: f"up to {AUTO_BATCH_MAX}, fewer on little data"}


def _recipe_note(field: str) -> str:
    def said(value):
        return _SIZED_BATCH.get(value, value) if field == "batch_size" else value

    special = [f"{model}: {said(recipe[field])}" for model, recipe in RECIPES.items() if field in recipe]
    if field in FINE_TUNE:
        special.append(f"with --init: {said(FINE_TUNE[field])}")
    return f" [default: {said(getattr(_D, field))}" + (f"; {', '.join(special)}" if special else "") + "]"


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--data", "data", type=click.Path(), default=None,
              help="Image folders, any classes (2 to 1,000) and image sizes: DIR/{train,test}/<class>/*.jpg, "
                   "or DIR/<class>/*.jpg (20% of each class kept for test, recorded in config.json). "
                   "Or CIFAR-10's cifar-10-batches-py/ or cifar-10-python.tar.gz. "
                   "Default: CIFAR-10 from Keras' downloader (needs internet).")
@click.option("--model", type=click.Choice(list(MODELS)), default=None,
              help="quick: ~80% in 6 epochs (2 minutes on 2 cores with bf16, ~15 on an AVX2-only CPU); "
                   "default: the shipped model (~90% in 100 epochs, 70 minutes on 2 cores with bf16); "
                   "tiny: for tests; airbench94: a 2M-parameter "
                   f"reference (scripts/reference_run.py). [default: {_D.model}, or --init's]")
@click.option("--input-size", type=click.IntRange(MIN_INPUT_SIZE, MAX_INPUT_SIZE), default=_D.input_size,
              help="Model input in pixels (square); every image is centre-cropped and resized to it.")
@click.option("--init", default=None, metavar="shipped|PATH.keras",
              help="Start from a saved model's features: 'shipped' (the bundled default model) or a "
                   ".keras file of the same --model; a new head for your classes, and a fine-tuning "
                   "schedule (10 epochs, batches of up to 64 sized to the data, peak learning rate 0.01).")
@click.option("--replay", metavar="DIR", type=click.Path(exists=True, file_okay=False),
              help="With --init: also train on images of the data the model was trained on (DIR, an image "
                   "folder), --replay-images of each class, so that fine-tuning on a few new images "
                   "(a labelled folder) does not forget the classes it knew. The images and --data's go "
                   "into OUT/data, which the run then reads.")
@click.option("--replay-images", type=click.IntRange(min=1), default=DEFAULT_PER_CLASS, metavar="N",
              help="--replay: training images of each class of DIR.")
@click.option("--time", "time_budget", metavar="DURATION", default=None,
              help="Train to a time budget for the whole command, e.g. 90s, 2m, 1h30m: the first steps "
                   "measure this machine, then the epochs, steps and learning-rate curve are planned to "
                   "end in time (instead of --epochs).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Passes over the training split." + _recipe_note("epochs"))
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per step, at most the training images." + _recipe_note("batch_size"))
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Peak learning rate of the one-cycle schedule; from scratch without --batch-size, the "
                   f"rate for {RECIPE_BATCH:,} images, scaled down with a batch sized to little data."
                   + _recipe_note("lr"))
@click.option("--cutout", type=click.IntRange(min=0), default=None,
              help="Side in pixels of a random square blanked out of each training image (0: off)."
                   + _recipe_note("cutout"))
@click.option("--precision", type=click.Choice(PRECISIONS), default=_D.precision,
              help="Training arithmetic. auto: mixed_bfloat16 on CPUs with bfloat16 instructions "
                   "(about 2x faster), else float32. model.keras is saved float32 either way.")
@click.option("--val-images", type=click.IntRange(min=0), default=None,
              help="Training images held out to pick the best epoch; 0: validate on the test split. "
                   "[default: 10% of the training split, at most 2,000]")
@click.option("--seed", type=int, default=None, help="Random seed; same seed, same machine, same run.")
@click.option("--distribute", type=click.Choice(["none", "mirrored", "multiworker"]), default=_D.distribute,
              help="mirrored: tf.distribute.MirroredStrategy over all GPUs (or 2 logical CPUs); multiworker: "
                   "several machines, each running this same command with its own TF_CONFIG "
                   "(docs/training.md, \"More machines\").")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use only this many training images (quick smoke runs).")
@click.option("--test-limit", type=click.IntRange(min=1), default=None,
              help="Use only this many test images.")
@click.option("--out", type=click.Path(), default=None,
              help="Run folder to write model.keras, last.keras, config.json, history.csv, curves.png. "
                   "[default: runs/<model>]")
@click.option("--overwrite", is_flag=True,
              help="Replace a run already in --out (train again from scratch) instead of refusing.")
@click.option("--resume", "resume_dir", type=click.Path(), default=None,
              help="Continue the unfinished run saved in this folder, with its own config and schedule.")
@click.option("--quiet", is_flag=True,
              help="No progress bars (they are drawn only on a terminal anyway); one line per epoch.")
@traceback_option
def main(data, model, input_size, init, replay, replay_images, time_budget, epochs, batch_size, lr, cutout,
         precision, val_images, seed, distribute, limit, test_limit, out, overwrite, resume_dir, quiet, show_traceback):
    """Train a Keras CNN on CIFAR-10 or on your own classes.

    \b
    Examples:
      cifar-train --data ../shared/data/cifar10 --model quick --out runs/quick
      cifar-train --data ../shared/data/cifar10 --model quick --time 2m --out runs/quick
      cifar-train --data ../shared/data/cifar10 --out runs/default --overwrite
      cifar-train --data my_photos --init shipped --out runs/mine
      cifar-train --data unsure/labelled --init shipped --replay ../shared/data/cifar10 --out runs/round1

    Ctrl+C or SIGTERM saves a resumable checkpoint; continue with --resume RUN_DIR.
    With --distribute multiworker, every worker runs the same command and running it again
    resumes the run.
    """

    def body():
        from .budget import parse_duration
        from .models import init_path, saved_architecture
        from .multiworker import cluster_of
        from .preflight import check_run

        seconds = parse_duration(time_budget) if time_budget is not None else None
        if seconds is not None and (epochs is not None or resume_dir):
            raise OptionError("--time plans the epochs itself; give --time or --epochs, not both" if epochs
                              else "--resume continues the run's own plan; drop --time")
        if resume_dir:
            config, run_dir = TrainConfig(), resume_dir  # the run's own config.json wins
        else:
            # No --model: --init's own architecture, else the default.
            name = model or (saved_architecture(init_path(init)) if init else _D.model)
            config = TrainConfig.for_model(name, input_size=input_size, init=init, epochs=epochs,
                                           batch_size=batch_size, lr=lr, cutout=cutout, precision=precision,
                                           val_images=val_images, seed=seed, distribute=distribute,
                                           train_limit=limit, test_limit=test_limit, time_budget=seconds)
            run_dir = out or f"runs/{name}"
        if replay is not None:
            _check_replay(data, init, resume_dir)
        check_run(config, run_dir, data, resume=bool(resume_dir), overwrite=overwrite, cluster=cluster_of(config))
        trained_on = data if replay is None else _with_replay(data, replay, replay_images, run_dir)
        from .fit import FitControl, fit

        result = fit(config, out=run_dir, data=trained_on, resume=bool(resume_dir), overwrite=overwrite,
                     quiet=True if quiet else None,  # None: progress bars only on a terminal
                     control=FitControl(started=_STARTED))
        click.echo(_done(result))

    run_cli("cifar-train", body, show_traceback)


def _check_replay(data, init, resume_dir) -> None:
    if resume_dir:
        raise OptionError("--resume continues on the run's own data (its data/ folder); drop --replay")
    if init is None:
        raise OptionError("--replay goes with --init (it keeps what the --init model knew)")
    if data is None:
        raise OptionError("--replay adds to --data DIR (a labelled folder); give --data")


def _with_replay(data, replay, per_class: int, run_dir):
    """--replay: the run's data becomes RUN/data, --data's images and DIR's (``train.replay``)."""
    from pathlib import Path

    from .replay import with_replay

    return with_replay(data, replay, Path(run_dir) / "data", per_class, log=lambda line: click.echo(line, err=True))


def _done(result) -> str:
    """The command's last line: what a ``train.fit.FitResult`` says of the run."""
    if result.run_dir is None:
        return (f"done: this worker trained the run to epoch {result.epochs_done} "
                f"({result.seconds / 60:.1f} min); the chief saved the model in its run folder")
    return (f"done: best validation accuracy {100 * result.best_val_acc:.2f}% after "
            f"{plural(result.epochs_done, 'epoch')} ({result.seconds / 60:.1f} min); "
            f"model: {result.run_dir / 'model.keras'}")


if __name__ == "__main__":
    main()
