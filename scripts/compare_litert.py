"""Our runtime against LiteRT and Keras on the same model, measured side by side in one run.

    pip install -e ".[train,litert]"
    python scripts/compare_litert.py --data ../shared/data/cifar10            # the shipped model
    python scripts/compare_litert.py --run runs/default --data ... --write docs/speed.md

For one Keras model it builds LiteRT FP32 and full-INT8 files (float input/output, the INT8
representative data drawn from the *training* split) the way LiteRT documents for Keras 3:
``model.export(dir, format="tf_saved_model")`` then ``TFLiteConverter.from_saved_model``
(``from_keras_model`` fails on Keras 3). Then, batch 1, for 1 and 2 threads, it interleaves
our ``Classifier.predict(image_rgb=...)`` with LiteRT's set_tensor / invoke / get_tensor
(XNNPACK) on the same 32x32 test images and reports medians; then throughput at batch 32,
accuracy on the full test split and file sizes. With ``--write`` the Markdown table replaces
the block between the ``speed-table`` markers in that file (atomically).

Heavy environment (TensorFlow + ai-edge-litert): a script, never imported by the runtime.
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date
from importlib.metadata import version
from pathlib import Path

import click
import numpy as np

from runtime import Classifier
from runtime.atomic import atomic_write, write_marked
from runtime.cli.common import run_cli, traceback_option
from runtime.cpu import cpu_features

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- speed-table:begin -->", "<!-- speed-table:end -->"
REPRESENTATIVE_IMAGES = 500  # from the training split, for LiteRT's INT8 calibration


@dataclass
class Row:
    runtime: str  # "ours" / "LiteRT" / "Keras"
    precision: str
    size_bytes: int | None
    latency_ms: dict[int, float] = field(default_factory=dict)  # threads → median batch-1 ms
    throughput: float | None = None  # images/s at batch 32 (2 threads)
    accuracy: float | None = None  # % on the test split


# --- LiteRT ---------------------------------------------------------------------------------

def litert_files(keras_model, x_train: np.ndarray, workdir: Path) -> dict[str, Path]:
    """FP32 and full-INT8 .tflite files for ``keras_model`` (float input and output)."""
    import tensorflow as tf

    saved = workdir / "saved_model"
    keras_model.export(str(saved), format="tf_saved_model", verbose=False)
    files = {}
    for precision in ("fp32", "int8"):
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        if precision == "int8":
            pick = np.random.default_rng(0).permutation(len(x_train))[:REPRESENTATIVE_IMAGES]
            representative = x_train[pick].astype(np.float32)  # raw 0-255: scaling is in the graph
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([image[None]] for image in representative)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        files[precision] = workdir / f"model-{precision}.tflite"
        files[precision].write_bytes(converter.convert())
    return files


class LiteRT:
    """One LiteRT interpreter (XNNPACK delegate, as ai-edge-litert applies by default)."""

    def __init__(self, path: Path, threads: int, batch: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        if batch != 1:
            self.interpreter.resize_tensor_input(self.input, [batch, 32, 32, 3])
        self.interpreter.allocate_tensors()

    def __call__(self, batch_nhwc: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input, batch_nhwc)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output)


# --- measuring ------------------------------------------------------------------------------

def interleaved_medians(calls: dict[str, callable], images: np.ndarray, runs: int, warmup: int = 200) -> dict[str, float]:
    """Median ms per call of each function, alternating them image by image so that whatever
    else the machine does falls on all of them alike."""
    for name, call in calls.items():
        for i in range(warmup):
            call(images[i % len(images)])
    times = {name: [] for name in calls}
    for i in range(runs):
        image = images[i % len(images)]
        for name, call in calls.items():
            start = time.perf_counter()
            call(image)
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def throughput(call, images: np.ndarray, batch: int = 32, seconds: float = 2.0) -> float:
    batches = [images[i:i + batch] for i in range(0, len(images) - batch + 1, batch)]
    call(batches[0])
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        call(batches[done % len(batches)])
        done += 1
    return done * batch / (time.perf_counter() - start)


def accuracy(predict_batch, x: np.ndarray, y: np.ndarray, batch: int) -> float:
    top1 = np.concatenate([np.asarray(predict_batch(x[i:i + batch])).argmax(1) for i in range(0, len(x), batch)])
    return float(np.mean(top1 == y) * 100)


def compare(keras_path: Path, onnx_paths: dict[str, Path], data: Path, runs: int, log) -> list[Row]:
    from train.data import load_cifar10
    from train.models import load_keras_model

    dataset = load_cifar10(data)
    x_test = dataset.x_test.astype(np.float32)  # (10000, 32, 32, 3) raw RGB, as every runtime takes it
    images = dataset.x_test[:500]  # uint8 arrays: what Classifier.predict(image_rgb=) is given
    keras_model = load_keras_model(keras_path)
    rows = [Row("Keras", "fp32", keras_path.stat().st_size)]
    with tempfile.TemporaryDirectory(prefix="cifar-edge-litert-") as tmp:
        tflite = litert_files(keras_model, dataset.x_train, Path(tmp))
        for precision in ("fp32", "int8"):
            ours, lite = Row("ours", precision, onnx_paths[precision].stat().st_size), \
                Row("LiteRT", precision, tflite[precision].stat().st_size)
            for threads in (1, 2):
                classifier = Classifier(onnx_paths[precision], threads=threads)
                interpreter = LiteRT(tflite[precision], threads)
                medians = interleaved_medians({
                    "ours": lambda image: classifier.predict(image_rgb=image),
                    "LiteRT": lambda image: interpreter(image[None].astype(np.float32)),
                }, images, runs)
                ours.latency_ms[threads], lite.latency_ms[threads] = medians["ours"], medians["LiteRT"]
                log(f"{precision} {threads} thread(s): ours {medians['ours']:.3f} ms, LiteRT {medians['LiteRT']:.3f} ms")
            classifier, batched = Classifier(onnx_paths[precision], threads=2), LiteRT(tflite[precision], 2, 32)
            ours.throughput = throughput(lambda b: classifier.run(b), x_test)
            lite.throughput = throughput(batched, x_test)
            ours.accuracy = accuracy(lambda b: classifier.run(b)[0], x_test, dataset.y_test, 500)
            single = LiteRT(tflite[precision], 2)
            lite.accuracy = accuracy(lambda b: np.concatenate([single(image[None]) for image in b]), x_test,
                                     dataset.y_test, 500)
            rows += [ours, lite]
        if "fp16" in onnx_paths:
            fp16 = Row("ours", "fp16", onnx_paths["fp16"].stat().st_size)
            for threads in (1, 2):
                classifier = Classifier(onnx_paths["fp16"], threads=threads)
                fp16.latency_ms[threads] = interleaved_medians(
                    {"fp16": lambda image: classifier.predict(image_rgb=image)}, images, runs)["fp16"]
            classifier = Classifier(onnx_paths["fp16"], threads=2)
            fp16.throughput = throughput(lambda b: classifier.run(b), x_test)
            fp16.accuracy = accuracy(lambda b: classifier.run(b)[0], x_test, dataset.y_test, 500)
            rows.append(fp16)
    keras_row = rows[0]  # TensorFlow's own threads (it uses both cores): one latency column
    keras_row.latency_ms[2] = interleaved_medians(
        {"keras": lambda image: keras_model.predict_on_batch(image[None].astype(np.float32))}, images,
        max(runs // 5, 200))["keras"]
    keras_row.throughput = throughput(lambda b: keras_model.predict_on_batch(b), x_test)
    keras_row.accuracy = accuracy(lambda b: keras_model.predict_on_batch(b), x_test, dataset.y_test, 500)
    return rows


# --- the table ------------------------------------------------------------------------------

def markdown(rows: list[Row], machine: str) -> str:
    def ms(row, threads):
        return f"{row.latency_ms[threads]:.3f}" if threads in row.latency_ms else "—"

    lines = [f"Measured {date.today().isoformat()} on {machine}; batch 1 latency is the median of interleaved "
             "runs through each runtime's Python API; throughput at batch 32 with 2 threads.", "",
             "| runtime | precision | file | batch 1, 1 thread (ms) | batch 1, 2 threads (ms) | "
             "batch 32 (images/s) | test accuracy |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        size = f"{row.size_bytes / 1e6:.2f} MB" if row.size_bytes else "—"
        lines.append(f"| {row.runtime} | {row.precision.upper()} | {size} | {ms(row, 1)} | {ms(row, 2)} | "
                     f"{row.throughput:,.0f} | {row.accuracy:.2f}% |")
    ratios = []
    for precision in ("fp32", "int8"):
        ours = next(r for r in rows if r.runtime == "ours" and r.precision == precision)
        lite = next(r for r in rows if r.runtime == "LiteRT" and r.precision == precision)
        for threads in (1, 2):
            ratios.append(f"{precision.upper()} {threads} thread{'s' if threads > 1 else ''}: "
                          f"**{ours.latency_ms[threads] / lite.latency_ms[threads]:.2f}x**")
    lines += ["", "Ours / LiteRT, batch 1 (at most 1.00x is the target): " + ", ".join(ratios) + "."]
    return "\n".join(lines)


@click.command()
@click.option("--run", "run_dir", type=click.Path(path_type=Path), default=None,
              help="A run folder with model.keras and its exported model.onnx / model-int8.onnx "
                   "(/ model-fp16.onnx). Default: the shipped model.")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="CIFAR-10 folder (train/ and test/).")
@click.option("--runs", type=click.IntRange(min=100), default=3000, show_default=True,
              help="Timed batch-1 calls per runtime and thread count.")
@click.option("--write", type=click.Path(path_type=Path), default=None,
              help="Replace the speed-table block of this Markdown file with the table.")
@click.option("--json-out", type=click.Path(path_type=Path), default=None, help="Also write the figures as JSON.")
@traceback_option
def main(run_dir, data, runs, write, json_out, show_traceback):
    """Measure ours against LiteRT and Keras on one model, side by side."""

    def body():
        if run_dir is None:
            keras_path = REPO / "train/shipped/default/model.keras"
            onnx_paths = {"fp32": REPO / "runtime/assets/model.onnx", "int8": REPO / "runtime/assets/model-int8.onnx",
                          "fp16": REPO / "train/shipped/default/model-fp16.onnx"}
        else:
            keras_path = run_dir / "model.keras"
            onnx_paths = {v: run_dir / f"model{'' if v == 'fp32' else '-' + v}.onnx" for v in ("fp32", "int8", "fp16")}
        onnx_paths = {v: p for v, p in onnx_paths.items() if p.exists()}
        machine = (f"{cpu_features().model} ({platform.machine()}), onnxruntime {version('onnxruntime')}, "
                   f"ai-edge-litert {version('ai-edge-litert')}")
        rows = compare(keras_path, onnx_paths, data, runs, log=lambda s: click.echo(s, err=True))
        table = markdown(rows, machine)
        click.echo(table)
        if json_out:
            with atomic_write(json_out) as fh:
                json.dump({"machine": machine, "date": date.today().isoformat(),
                           "rows": [row.__dict__ for row in rows]}, fh, indent=2)
        if write:
            write_marked(write, BEGIN, END, table)
            click.echo(f"wrote the table into {write}", err=True)

    run_cli("compare_litert", body, show_traceback)


if __name__ == "__main__":
    main()
