"""Where a training run's time goes on this CPU: start-up, data, augmentation, the steps under
each setting that could speed them up, evaluation and saving.

    PYTHONPATH=. python scripts/where_time_goes.py --out runs/where-time-goes.json
    PYTHONPATH=. python scripts/where_time_goes.py --model default --settings float32,bf16

Each setting runs in a process of its own (precision policies, XLA and thread pools are
process-wide): a model is built, compiled with the project's recipe (train.fit.compile_model)
and trained on random pixels for a warm-up step and then ``--steps`` timed steps, whose
images/s is reported. The settings: float32 and mixed_bfloat16 (``bf16``), XLA
(``jit_compile=True``, ``*-xla``), batch sizes (``float32-b256``...), one TensorFlow thread
(``float32-1thread``) and oneDNN capped at AVX2 (``float32-avx2``: ONEDNN_MAX_CPU_ISA, the
nearest this machine comes to a CPU without AVX-512; TensorFlow's own Eigen kernels are not
capped). The rest (import, decoding, augmentation, evaluation, saving) is timed once in this
process. A busy machine makes every figure slower: run it on an idle one, and twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ("float32", "bf16", "float32-xla", "bf16-xla", "float32-b256", "float32-b512", "bf16-b256",
            "float32-1thread", "float32-avx2")


def _child(model_name: str, setting: str, steps: int) -> dict:
    """Runs in the setting's own process: images/s of ``steps`` compiled training steps."""
    parts = setting.split("-")
    precision = "mixed_bfloat16" if parts[0] == "bf16" else "float32"
    batch = next((int(p[1:]) for p in parts if p.startswith("b") and p[1:].isdigit()), 1024)
    if "1thread" in parts:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    from train.fit import build_for_config, compile_model, keras
    from train.config import TrainConfig

    keras.config.set_dtype_policy(precision)
    config = TrainConfig.for_model(model_name, batch_size=batch, precision=precision, seed=0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch * (steps + 1), 32, 32, 3), dtype=np.uint8)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, len(x))]
    model = build_for_config(config, 10, x[:1000])
    compile_model(model, config, steps + 1)
    if "xla" in parts:
        model.jit_compile = True
    t0 = time.perf_counter()
    model.fit(x[:batch], y[:batch], batch_size=batch, epochs=1, verbose=0)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.fit(x[batch:], y[batch:], batch_size=batch, epochs=1, verbose=0)
    seconds = time.perf_counter() - t0
    return {"setting": setting, "precision": precision, "batch_size": batch, "first_step_s": round(first, 2),
            "images_per_s": round(steps * batch / seconds, 1)}


def _once(model_name: str, data: str | None) -> dict:
    """Start-up, data, augmentation, evaluation and saving, timed in this process."""
    import tempfile

    t0 = time.perf_counter()
    from train.fit import build_for_config, keras, loss_and_accuracy, save_keras_model  # imports TensorFlow
    from train.augment import augmented_epoch
    from train.config import TrainConfig
    from train.data import load_dataset

    figures = {"import_s": round(time.perf_counter() - t0, 2)}
    config = TrainConfig.for_model(model_name, seed=0)
    if data is not None:
        t0 = time.perf_counter()
        dataset = load_dataset(data, quiet=True, log=lambda line: None)
        figures["load_data_s"] = round(time.perf_counter() - t0, 2)  # from the decode cache after a first run
        x, y = dataset.x_train[:48000], dataset.y_train[:48000]
    else:
        rng = np.random.default_rng(0)
        x, y = rng.integers(0, 256, (48000, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 48000)
    t0 = time.perf_counter()
    augmented_epoch(x, y, config, 0)
    figures["augment_epoch_s"] = round(time.perf_counter() - t0, 2)
    model = build_for_config(config, 10, x[:5000])
    loss_and_accuracy(model, x[:1000], y[:1000])  # traced once, as after the first epoch
    t0 = time.perf_counter()
    loss_and_accuracy(model, x[:2000], y[:2000])
    figures["evaluate_2000_s"] = round(time.perf_counter() - t0, 2)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        save_keras_model(model, Path(tmp) / "model.keras")
        figures["save_model_s"] = round(time.perf_counter() - t0, 2)
    return figures


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--model", "model_name", default="quick", help="A name in train.models.MODELS.")
@click.option("--settings", default=",".join(SETTINGS), help="Comma-separated settings to time.")
@click.option("--steps", type=click.IntRange(min=1), default=8, help="Timed steps per setting.")
@click.option("--repeats", type=click.IntRange(min=1), default=2,
              help="Runs of each setting, interleaved; the fastest is reported (a shared machine only slows).")
@click.option("--data", default=str(REPO.parent / "shared" / "data" / "cifar10"),
              help="Dataset to time loading on (nothing: random pixels).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the figures as JSON.")
@click.option("--child", hidden=True, default=None)
def main(model_name, settings, steps, repeats, data, out, child):
    """Time each part of a training run on this CPU."""
    if child:
        print(json.dumps(_child(model_name, child, steps)))
        return
    from runtime.cpu import cpu_features, cpu_flags

    cpu, flags = cpu_features(), cpu_flags()
    best: dict[str, dict] = {}
    for setting in [s for _ in range(repeats) for s in settings.split(",")]:
        env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
        if "avx2" in setting.split("-"):
            env["ONEDNN_MAX_CPU_ISA"] = "AVX2"
        if setting.startswith("bf16") and not {"avx512_bf16", "amx_bf16"} & flags:
            print(f"{setting}: skipped (this CPU has no bfloat16 instructions)", file=sys.stderr)
            continue
        proc = subprocess.run([sys.executable, __file__, "--model", model_name, "--steps", str(steps),
                               "--child", setting], capture_output=True, text=True, env=env)
        if proc.returncode:
            print(f"{setting}: failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{setting:<16} {row['images_per_s']:>8,.0f} images/s  (first step {row['first_step_s']:.1f} s)",
              flush=True)
        if setting not in best or row["images_per_s"] > best[setting]["images_per_s"]:
            best[setting] = row
    rows = list(best.values())
    once = _once(model_name, data if data and Path(data).exists() else None)
    for key, value in once.items():
        print(f"{key:<16} {value:>8.2f} s")
    result = {"repeats": repeats, "model": model_name, "cpu": {**cpu.to_dict(), "bf16": sorted({"avx512_bf16", "amx_bf16"} & flags)}, "date": time.strftime("%Y-%m-%d"), "steps": steps,
              "settings": rows, "once": once}
    if out:
        from runtime.atomic import atomic_write

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(out) as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
