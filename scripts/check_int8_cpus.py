#!/usr/bin/env python3
"""INT8 on x86 CPUs with and without VNNI: re-quantize the bundled FP32 model with candidate
recipes, run every file here and on an emulated CPU without VNNI, and compare.

    .venv/bin/python scripts/check_int8_cpus.py --data ../shared/data/cifar10
    .venv/bin/python scripts/check_int8_cpus.py --data ../shared/data/cifar10 --variants 7bit-float-stem \\
        --images 10000 --qemu-images 10000 --speed-rounds 0

The recipes go through the project's own path (``export.quantize.quantize_int8``: QDQ,
per-channel, MinMax, Softmax float, the float-layer search), calibrated as ``cifar-export``
calibrates the shipped model: 1,024 images of its run's training split, 2,000 more held out to
judge the search. The bundled files run as they are.

Per file: accuracy on ``--images`` test images (a seeded sample) natively, and on the first
``--qemu-images`` of them (``--qemu-float-images`` for the float files, which TCG runs 4 images
a second) under ``qemu-x86_64-static -cpu Haswell-v4`` (AVX2, no AVX-512, no VNNI: onnxruntime's
non-VNNI kernels; tests/qemu.py); top-1 agreement of each side with the float reference's
native answers; the largest |Δp| (any class, any image) between the native and the emulated run
of the same file; native speed (batch 1 p50, batch 32 throughput, one thread unless
``--threads``: this CPU's, with VNNI where it has it; an AVX2 CPU's speed cannot be measured
here, and qemu's time says nothing about it); file size. The accuracy runs use one thread on both
sides, so Δp comes from the kernels alone.

Files and each run's probabilities are cached in ``--work`` (default: cifar-edge's cache folder,
``int8-cpus/``), keyed by the recipe, the file's hash and the image count: a rerun redoes only
what changed, and a run stopped half way resumes. The results go to ``WORK/results.json`` (or
``--json-out``), a markdown table to stdout.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import numpy as np

PROG = "check_int8_cpus"
REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "runtime" / "assets"
SHIPPED = REPO / "train" / "shipped" / "default"
CALIB_IMAGES, CALIB_SEED = 1024, 0  # as cifar-export calibrated the shipped model (its recipe says so)
TEST_SEED = 0  # which test images, in which order: a seeded permutation, so every class is in a short prefix
CHILD_BATCH = 100  # images per session.run in the accuracy runs
B1_RUNS, B32_RUNS, WARMUP = 200, 30, 10  # timed calls per speed figure and round, after WARMUP untimed ones


@dataclass(frozen=True)
class Variant:
    """One file to check: a bundled one as it is, or the bundled FP32 re-quantized with ``recipe``."""

    key: str
    note: str
    file: Path | None = None  # a bundled file
    recipe: dict | None = None  # else export.quantize.Int8Config overrides
    flip: bool = False  # the mirror-view twin of the recipe's file (export.calibrate.add_flip_view)
    session: dict = field(default_factory=dict)  # onnxruntime session config entries
    reference: str = "fp32"  # the float variant whose top-1 agreement is measured

    @property
    def is_float(self) -> bool:
        return self.key.startswith("fp")


VARIANTS = {v.key: v for v in (
    Variant("fp32", "bundled FP32 (runtime/assets/model.onnx)", file=ASSETS / "model.onnx"),
    Variant("fp16", "shipped FP16 (model-fp16.onnx)", file=SHIPPED / "model-fp16.onnx"),
    Variant("fp32-flip", "shipped FP32 mirror-view twin (model-flip.onnx)", file=SHIPPED / "model-flip.onnx",
            reference="fp32-flip"),
    Variant("int8-bundled", "bundled INT8 (u8s8, 8-bit weights)", file=ASSETS / "model-int8.onnx"),
    Variant("int8-flip-bundled", "shipped INT8 mirror-view twin", file=SHIPPED / "model-int8-flip.onnx",
            reference="fp32-flip"),
    Variant("int8-bundled-x64qp", "bundled INT8, session.x64quantprecision=1", file=ASSETS / "model-int8.onnx",
            session={"session.x64quantprecision": "1"}),
    Variant("8bit", "u8s8, 8-bit weights, first Conv INT8 (the old recipe)",
            recipe={"reduce_range": False, "float_first_conv": False}),
    Variant("7bit", "u8s8, 7-bit weights (reduce_range), first Conv INT8", recipe={"float_first_conv": False}),
    Variant("7bit-float-stem", "u8s8, 7-bit weights, first Conv float (the new default)", recipe={}),
    Variant("8bit-float-stem", "u8s8, 8-bit weights, first Conv float", recipe={"reduce_range": False}),
    Variant("u8u8", "u8u8, 8-bit weights, first Conv INT8",
            recipe={"weights": "QUInt8", "reduce_range": False, "float_first_conv": False}),
    Variant("s8s8", "s8s8, 8-bit weights, first Conv INT8",
            recipe={"activations": "QInt8", "reduce_range": False, "float_first_conv": False}),
    Variant("7bit-per-tensor", "u8s8, 7-bit weights per tensor, first Conv INT8",
            recipe={"per_channel": False, "float_first_conv": False}),
    Variant("7bit-qoperator", "u8s8, 7-bit weights, first Conv INT8, QOperator format",
            recipe={"quant_format": "QOperator", "float_first_conv": False}),
    Variant("7bit-float-stem-flip", "the new default's mirror-view twin", recipe={}, flip=True,
            reference="fp32-flip"),
)}


def _qemu():
    """tests/qemu.py, the one place that knows how to run Python under qemu (standard library only)."""
    spec = importlib.util.spec_from_file_location("cifar_edge_tests_qemu", REPO / "tests" / "qemu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


# -- the files ------------------------------------------------------------------------------------

class _Calibration:
    """The shipped run's calibration and held-out training images, read once, when first needed."""

    def __init__(self, data: str):
        self.data, self._value = data, None

    def get(self):
        if self._value is None:
            from export.quantize import calibration_from_cifar

            self._value = calibration_from_cifar(self.data, CALIB_IMAGES, CALIB_SEED, input_size=32,
                                                 model_path=SHIPPED / "model.keras")
        return self._value


def build(variant: Variant, work: Path, calibration: _Calibration, log) -> tuple[Path, dict]:
    """The variant's file (built into ``work`` unless cached there) and what building it took."""
    if variant.file is not None:
        return variant.file, {}
    import onnx

    from export.calibrate import add_flip_view
    from export.convert import save_onnx
    from export.quantize import Int8Config, quantize_int8

    fp32, config = ASSETS / "model.onnx", Int8Config(**variant.recipe)
    key = _digest(asdict(config), _file_digest(fp32), CALIB_IMAGES, CALIB_SEED)  # the recipe as resolved
    base, built = work / f"int8-{key}.onnx", work / f"int8-{key}.json"
    if not base.exists():
        start = time.perf_counter()
        calib, held_out = calibration.get()
        result = quantize_int8(onnx.load(fp32), calib, config, held_out)
        record = {"quantize_seconds": round(time.perf_counter() - start, 1), "recipe": result.recipe,
                  "trials": result.trials, "notes": result.notes}
        save_onnx(result.model_proto, base)
        built.write_text(json.dumps(record, indent=1))
        log(f"{variant.key}: quantized in {record['quantize_seconds']} s")
    record = json.loads(built.read_text())
    if not variant.flip:
        return base, record
    twin = work / f"int8-{key}-flip.onnx"
    if not twin.exists():
        save_onnx(add_flip_view(onnx.load(base)), twin)
    return twin, record


def test_images(data: str, n: int, work: Path) -> tuple[Path, np.ndarray]:
    """(a .npy of the first ``n`` test images of the seeded order, (n,) labels), cached in ``work``."""
    images, labels = work / f"test-{TEST_SEED}-{n}.npy", work / f"test-{TEST_SEED}-{n}.labels.npy"
    if not images.exists():
        from train.data import load_cifar10

        split = load_cifar10(data, splits=("test",))
        order = np.random.default_rng(TEST_SEED).permutation(len(split.x_test))[:n]
        np.save(labels, split.y_test[order])
        np.save(images, split.x_test[order])  # (n, 32, 32, 3) uint8 RGB
    return images, np.load(labels)


# -- running: one child per file, native or under qemu, the same code ----------------------------

def session(model: str | os.PathLike, threads: int, entries: dict):
    """An onnxruntime CPU session with runtime.model.session.create_session's options, plus ``entries``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    for key, value in entries.items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(os.fspath(model), options, providers=["CPUExecutionProvider"])


def run_job(job_json: str) -> None:
    """In the child: the model on the first n images, one thread; probabilities to job["out"]."""
    job = json.loads(job_json)
    sess = session(job["model"], 1, job["session"])
    name = sess.get_inputs()[0].name
    x = np.load(job["images"], mmap_mode="r")[:job["n"]]
    probs = np.concatenate([sess.run(None, {name: np.asarray(x[i:i + CHILD_BATCH], np.float32)})[0]
                            for i in range(0, len(x), CHILD_BATCH)])
    tmp = job["out"] + ".tmp.npy"
    np.save(tmp, probs)
    os.replace(tmp, job["out"])


CHILD_CODE = ("import sys; sys.path.insert(0, sys.argv[1]); "
              "from check_int8_cpus import run_job; run_job(sys.argv[2])")


def probabilities(model: Path, variant: Variant, images: Path, n: int, where: str, work: Path,
                  log) -> tuple[np.ndarray, float | None]:
    """(n, 10) probabilities of ``model`` on ``where`` ("native" or qemu's CPU model), and the
    child's wall seconds (None when cached)."""
    out = work / f"probs-{_file_digest(model)}-{_digest(variant.session)}-{where}-{n}.npy"
    if out.exists():
        return np.load(out), None
    job = json.dumps({"model": str(model), "session": variant.session, "images": str(images), "n": n,
                      "out": str(out)})
    start = time.perf_counter()
    if where == "native":
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.run([sys.executable, "-c", CHILD_CODE, str(REPO / "scripts"), job],
                              capture_output=True, text=True, env=env, timeout=3600)
    else:
        proc = _qemu().python_under_qemu(CHILD_CODE, [str(REPO / "scripts"), job], cpu=where,
                                         timeout=600 + n * (2 if "flip" in variant.key else 1))  # TCG: 4-13 images/s
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        from runtime.errors import ModelError

        raise ModelError(f"{variant.key} on {where}: the child failed: {proc.stderr.strip()[-800:]}")
    log(f"{variant.key}: {n} images on {where} in {seconds:.0f} s")
    return np.load(out), round(seconds, 1)


def speeds(files: dict[str, tuple[Path, dict]], x: np.ndarray, threads: int, rounds: int) -> dict[str, dict]:
    """Native batch-1 p50 (ms) and batch-32 throughput (images/s) of each (file, session entries):
    ``rounds`` rounds, each timing every file in turn, so that a busy spell on a shared machine
    hits them alike; the median of the rounds' medians, and each round's."""
    sessions = {key: session(path, threads, entries) for key, (path, entries) in files.items()}
    medians = {key: {1: [], 32: []} for key in files}
    for _ in range(rounds):
        for key, sess in sessions.items():
            for batch, runs in ((1, B1_RUNS), (32, B32_RUNS)):
                feed = {sess.get_inputs()[0].name: np.asarray(x[:batch], np.float32)}
                for _ in range(WARMUP):
                    sess.run(None, feed)
                times = []
                for _ in range(runs):
                    start = time.perf_counter()
                    sess.run(None, feed)
                    times.append(time.perf_counter() - start)
                medians[key][batch].append(statistics.median(times))
    return {key: {"threads": threads, "rounds": rounds,
                  "b1_p50_ms": round(1000 * statistics.median(m[1]), 3),
                  "b1_p50_ms_rounds": [round(1000 * t, 3) for t in m[1]],
                  "b32_images_per_s": round(32 / statistics.median(m[32])),
                  "b32_images_per_s_rounds": [round(32 / t) for t in m[32]]} for key, m in medians.items()}


# -- comparing ------------------------------------------------------------------------------------

def side(probs: np.ndarray, labels: np.ndarray, reference: np.ndarray | None) -> dict:
    top1 = probs.argmax(1)
    row = {"images": len(probs), "accuracy": round(100 * float(np.mean(top1 == labels[:len(probs)])), 2)}
    if reference is not None:
        row["agreement_with_reference"] = round(100 * float(np.mean(top1 == reference[:len(probs)].argmax(1))), 2)
    return row


def between(native: np.ndarray, emulated: np.ndarray) -> dict:
    native = native[:len(emulated)]
    diff = np.abs(native - emulated)
    return {"images": len(emulated), "max_abs_dp": float(diff.max()),
            "p999_abs_dp": float(np.quantile(diff.max(1), 0.999)),
            "top1_changed": int(np.sum(native.argmax(1) != emulated.argmax(1)))}


def check(variant: Variant, data: str, work: Path, n: int, n_qemu: int, qemu_cpu: str, calibration: _Calibration,
          references: dict, log) -> dict:
    model, built = build(variant, work, calibration, log)
    images, labels = test_images(data, n, work)
    native, native_s = probabilities(model, variant, images, n, "native", work, log)
    emulated, qemu_s = probabilities(model, variant, images, min(n, n_qemu), qemu_cpu, work, log)
    ref = references.get(variant.reference)  # the reference's native probabilities, judged on both sides
    row = {"variant": variant.key, "note": variant.note, "file": str(model), "size_bytes": model.stat().st_size,
           "recipe": variant.recipe, "session": variant.session, **built,
           "native": side(native, labels, ref),
           "native_on_qemu_images": side(native[:len(emulated)], labels, ref),
           "qemu": {**side(emulated, labels, ref), "cpu": qemu_cpu, "seconds": qemu_s},
           "native_vs_qemu": between(native, emulated)}
    references.setdefault(variant.key, native)
    return row


def table(rows: list[dict]) -> str:
    head = ("| variant | size KiB | acc native | acc native (qemu imgs) | acc qemu | agree ref native / qemu "
            "| max abs dp native-qemu | top-1 changed | b1 p50 ms | b32 img/s |")
    lines = [head, "|" + "|".join(" --- " for _ in range(head.count("|") - 1)) + "|"]
    for r in rows:
        nat, sub, emu, d = r["native"], r["native_on_qemu_images"], r["qemu"], r["native_vs_qemu"]
        agree = (f"{sub.get('agreement_with_reference', '-')} / {emu.get('agreement_with_reference', '-')}"
                 if "agreement_with_reference" in sub else "-")
        sp = r.get("speed", {})
        lines.append(f"| {r['variant']} | {r['size_bytes'] / 1024:.0f} | {nat['accuracy']:.2f} ({nat['images']}) "
                     f"| {sub['accuracy']:.2f} | {emu['accuracy']:.2f} ({emu['images']}) | {agree} "
                     f"| {d['max_abs_dp']:.2e} | {d['top1_changed']} | {sp.get('b1_p50_ms', '-')} "
                     f"| {sp.get('b32_images_per_s', '-')} |")
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
              help="CIFAR-10 (the shipped model's dataset): calibration from train/, accuracy on test/.")
@click.option("--variants", "keys", multiple=True, type=click.Choice(list(VARIANTS)),
              help="Check only these (repeat the option). [default: all; fp32 and fp32-flip are always "
                   "run first when a variant needs them as its reference]")
@click.option("--images", type=click.IntRange(1, 10_000), default=1000, show_default=True,
              help="Test images run natively.")
@click.option("--qemu-images", type=click.IntRange(1, 10_000), default=1000, show_default=True,
              help="Of those, how many run under qemu for an INT8 file (about 13 images/s there).")
@click.option("--qemu-float-images", type=click.IntRange(1, 10_000), default=300, show_default=True,
              help="... and for a float file (about 4 images/s there).")
@click.option("--qemu-cpu", default=None, help="qemu's CPU model. [default: tests/qemu.py's NON_VNNI_CPU, Haswell-v4]")
@click.option("--speed-rounds", type=click.IntRange(min=0), default=7, show_default=True,
              help="Rounds of native speed figures, every file timed in each; 0: none.")
@click.option("--threads", type=click.IntRange(min=0), default=1, show_default=True,
              help="onnxruntime intra-op threads for the speed figures (0: its default, one per core).")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache folder for files and probabilities. [default: cifar-edge's cache, int8-cpus/]")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the results here. [default: WORK/results.json]")
def main(data, keys, images, qemu_images, qemu_float_images, qemu_cpu, speed_rounds, threads, work, json_out):
    """Re-quantize the bundled FP32 model with candidate INT8 recipes; run each file natively
    and under qemu without VNNI; print accuracy, agreement, max |dp| and speed per file."""
    from runtime.cli.common import run_cli
    from runtime.errors import DataError
    from runtime.model.providers import cache_root

    def body():
        qemu = _qemu()
        missing = qemu.qemu_missing()
        if missing:
            raise DataError(missing)
        cpu = qemu_cpu or qemu.NON_VNNI_CPU
        folder = work or cache_root() / "int8-cpus"
        folder.mkdir(parents=True, exist_ok=True)
        chosen = [VARIANTS[k] for k in (keys or VARIANTS)]
        needed = {v.reference for v in chosen} - {v.key for v in chosen}
        chosen = [VARIANTS[k] for k in VARIANTS if k in needed] + chosen
        calibration, references, rows = _Calibration(data), {}, []
        log = lambda line: click.echo(f"{PROG}: {line}", err=True)  # noqa: E731
        for variant in chosen:
            n_qemu = qemu_float_images if variant.is_float else qemu_images
            rows.append(check(variant, data, folder, images, n_qemu, cpu, calibration, references, log))
        if speed_rounds:
            x, _ = test_images(data, images, folder)
            timed = speeds({r["variant"]: (Path(r["file"]), r["session"]) for r in rows}, np.load(x)[:32],
                           threads, speed_rounds)
            for row in rows:
                row["speed"] = timed[row["variant"]]
        machine = {"load_average": os.getloadavg(), **_machine()}
        out = json_out or folder / "results.json"
        out.write_text(json.dumps({"machine": machine, "qemu_cpu": cpu, "rows": rows}, indent=1))
        click.echo(table(rows))
        click.echo(f"\n{machine['cpu']}; qemu -cpu {cpu}; results in {out}")
        return 0

    run_cli(PROG, body)


def _machine() -> dict:
    import onnxruntime

    from runtime.cpu import cpu_features

    info = cpu_features()
    return {"cpu": f"{info.model}, {info.cores} cores, flags: {', '.join(info.flags)}",
            "onnxruntime": onnxruntime.__version__}


if __name__ == "__main__":
    main()
