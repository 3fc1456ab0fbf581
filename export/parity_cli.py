"""cifar-parity: compare any models against a reference, on the device they will run on."""

from __future__ import annotations

import click

from runtime.cli.common import run_cli, traceback_option

PROG = "cifar-parity"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("reference", type=click.Path(path_type=str))
@click.argument("candidates", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--data", type=click.Path(path_type=str), default=None,
              help="CIFAR-10 folder: compare on its full test split. Without it: synthetic inputs.")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=None,
              help="Minimum top-1 agreement for every candidate [default: per variant, fp32 0.999].")
@click.option("--max-abs-diff", type=click.FloatRange(min=0), default=None,
              help="Maximum absolute probability difference [default: per variant, fp32 1e-4].")
@click.option("--max-drop", type=click.FloatRange(min=0), default=None,
              help="Maximum accuracy drop in points [default: per variant, int8 1.0].")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Also write the report as JSON to this file.")
@click.option("--test-limit", type=click.IntRange(min=1), default=None, hidden=True,
              help="Compare on N test images only, evenly spaced through the split.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars (they are drawn only on a terminal anyway).")
@traceback_option
def main(reference, candidates, data, min_agreement, max_abs_diff, max_drop, json_out, test_limit, quiet,
         show_traceback):
    """Compare CANDIDATE models (.keras or .onnx) with REFERENCE on the same inputs.

    Each candidate is gated by its variant's thresholds (read from its ONNX metadata) unless
    flags override them. Exits 4 if any candidate fails.

    \b
      cifar-parity model.keras model.onnx model-int8.onnx --data ../shared/data/cifar10
    """

    def body():
        from . import Thresholds, check_parity
        from .parity import raise_if_failed

        report = check_parity(reference, list(candidates), data=data, test_limit=test_limit, quiet=True if quiet else None,
                              thresholds=Thresholds(min_agreement, max_abs_diff, max_drop))
        click.echo(report.table())
        if json_out:
            report.write(json_out)
            click.echo(f"wrote {json_out}")
        raise_if_failed(report)
        return 0

    run_cli(PROG, body, show_traceback)
