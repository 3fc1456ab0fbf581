"""cifar-bench: how big, how fast and how accurate cifar-edge models are on this machine.

\b
cifar-bench                            the bundled FP32 and INT8 models
cifar-bench model.onnx --data ../shared/data/cifar10 --markdown
cifar-bench --threads 4 --batch 1,32 --runs 200 --max-seconds 30
cifar-bench --camera 0 --frames 200    the camera loop too, stage by stage

Per model: file size, load time, latency per call at the smallest --batch through Classifier
(what a program gets, on prepared 32x32 images) and through onnxruntime's session.run alone,
throughput at the largest --batch, peak resident memory (each model runs in a process of its
own), accuracy with --data. It says whether INT8 is likely to pay off on this CPU, and measures
it when an FP32 and an INT8 model are both given.
"""

from __future__ import annotations

import click

from runtime.cli.common import run_cli, traceback_option
from runtime.model.providers import PROVIDER_HELP

PROG = "cifar-bench"
DEFAULT_FRAMES = 100


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, help=__doc__)
@click.argument("models", nargs=-1)
@click.option("--data", metavar="DIR", help="CIFAR-10 folder with test/<class>/*.jpg: accuracy on "
              "that split (labels are folder names, matched to the model's class names).")
@click.option("--provider", default="auto", show_default=True,
              help=PROVIDER_HELP)
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="onnxruntime intra-op threads (0 = onnxruntime's default).")
@click.option("--batch", "batches", default="1,32", show_default=True,
              help="Batch sizes, comma-separated: latency at the smallest, throughput at the largest.")
@click.option("--runs", type=click.IntRange(min=1), default=100, show_default=True,
              help="Timed calls per measurement (after 5 untimed warm-up calls).")
@click.option("--max-seconds", type=click.FloatRange(min=0.0, min_open=True), default=60.0,
              show_default=True, help="Wall-clock cap per model: what has not started by then is "
              "skipped, and the output says so.")
@click.option("--json", "fmt", flag_value="json", help="One JSON object: the machine and every model.")
@click.option("--markdown", "fmt", flag_value="markdown", help="Markdown tables to paste into docs.")
@click.option("--camera", metavar="SRC", help="Also time the camera loop, headless, stage by stage: "
              "camera index, device path or video file, as cifar-run --camera (needs OpenCV).")
@click.option("--frames", type=click.IntRange(min=1), help=f"Camera: frames to run [default: "
              f"{DEFAULT_FRAMES}].")
@traceback_option
def main(models, data, provider, threads, batches, runs, max_seconds, fmt, camera, frames,
         show_traceback):
    def body() -> int:
        from runtime.bench.measure import BenchConfig, benchmark, parse_batches
        from runtime.errors import OptionError

        if frames is not None and camera is None:
            raise OptionError("--frames needs --camera SRC")
        config = BenchConfig(provider=provider, threads=threads, batches=parse_batches(batches),
                             runs=runs, max_seconds=max_seconds, data=data, camera=camera,
                             frames=frames or DEFAULT_FRAMES)
        report = benchmark(models, config, log=lambda line: click.echo(f"{PROG}: {line}", err=True))
        click.echo({"json": report.to_json, "markdown": report.markdown}.get(fmt, report.table)())
        return 0

    run_cli(PROG, body, show_traceback)


if __name__ == "__main__":
    main()
