"""The training run as a user meets it: the recipe's schedule and optimizer, defaults that fit
small data, re-running a command, and errors that come in the right order and say the fix."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import cli_in_subprocess

pytest.importorskip("tensorflow")

FAST = dict(model="tiny", batch_size=16, val_images=10, seed=3, epochs=1)


def _fit(config_kw, run, data, **kw):
    from train.config import TrainConfig
    from train.fit import fit

    lines = []
    result = fit(TrainConfig(**{**FAST, **config_kw}), out=run, data=data, quiet=True, log=lines.append, **kw)
    return result, lines


# -- the schedule and the optimizer, registered once at module level -------------------------

def test_one_cycle_values_at_its_key_steps():
    from train.optim import OneCycle

    schedule = OneCycle(peak=2.0, total_steps=100, warmup_steps=20, final=0.1, start=0.2)
    at = {step: float(schedule(step)) for step in (0, 10, 20, 60, 100, 150)}
    assert at[0] == pytest.approx(0.4)  # start · peak
    assert at[10] == pytest.approx(1.2)  # halfway up the warm-up
    assert at[20] == pytest.approx(2.0)  # the peak
    assert at[60] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))  # halfway down the decay
    assert at[100] == pytest.approx(0.2) and at[150] == pytest.approx(0.2)  # final · peak, then flat
    assert OneCycle(**schedule.get_config()).get_config() == schedule.get_config()


def test_batchnorm_biases_get_the_scaled_learning_rate():
    import keras

    from train.optim import BiasScaledSGD

    inputs = keras.Input((4,))
    x = keras.layers.Dense(3, use_bias=False, name="dense")(inputs)
    outputs = keras.layers.BatchNormalization(scale=False, name="bn")(x)
    model = keras.Model(inputs, outputs)
    optimizer = BiasScaledSGD(learning_rate=0.1, momentum=0.0, bias_lr_scale=64.0)
    kernel, beta = model.get_layer("dense").kernel, model.get_layer("bn").beta
    before = [np.array(kernel.numpy()), np.array(beta.numpy())]
    optimizer.apply_gradients([(np.ones(kernel.shape, np.float32), kernel), (np.ones(beta.shape, np.float32), beta)])
    assert np.allclose(before[0] - kernel.numpy(), 0.1)  # the plain rate
    assert np.allclose(before[1] - beta.numpy(), 0.1 * 64)  # BatchNorm's beta: 64 times it


def test_models_does_not_import_fit():
    code = ("import sys, train.models; "
            "print(sorted(m for m in ('train.fit', 'tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- defaults that work on small data --------------------------------------------------------

def test_held_out_images_scale_with_the_data():
    from train.fit import auto_val_images

    assert auto_val_images(50_000) == 2000  # capped
    assert auto_val_images(2_000) == 200  # 10%
    assert auto_val_images(5) == 1  # never none


def test_small_data_trains_with_default_options(folder_dataset, tmp_path):
    # 60 training images: 6 held out, the 1024 batch shrinks to the 54 left, one step an epoch.
    result, lines = _fit({"val_images": None, "batch_size": 1024}, tmp_path / "run", folder_dataset)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["validation_images"] == 6 and config["train_images"] == 54
    assert config["config"]["batch_size"] == 54
    assert any(line.startswith("batch size 1,024 is more than the 54 training images") for line in lines)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and "only 1 step per epoch" in warnings[0] and "--batch-size" in warnings[0]
    summary = [line for line in lines if line.startswith("tiny:")][0]
    assert "1 epoch of 1 step;" in summary and "steps" not in summary
    assert result.epochs_done == 1


def test_enough_steps_no_warning(folder_dataset, tmp_path):
    _, lines = _fit({"batch_size": 5}, tmp_path / "run", folder_dataset)  # 50 images: 10 steps
    assert not [line for line in lines if line.startswith("warning:")]
    assert "1 epoch of 10 steps;" in [line for line in lines if line.startswith("tiny:")][0]


def test_fine_tune_batch_is_sized_to_small_data():
    from train.config import TrainConfig
    from train.fit import FEW_STEPS, _fit_batches_to_data

    config = TrainConfig.for_model("tiny", init="shipped")  # no --batch-size: the recipe's
    assert config.batch_size is None
    for n_train, batch in [(400, 32), (576, 32), (577, 64), (20_000, 64), (100, 8), (54, 8), (5, 5)]:
        lines = []
        fitted = _fit_batches_to_data(config, n_train, lines.append)
        steps = -(-n_train // fitted.batch_size)
        assert fitted.batch_size == batch, n_train
        assert not [line for line in lines if line.startswith("warning:")], lines
        assert steps >= FEW_STEPS or batch <= 8  # 8 is the floor: 54 images make 7 steps
        assert len(lines) == (batch < 64)  # one line when it departs from the recipe's 64
    lines = []
    _fit_batches_to_data(config, 400, lines.append)
    assert lines == ["batch size 32 for 400 training images: 13 steps per epoch (the recipe's 64 is "
                     "halved on little data, down to 8; --batch-size sets one)"]


def test_a_batch_size_given_keeps_the_warning():
    from train.config import TrainConfig
    from train.fit import _fit_batches_to_data

    lines = []
    config = TrainConfig.for_model("tiny", init="shipped", batch_size=64)
    fitted = _fit_batches_to_data(config, 400, lines.append)
    assert fitted.batch_size == 64  # the user's choice stands
    assert lines == ["warning: only 7 steps per epoch (400 images, batch 64); the schedule has few updates "
                     "to work with: a smaller --batch-size (e.g. 32) trains better on this little data"]
    lines.clear()
    _fit_batches_to_data(config.with_(batch_size=100), 500, lines.append)  # 5 steps; 64 would make 8
    assert "(e.g. 32)" in lines[0]


@pytest.mark.parametrize("start, args, batch", [  # no --batch-size: the recipe's, sized to the data in fit
    (("--init", "shipped"), (), None), (("--init", "shipped"), ("--batch-size", "64"), 64),
    (("--model", "quick"), (), "auto"), (("--model", "quick"), ("--batch-size", "64"), 64)])
def test_cli_passes_a_given_batch_size_and_leaves_the_recipes_open(start, args, batch, folder_dataset, tmp_path,
                                                                   monkeypatch):
    import train.fit
    from train.cli import main

    seen = []
    monkeypatch.setattr(train.fit, "fit", lambda config, **kw: seen.append(config)
                        or train.fit.FitResult(tmp_path, 0.5, 1, 1.0))
    r = CliRunner().invoke(main, ["--data", str(folder_dataset), *start, "--out",
                                  str(tmp_path / "run"), *args])
    assert r.exit_code == 0, r.output
    assert [config.batch_size for config in seen] == [batch]


def test_fine_tune_batch_trains_and_is_recorded(folder_dataset, tmp_path):
    # 60 images, 10 held out: the recipe's 64 halves to 8 (7 steps), said once, no warning.
    _, lines = _fit({"batch_size": None}, tmp_path / "run", folder_dataset)
    assert not [line for line in lines if line.startswith("warning:")]
    assert [line for line in lines if line.startswith("batch size")] == [
        "batch size 8 for 50 training images: 7 steps per epoch (the recipe's 64 is halved on little data, "
        "down to 8; --batch-size sets one)"]
    assert "1 epoch of 7 steps;" in [line for line in lines if line.startswith("tiny:")][0]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["batch_size"] == 8


def test_from_scratch_the_batch_and_the_rate_are_sized_to_small_data():
    from train.config import TrainConfig
    from train.fit import FEW_STEPS, _fit_batches_to_data

    config = TrainConfig.for_model("quick")  # no --batch-size, no --lr: the recipe's 1,024 and 1.5
    lines = []
    fitted = _fit_batches_to_data(config, 1_800, lines.append)
    assert fitted.batch_size == 128 and -(-1_800 // 128) >= FEW_STEPS  # 15 steps, not 2
    assert fitted.lr == pytest.approx(1.5 * 128 / 1024)  # linear scaling: 0.1875
    assert config.batch_size == "auto" and TrainConfig().batch_size == "auto"  # config.json gets 128
    assert lines == ["batch size 128 for 1,800 training images: 15 steps per epoch (the recipe's 1,024 is halved "
                     "on little data, down to 8; --batch-size sets one), and the peak learning rate with it: "
                     "0.1875 (lr 1.5 x 128/1,024)"]
    assert _fit_batches_to_data(config.with_(lr=3.0), 1_800, lines.append).lr == pytest.approx(0.375)
    for n_train in (45_000, 9_217):  # full CIFAR-10, and the least that makes 10 steps of 1,024
        lines = []
        fitted = _fit_batches_to_data(config, n_train, lines.append)
        assert (fitted.batch_size, fitted.lr, lines) == (1024, 1.5, [])
    assert _fit_batches_to_data(config, 5_000, lines.append).batch_size == 512


def test_a_batch_size_given_from_scratch_is_kept_with_its_rate():
    from train.config import TrainConfig
    from train.fit import _fit_batches_to_data

    for config in (TrainConfig(batch_size=1024), TrainConfig.for_model("quick", batch_size=1024)):
        lines = []
        fitted = _fit_batches_to_data(config, 1_800, lines.append)
        assert (fitted.batch_size, fitted.lr) == (1024, 1.5)
        assert lines == ["warning: only 2 steps per epoch (1,800 images, batch 1,024); the schedule has few updates "
                         "to work with: a smaller --batch-size (e.g. 128) trains better on this little data"]


def test_a_sized_batch_is_recorded_and_the_run_reproduces_from_config_json(folder_dataset, tmp_path):
    # 60 images, 10 held out: from scratch, 1,024 halves to 8 (7 steps), the rate with it.
    from train.config import TrainConfig
    from train.fit import _fit_batches_to_data

    run = tmp_path / "run"
    _, lines = _fit({"batch_size": "auto", "lr": 1.5}, run, folder_dataset)
    assert not [line for line in lines if line.startswith("warning:")]
    assert [line for line in lines if line.startswith("batch size")] == [
        "batch size 8 for 50 training images: 7 steps per epoch (the recipe's 1,024 is halved on little data, "
        "down to 8; --batch-size sets one), and the peak learning rate with it: 0.0117188 (lr 1.5 x 8/1,024)"]
    saved = TrainConfig.load(run / "config.json")
    assert (saved.batch_size, saved.lr) == (8, 1.5 * 8 / 1024)  # what the run trained with
    again = []
    assert _fit_batches_to_data(saved, 50, again.append) == saved and not again  # not scaled a second time


def test_a_batch_size_that_is_not_a_number_is_refused_before_training(folder_dataset, tmp_path):
    from runtime.errors import OptionError

    for wrong in ("big", 0, True):
        with pytest.raises(OptionError, match="--batch-size .*give a number of images, 1 or more"):
            _fit({"batch_size": wrong}, tmp_path / "run", folder_dataset)
    assert not (tmp_path / "run").exists()


# -- running twice ----------------------------------------------------------------------------

def test_overwrite_trains_again_and_messages_say_what_to_type(folder_dataset, tmp_path):
    from runtime.errors import CifarEdgeError
    from train.fit import fit
    from train.config import TrainConfig

    run = tmp_path / "run"
    _fit({}, run, folder_dataset)
    first = (run / "model.keras").stat().st_mtime_ns
    with pytest.raises(CifarEdgeError, match=r"finished all 1 epochs.*Add --overwrite"):
        _fit({}, run, folder_dataset)
    with pytest.raises(CifarEdgeError, match=r"already finished all 1 epochs.*cifar-export .*model.keras.*--overwrite"):
        fit(TrainConfig(), out=run, resume=True, quiet=True, log=lambda s: None)
    (run / "stray.txt").write_text("kept")
    _fit({"seed": 4}, run, folder_dataset, overwrite=True)
    assert (run / "model.keras").stat().st_mtime_ns != first
    assert json.loads((run / "config.json").read_text())["config"]["seed"] == 4
    assert (run / "stray.txt").read_text() == "kept"  # only the run's own files are replaced


def test_a_second_run_in_a_folder_in_use_is_refused_and_the_first_untouched(folder_dataset, tmp_path):
    # Another process trains in runs/x (it holds the folder's lock): --overwrite, --resume and a
    # plain start there are refused in one line and change nothing; once it ends, all work.
    from runtime.errors import CifarEdgeError
    from train.config import TrainConfig
    from train.fit import fit

    run = tmp_path / "run"
    _fit({"epochs": 2}, run, folder_dataset)
    state = json.loads((run / "state.json").read_text())
    (run / "state.json").write_text(json.dumps({**state, "epoch": 1, "finished": False}))  # as if stopped
    before = {f.name: f.stat().st_mtime_ns for f in run.iterdir()}
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); "
        "print('locked', flush=True); time.sleep(60)"), str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for attempt in (lambda: _fit({"seed": 4}, run, folder_dataset, overwrite=True),
                        lambda: fit(TrainConfig(), out=run, resume=True, quiet=True, log=lambda s: None)):
            with pytest.raises(CifarEdgeError, match=r"another cifar-train is training in this folder; wait for it"):
                attempt()
        assert {f.name: f.stat().st_mtime_ns for f in run.iterdir()} == before
    finally:
        holder.kill()
        holder.wait()
    result, _ = _fit({"seed": 4}, run, folder_dataset, overwrite=True)  # the lock went with the process
    assert result.epochs_done == 1


def test_snapshots_keep_the_last_epochs_weights_and_overwrite_clears_them(folder_dataset, tmp_path):
    from train.models import load_keras_model

    run = tmp_path / "run"
    _fit({"epochs": 3, "snapshots": 2}, run, folder_dataset)
    kept = sorted(p.name for p in (run / "snapshots").iterdir())
    assert kept == ["epoch-002.weights.h5", "epoch-003.weights.h5"]
    model, last = load_keras_model(run / "model.keras"), load_keras_model(run / "last.keras")
    model.load_weights(run / "snapshots" / "epoch-003.weights.h5")  # the run's final weights
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), last.get_weights()))
    _fit({"epochs": 1}, run, folder_dataset, overwrite=True)
    assert not (run / "snapshots").exists()  # an old run's snapshots never mix with a new run's


# -- the CLI: validated before TensorFlow, nothing created on failure ------------------------

def test_unknown_model_refused_before_tensorflow_creating_nothing(tmp_path):
    out = cli_in_subprocess(["--model", "huge"], tmp_path)
    assert out.stdout.split() == ["exit", "2", "False"]
    assert "'huge' is not one of 'tiny', 'quick', 'default', 'airbench94'" in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_missing_data_reported_before_the_run_folder(folder_dataset, tmp_path):
    _fit({}, tmp_path / "run", folder_dataset)  # a finished run is in the way too
    out = cli_in_subprocess(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")], tmp_path)
    assert out.stdout.split() == ["exit", "1", "False"]
    assert out.stderr.strip().splitlines() == [
        f"cifar-train: error: {tmp_path / 'nowhere'}: no such file or directory "
        "(pass --data DIR with train/ and test/ inside)"]


def test_run_already_there_says_what_to_type(folder_dataset, tmp_path):
    from train.cli import main

    run = tmp_path / "run"
    _fit({"epochs": 2}, run, folder_dataset)
    state = json.loads((run / "state.json").read_text())
    (run / "state.json").write_text(json.dumps({**state, "epoch": 1, "finished": False}))  # as if stopped
    result = CliRunner().invoke(main, ["--data", str(folder_dataset), "--out", str(run)])
    assert result.exit_code == 1
    assert f"use --resume {run} to continue it, --overwrite to train it again" in result.output


def test_data_pointed_at_a_split_asks_for_the_folder_above(folder_dataset, tmp_path):
    from train.cli import main

    result = CliRunner().invoke(main, ["--data", str(folder_dataset / "train"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert result.output.strip() == (f"cifar-train: error: {folder_dataset / 'train'}: this is the train/ split "
                                     f"of a dataset; did you mean the folder above? --data {folder_dataset}")
    assert not (tmp_path / "r").exists()


# -- no silence: what decoding does, and bars only on a terminal -----------------------------

def test_first_decode_says_what_it_does_and_where_it_caches(folder_dataset, tmp_path):
    from train.data import load_cifar10

    lines = []
    load_cifar10(folder_dataset, cache_dir=tmp_path / "c", quiet=True, log=lines.append)
    assert lines[0] == (f"decoding the train split once (60 images in {folder_dataset.resolve()}); "
                        f"cached in {tmp_path / 'c'}")
    assert lines[1].startswith("decoded 60 train images in ")
    assert lines[2].startswith("decoding the test split once (20 images")
    assert lines[3].startswith("decoded 20 test images in ") and len(lines) == 4
    again = []
    load_cifar10(folder_dataset, cache_dir=tmp_path / "c", quiet=True, log=again.append)
    assert again == []  # cached: nothing to say


def test_progress_bars_only_on_a_terminal(monkeypatch):
    import io

    from train.progress import bars_wanted, plural

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file, not a terminal
    assert bars_wanted(None) is False
    assert bars_wanted(False) is True and bars_wanted(True) is False

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert bars_wanted(None) is True
    assert (plural(1, "step"), plural(2, "step"), plural(1200, "image")) == ("1 step", "2 steps", "1,200 images")


def test_training_in_a_log_prints_lines_not_frames(folder_dataset, tmp_path):
    # stderr is a pipe here, as under nohup or CI: one plain line per epoch, no \r frames.
    out = subprocess.run([sys.executable, "-m", "train.cli", "--data", str(folder_dataset), "--model", "tiny",
                          "--epochs", "2", "--batch-size", "16", "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "\r" not in out.stderr
    assert [line.split()[1] for line in out.stderr.splitlines() if line.startswith("epoch")] == ["1/2", "2/2"]
    assert "decoding the train split once" in out.stderr


def test_download_error_shows_what_went_wrong_not_a_bare_exception(monkeypatch):
    keras_datasets = pytest.importorskip("keras.datasets.cifar10")
    from runtime.errors import DataError
    from train.data import load_cifar10

    def offline():  # what keras.utils.get_file raises when the fetch fails: a bare Exception
        raise Exception("URL fetch failure on https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz: "
                        "None -- [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras_datasets, "load_data", offline)
    with pytest.raises(DataError) as caught:
        load_cifar10(None)
    message = str(caught.value)
    assert "URL fetch failure on https://www.cs.toronto.edu" in message and "Temporary failure" in message
    assert "Exception" not in message and "pass --data DIR" in message


def test_no_bar_without_a_terminal_or_without_tqdm(monkeypatch):
    from train.progress import progress_bar

    with progress_bar(10, "x", "img", quiet=True) as bar:  # no terminal wanted: nothing drawn
        bar.update(3)
        assert bar.disable
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # the runtime-only install has no tqdm
    with progress_bar(10, "x", "img", quiet=False) as bar:
        bar.update(3)
        assert bar.disable
