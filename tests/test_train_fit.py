"""train.fit: a real (tiny) training run, checkpoints, interrupt + resume, seeds, mirrored."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import REPO, requires_tf, write_folder_dataset

pytestmark = requires_tf

FAST = dict(model="tiny", batch_size=16, val_images=10, seed=3)


def _config(**kw):
    from train.config import TrainConfig

    return TrainConfig(**{**FAST, **kw})


def _weights(path):
    from train.evaluate import load_keras_model

    return [np.asarray(w) for w in load_keras_model(Path(path)).get_weights()]


def test_fit_writes_the_run_folder(folder_dataset, tmp_path):
    from train.fit import fit
    from train.runfolder import read_history

    run = tmp_path / "run"
    result = fit(_config(epochs=2), out=run, data=folder_dataset, quiet=True, log=lambda s: None)
    for name in ("model.keras", "last.keras", "config.json", "history.csv", "curves.png", "state.json"):
        assert (run / name).is_file(), name
    rows = read_history(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["images_per_s"] > 0 and 0 <= r["val_acc"] <= 1 for r in rows)
    assert result.best_val_acc == max(r["val_acc"] for r in rows)
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["seed"] == 3 and config["train_images"] == 50 and config["validation_images"] == 10
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # No temporary files left behind by the atomic writes.
    assert not [p for p in run.iterdir() if p.name.startswith(".")]
    with pytest.raises(Exception, match="already there; use --resume"):
        fit(_config(epochs=2), out=run, data=folder_dataset, quiet=True, log=lambda s: None)


def test_interrupted_run_resumes_and_finishes(folder_dataset, tmp_path):
    import keras

    import train.fit as fit_mod
    from train.runfolder import read_history

    run = tmp_path / "run"
    stop = fit_mod.StopRequest()

    class StopInSecondEpoch(keras.callbacks.Callback):
        calls = 0

        def on_train_batch_end(self, batch, logs=None):
            StopInSecondEpoch.calls += 1
            if StopInSecondEpoch.calls == 5:  # epoch 2 (4 steps per epoch), its first step
                stop.set()

    with pytest.raises(fit_mod.Interrupted, match=r"epoch 2 at step 1/4.*--resume"):
        fit_mod.fit(_config(epochs=3), out=run, data=folder_dataset, quiet=True, log=lambda s: None,
                    control=fit_mod.FitControl(stop=stop, callbacks=[StopInSecondEpoch()]))
    state = json.loads((run / "state.json").read_text())
    assert state == {**state, "epoch": 1, "step": 1, "finished": False}
    assert len(read_history(run)) == 1

    fit_mod.fit(_config(), out=run, resume=True, quiet=True, log=lambda s: None)
    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] == 3 and state["finished"]
    assert [r["epoch"] for r in read_history(run)] == [1, 2, 3]
    # The schedule continued where it stopped: the optimizer made exactly 3 epochs of steps.
    last = keras.saving.load_model(run / "last.keras", safe_mode=True)
    assert int(last.optimizer.iterations.numpy()) == 3 * 4
    with pytest.raises(Exception, match="already finished"):
        fit_mod.fit(_config(), out=run, resume=True, quiet=True, log=lambda s: None)


def test_same_seed_same_weights(folder_dataset, tmp_path):
    from train.fit import fit

    for name in ("a", "b"):
        fit(_config(epochs=1), out=tmp_path / name, data=folder_dataset, quiet=True, log=lambda s: None)
    wa, wb = _weights(tmp_path / "a" / "last.keras"), _weights(tmp_path / "b" / "last.keras")
    assert all(np.array_equal(a, b) for a, b in zip(wa, wb))


def _cli(*args, timeout=300, **kw):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "train.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env, **kw)


def test_sigterm_saves_a_resumable_checkpoint(tmp_path):
    data = write_folder_dataset(tmp_path / "d", n_train=400, n_test=20)
    run = tmp_path / "run"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "train.cli", "--data", str(data), "--model", "tiny",
                             "--epochs", "200", "--batch-size", "8", "--val-images", "10", "--quiet",
                             "--out", str(run)], stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    lines = []
    for line in proc.stderr:  # wait until the first epoch has finished
        lines.append(line)
        if line.startswith("epoch"):
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    code = proc.wait(timeout=120)
    assert code == 130, rest
    last = rest.strip().splitlines()[-1]
    assert last.startswith("cifar-train: interrupted ") and "error" not in last, last  # asked for, not an error
    assert f"the best model so far is {run / 'model.keras'}). Resume with: cifar-train --resume {run}" in last
    assert "Traceback" not in rest
    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] >= 1 and not state["finished"]
    assert _weights(run / "last.keras")


def test_mirrored_strategy_on_two_logical_cpus(folder_dataset, tmp_path):
    # 49 training images in batches of 16 would end with a batch of 1, leaving a replica none
    # (TensorFlow failed with "Incompatible shapes"): that image is left out, saying so.
    result = _cli("--data", str(folder_dataset), "--model", "tiny", "--epochs", "1", "--batch-size", "16",
                  "--val-images", "11", "--distribute", "mirrored", "--quiet", "--out", str(tmp_path / "m"))
    assert result.returncode == 0, result.stderr
    assert "MirroredStrategy over 2 replicas" in result.stderr
    assert "leaving out 1 training image: the last batch of an epoch needs one image for each of the 2 replicas" \
        in result.stderr
    assert "48 training / 11 validation images" in result.stderr
    assert json.loads((tmp_path / "m" / "config.json").read_text())["config"]["distribute"] == "mirrored"
    assert (tmp_path / "m" / "model.keras").is_file()


def test_cli_bad_data_is_one_line(tmp_path):
    from train.cli import main

    result = CliRunner().invoke(main, ["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.output.strip().startswith("cifar-train: error:") and "missing" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_resume_nothing_there(tmp_path):
    from train.cli import main

    result = CliRunner().invoke(main, ["--resume", str(tmp_path)])
    assert result.exit_code == 1 and "nothing to resume" in result.output


def test_mixed_precision_trains_in_bfloat16_and_saves_float32(folder_dataset, tmp_path):
    import keras

    from train.fit import fit
    from train.models import load_keras_model

    run = tmp_path / "run"
    fit(_config(epochs=1, precision="mixed_bfloat16"), out=run, data=folder_dataset, quiet=True,
        log=lambda s: None)
    assert json.loads((run / "config.json").read_text())["config"]["precision"] == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    last = load_keras_model(run / "last.keras")  # the training state keeps its policy (for resume)
    assert "mixed_bfloat16" in {layer.dtype_policy.name for layer in last.layers}
    best = load_keras_model(run / "model.keras")  # what gets exported: float32 throughout
    assert {layer.dtype_policy.name for layer in best.layers} == {"float32"}
    assert all(np.array_equal(a, b) for a, b in zip(best.get_weights(), last.get_weights()))


def test_as_float32_copies_weights_and_keeps_predictions():
    import keras

    from train.models import Architecture, as_float32, build_model

    images = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = build_model("default", architecture=Architecture(widths=(8, 16, 16)), train_images=images)
    finally:
        keras.config.set_dtype_policy("float32")
    f32 = as_float32(mixed)
    assert f32 is not mixed
    assert {layer.dtype_policy.name for layer in f32.layers} == {"float32"}
    assert all(np.array_equal(a, b) for a, b in zip(f32.get_weights(), mixed.get_weights()))
    x = images.astype(np.float32)
    p32, p16 = f32.predict(x, verbose=0), mixed.predict(x, verbose=0)
    assert p32.dtype == np.float32 and p16.dtype == np.float32  # the softmax stays float32
    assert np.abs(p32 - p16).max() < 0.05  # bfloat16 rounding only
    assert as_float32(f32) is f32


def test_unknown_precision_is_refused():
    from runtime.errors import CifarEdgeError
    from train.models import resolve_precision

    assert resolve_precision("float32") == "float32"
    assert resolve_precision("auto", flags={"avx2", "avx512_bf16"}) == "mixed_bfloat16"
    assert resolve_precision("auto", flags={"avx2", "amx_bf16"}) == "mixed_bfloat16"
    assert resolve_precision("auto", flags={"avx2", "fma"}) == "float32"
    assert resolve_precision("auto") in {"float32", "mixed_bfloat16"}
    # Refused whatever the CPU has: the check must not depend on this machine's flags.
    for flags in (set(), {"avx512_bf16"}):
        with pytest.raises(CifarEdgeError, match="unknown precision 'half'"):
            resolve_precision("half", flags=flags)
