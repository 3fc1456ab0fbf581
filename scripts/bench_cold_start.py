"""Cold start: ``cifar-run IMAGE`` as a whole process against a Keras script doing the same.

    python scripts/bench_cold_start.py                     # 5 runs each, prints a table
    python scripts/bench_cold_start.py --write docs/speed.md

Each command runs as a fresh process (interpreter start, imports, model load, one image
classified, exit); wall time and the child's own peak resident memory (``os.wait4``'s
ru_maxrss) are taken per run and the medians reported, runs of the two alternating. The Keras
side loads the same model's ``.keras`` file, decodes and resizes the image with Pillow and
calls ``predict``: the shortest honest script a Keras user would write. Needs the train extra.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import click

from runtime.atomic import write_marked
from runtime.cli.common import run_cli, traceback_option
from runtime.cpu import cpu_features
from runtime.model.bundled import default_model, sample_images

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- cold-start:begin -->", "<!-- cold-start:end -->"

KERAS_SCRIPT = """
import sys
import numpy as np
from PIL import Image
import keras
model = keras.saving.load_model(sys.argv[1], compile=False)
image = Image.open(sys.argv[2]).convert("RGB").resize((32, 32), Image.Resampling.BICUBIC)
probs = model.predict(np.asarray(image, np.float32)[None], verbose=0)[0]
print(int(probs.argmax()), float(probs.max()))
"""


def measure(command: list[str], env: dict) -> tuple[float, float]:
    """(seconds, peak resident MB) of one run of ``command`` as a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    stderr = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise click.ClickException(f"{' '.join(command[:3])} … failed: {stderr.strip()[-300:]}")
    kb = usage.ru_maxrss if sys.platform != "darwin" else usage.ru_maxrss / 1024  # bytes on macOS
    return seconds, kb / 1024


@click.command()
@click.option("--runs", type=click.IntRange(min=1), default=5, show_default=True, help="Runs of each command.")
@click.option("--keras-model", type=click.Path(path_type=Path), default=REPO / "train/shipped/default/model.keras",
              show_default=True, help="The .keras file the Keras script loads.")
@click.option("--write", type=click.Path(path_type=Path), default=None,
              help="Replace the cold-start block of this Markdown file with the table.")
@traceback_option
def main(runs, keras_model, write, show_traceback):
    """Start-up time and peak memory of cifar-run against a Keras script, one image each."""

    def body():
        image = str(sample_images()[0])
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        commands = {
            "cifar-run IMAGE (onnxruntime, INT8)": [sys.executable, "-m", "runtime.cli.run", image, "--model",
                                                    str(default_model())],
            "Keras script (TensorFlow, FP32)": [sys.executable, "-c", KERAS_SCRIPT, str(keras_model), image],
        }
        results = {name: [] for name in commands}
        for name, command in commands.items():  # one warm-up each: the file cache, not the process
            measure(command, env)
        for _ in range(runs):
            for name, command in commands.items():
                results[name].append(measure(command, env))
        rows = {name: (statistics.median(s for s, _ in r), statistics.median(m for _, m in r))
                for name, r in results.items()}
        (ours_s, ours_mb), (keras_s, keras_mb) = rows.values()
        lines = [f"Measured {date.today().isoformat()} on {cpu_features().model} ({', '.join(cpu_features().flags)}), median of {runs} runs "
                 "each (alternating, after one warm-up run of each).", "",
                 "| process | wall time | peak resident memory |", "| --- | --- | --- |"]
        lines += [f"| {name} | {s:.2f} s | {mb:.0f} MB |" for name, (s, mb) in rows.items()]
        lines += ["", f"cifar-run starts **{keras_s / ours_s:.1f}x** faster (target: at least 10x) and peaks at "
                      f"**{ours_mb / keras_mb:.2f}** of the Keras script's memory (target: at most 0.20)."]
        table = "\n".join(lines)
        click.echo(table)
        if write:
            write_marked(write, BEGIN, END, table)
            click.echo(f"wrote the table into {write}", err=True)

    run_cli("bench_cold_start", body, show_traceback)


if __name__ == "__main__":
    main()
