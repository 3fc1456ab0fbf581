"""cifar-eval: a thin click wrapper over ``train.evaluate``."""

from __future__ import annotations

import click

from runtime.cli.common import run_cli, traceback_option


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("model", type=click.Path())
@click.option("--data", type=click.Path(), default=None,
              help="The model's dataset on disk (same forms as cifar-train; a DIR/<class>/ folder is "
                   "split as the model's run recorded). Default: CIFAR-10 from Keras' downloader.")
@click.option("--out", type=click.Path(), default=None,
              help="Folder for report.json, confusion.png, grid.png, reliability.png. "
                   "Default: eval-<model> beside the model.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate only this many test images.")
@click.option("--quiet", is_flag=True, help="No progress bar (it is drawn only on a terminal anyway).")
@traceback_option
def main(model, data, out, limit, quiet, show_traceback):
    """Evaluate a .keras or .onnx MODEL on the test split of its dataset.

    Prints overall accuracy and per-class precision/recall, and writes report.json, a
    confusion matrix and a grid of predictions (misclassified images marked) as PNGs.
    Calibration is reported too: mean top-1 confidence, expected calibration error (ECE, 15
    equal-width bins) and negative log-likelihood (NLL), with a reliability diagram as a PNG.
    """

    def body():
        from .evaluate import evaluate

        report = evaluate(model, data=data, out=out, limit=limit, quiet=True if quiet else None)
        click.echo(report.table())
        for note in report.notes:
            click.echo(f"cifar-eval: {note}", err=True)
        click.echo(f"\nwrote {', '.join(report.files.values())}")

    run_cli("cifar-eval", body, show_traceback)


if __name__ == "__main__":
    main()
