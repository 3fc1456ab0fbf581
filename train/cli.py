"""cifar-train: a thin click wrapper over ``train.fit``."""

from __future__ import annotations

import click

from runtime.cli_support import run_cli, traceback_option

from .config import TrainConfig

_D = TrainConfig()


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--data", "data", type=click.Path(), default=None,
              help="CIFAR-10 on disk: DIR/{train,test}/<class>/*.jpg, cifar-10-batches-py/, or "
                   "cifar-10-python.tar.gz. Default: Keras' downloader (needs internet).")
@click.option("--model", type=str, default=_D.model,
              help="Model from the registry: tiny, default (the shipped one) or airbench94 "
                   "(a 2M-parameter reference, see scripts/reference_run.py).")
@click.option("--epochs", type=click.IntRange(min=1), default=_D.epochs, help="Passes over the training split.")
@click.option("--batch-size", type=click.IntRange(min=1), default=_D.batch_size, help="Images per step.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=_D.lr,
              help="Peak learning rate of the one-cycle schedule.")
@click.option("--cutout", type=click.IntRange(min=0, max=32), default=_D.cutout,
              help="Side in pixels of a random square blanked out of each training image (0: off).")
@click.option("--precision", type=click.Choice(["auto", "float32", "mixed_bfloat16"]), default=_D.precision,
              help="Training arithmetic. auto: mixed_bfloat16 on CPUs with bfloat16 instructions "
                   "(about 2x faster), else float32. model.keras is saved float32 either way.")
@click.option("--val-images", type=click.IntRange(min=0), default=_D.val_images,
              help="Training images held out to pick the best epoch (0: validate on the test split).")
@click.option("--seed", type=int, default=None, help="Random seed; same seed, same machine, same run.")
@click.option("--distribute", type=click.Choice(["none", "mirrored"]), default=_D.distribute,
              help="mirrored: tf.distribute.MirroredStrategy over all GPUs (or 2 logical CPUs).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use only this many training images (quick smoke runs).")
@click.option("--test-limit", type=click.IntRange(min=1), default=None,
              help="Use only this many test images.")
@click.option("--out", type=click.Path(), default=None,
              help="Run folder to write model.keras, last.keras, config.json, history.csv, curves.png. "
                   "Default: runs/<model>.")
@click.option("--resume", "resume_dir", type=click.Path(), default=None,
              help="Continue the run saved in this folder, with its own config and schedule.")
@click.option("--quiet", is_flag=True, help="No progress bars; one line per epoch.")
@traceback_option
def main(data, model, epochs, batch_size, lr, cutout, precision, val_images, seed, distribute, limit, test_limit, out,
         resume_dir, quiet, show_traceback):
    """Train a Keras CNN on CIFAR-10.

    \b
    Example:
      cifar-train --data ../shared/data/cifar10 --model tiny --epochs 1 --out runs/tiny

    Ctrl+C or SIGTERM saves a resumable checkpoint; continue with --resume RUN_DIR.
    """

    def body():
        from .fit import fit

        if resume_dir:
            result = fit(TrainConfig(), out=resume_dir, data=data, resume=True, quiet=quiet)
        else:
            config = TrainConfig(model=model, epochs=epochs, batch_size=batch_size, lr=lr,
                                 cutout=cutout, precision=precision, val_images=val_images, seed=seed, distribute=distribute,
                                 train_limit=limit, test_limit=test_limit)
            result = fit(config, out=out or f"runs/{model}", data=data, quiet=quiet)
        click.echo(f"done: best validation accuracy {100 * result.best_val_acc:.2f}% after "
                   f"{result.epochs_done} epochs ({result.seconds / 60:.1f} min); model: {result.run_dir / 'model.keras'}")

    run_cli("cifar-train", body, show_traceback)


if __name__ == "__main__":
    main()
