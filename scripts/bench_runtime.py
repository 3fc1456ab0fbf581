"""Bounded latency benchmark of the runtime, to run by hand on a Pi or Jetson.

    python scripts/bench_runtime.py [--model M] [--provider auto] [--threads 0] [--runs 200]

Reports session start time, per-image latency (decode + preprocess + inference, and
inference alone) on the bundled sample images, and batch throughput. Stops after --runs
iterations or --max-seconds, whichever comes first.
"""

from __future__ import annotations

import time

import click
import numpy as np


def _percentiles(ms: list[float]) -> str:
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return f"p50 {p50:.2f} ms  p90 {p90:.2f} ms  p99 {p99:.2f} ms  (n={len(ms)})"


@click.command(help=__doc__)
@click.option("--model", type=click.Path(exists=True, dir_okay=False), help="Model [default: bundled].")
@click.option("--provider", default="auto", show_default=True, help="Execution provider.")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="Intra-op threads (0 = onnxruntime's default).")
@click.option("--runs", type=click.IntRange(min=1), default=200, show_default=True,
              help="Iterations per measurement.")
@click.option("--batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Batch size for the throughput measurement.")
@click.option("--max-seconds", type=float, default=30.0, show_default=True,
              help="Time bound per measurement, seconds.")
def main(model, provider, threads, runs, batch, max_seconds):
    from runtime import bundled
    from runtime.classifier import Classifier
    from runtime.preprocess import prepare

    t0 = time.perf_counter()
    clf = Classifier(model or bundled.default_model(), provider=provider, threads=threads)
    click.echo(f"session start: {(time.perf_counter() - t0) * 1000:.1f} ms  {clf.describe()}")
    samples = bundled.sample_images()

    def measure(step) -> list[float]:
        times, deadline = [], time.perf_counter() + max_seconds
        for i in range(runs):
            start = time.perf_counter()
            step(i)
            times.append((time.perf_counter() - start) * 1000)
            if time.perf_counter() > deadline:
                break
        return times

    clf.predict(samples[0])  # warm-up
    click.echo("file -> label : " + _percentiles(measure(lambda i: clf.predict(samples[i % len(samples)]))))
    hwc = [prepare(p, clf.contract) for p in samples]
    click.echo("inference only: " + _percentiles(measure(lambda i: clf.run([hwc[i % len(hwc)]]))))
    batch_hwc = [hwc[i % len(hwc)] for i in range(batch)]
    ms = measure(lambda i: clf.run(batch_hwc))
    click.echo(f"batch {batch}: {batch / (np.median(ms) / 1000):.0f} images/s  " + _percentiles(ms))


if __name__ == "__main__":
    main()
