"""cifar-doctor: what this device needs for cifar-edge, each problem with its fix.

\b
cifar-doctor                  the report, for people
cifar-doctor --json           one JSON object, for a script
cifar-doctor --provider cpu   classify the sample on the CPU (default: what cifar-run picks)

Checks Python, the system and board (Raspberry Pi, Jetson), the CPU and whether INT8 pays off,
threads, onnxruntime and its execution providers, OpenCV (GUI, GStreamer, FFmpeg, V4L2),
picamera2, cameras, the display, memory and disk, and then classifies a bundled sample image
with the bundled model (or --model) and times it. Exit code 0 when that works, 1 when the
runtime cannot classify at all.
"""

from __future__ import annotations

import click

from runtime.cli.common import run_cli, traceback_option

PROG = "cifar-doctor"


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, help=__doc__)
@click.option("--json", "as_json", is_flag=True, help="One JSON object: every check and the verdict.")
@click.option("--model", "-m", type=click.Path(dir_okay=False),
              help="Check this ONNX model instead of the bundled one.")
@click.option("--provider", default="auto", show_default=True,
              help="Execution provider for the model check, as cifar-run --provider takes it.")
@traceback_option
def main(as_json, model, provider, show_traceback):
    def body() -> int:
        from runtime.doctor import exit_code, report_json, report_text, run_checks

        checks = run_checks(model=model, provider=provider)
        click.echo(report_json(checks) if as_json else report_text(checks))
        return exit_code(checks)

    run_cli(PROG, body, show_traceback)


if __name__ == "__main__":
    main()
