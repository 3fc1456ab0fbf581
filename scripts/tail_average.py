#!/usr/bin/env python3
"""Average the weights of a run's last epochs and measure what it gives.

A run trained with ``snapshots=N`` (``train.config.TrainConfig``) keeps the float32 weights
of its last N epochs in ``RUN/snapshots/epoch-NNN.weights.h5``. For each K in ``--last``,
this averages the last K of them (K=1 is the model the run ended with), optionally
re-estimates the BatchNorm statistics of the average on the training images (``--bn``), and
reports accuracy and NLL on the run's held-out images and on the test split:

    python scripts/tail_average.py runs/tail --data ../shared/data/cifar10 --last 1 2 3 5 8
    python scripts/tail_average.py runs/tail --data ../shared/data/cifar10 --last 5 --bn --write runs/tail/model-avg5.keras

K is chosen on the held-out images; the test column is for the record.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from runtime.atomic import atomic_write
from runtime.errors import CifarEdgeError, DataError
from train.average import average_tail, bn_images, snapshot_files


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", required=True, type=click.Path(exists=True), help="The run's dataset folder.")
@click.option("--last", "lasts", type=click.IntRange(min=1), multiple=True,
              help="Average the last K epochs; repeat for several K. [default: 1 to all kept]")
@click.option("--bn", is_flag=True, help="Re-estimate BatchNorm statistics on training images after averaging.")
@click.option("--bn-images", "bn_images_n", type=click.IntRange(min=100), default=10_000, show_default=True,
              help="Training images (a seeded sample) for --bn.")
@click.option("--write", "write", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Save the average of the (single) --last K as a .keras model here.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the table as JSON.")
def main(run_dir: Path, data: str, lasts: tuple[int, ...], bn: bool, bn_images_n: int, write: Path | None,
         json_out: Path | None) -> None:
    try:
        files = snapshot_files(run_dir)
        lasts = lasts or tuple(range(1, len(files) + 1))
        if max(lasts) > len(files):
            raise DataError(f"--last {max(lasts)}: {run_dir} kept only {len(files)} snapshots")
        if write is not None and len(lasts) != 1:
            raise DataError("--write saves one average: give exactly one --last K")
        from train.config import TrainConfig
        from train.data import load_for_model, take_slice
        from train.fit import loss_and_accuracy, split_validation
        from train.models import load_keras_model, save_keras_model

        config = TrainConfig.load(run_dir / "config.json")
        dataset = take_slice(load_for_model(data, run_dir / "model.keras", config.input_size, quiet=True),
                             config.train_limit, config.test_limit, seed=config.seed)
        split = split_validation(dataset, config.val_images, config.seed)
        model = load_keras_model(run_dir / "model.keras")
        images = bn_images(split.x_train, bn_images_n, config.seed) if bn else None
        rows = []
        for k in lasts:
            average_tail(model, files[-k:], images)
            val_nll, val_acc = loss_and_accuracy(model, split.x_val, split.y_val)
            test_nll, test_acc = loss_and_accuracy(model, dataset.x_test, dataset.y_test)
            rows.append(dict(last=k, epochs=[int(f.name[6:9]) for f in files[-k:]], bn=bn, val_acc=val_acc,
                             val_nll=val_nll, test_acc=test_acc, test_nll=test_nll))
            click.echo(f"last {k:>2}{' +bn' if bn else ''}: validation {100 * val_acc:6.2f}% (NLL {val_nll:.4f})  "
                       f"test {100 * test_acc:6.2f}% (NLL {test_nll:.4f})")
        if write is not None:
            save_keras_model(model, write)
            click.echo(f"wrote {write}")
        if json_out is not None:
            with atomic_write(json_out) as fh:
                json.dump(rows, fh, indent=2)
    except CifarEdgeError as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    main()
