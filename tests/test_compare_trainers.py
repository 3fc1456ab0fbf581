"""scripts/compare_trainers.py on a few hundred generated images and a budget of seconds: the
TensorFlow row and its report, a missing backend as one line while the others run, the PyTorch
port against the Keras model it copies. JAX and PyTorch parts are skipped where those are not
installed (CI installs TensorFlow only)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import REPO, make_images, requires_tf, write_folder_dataset

SCRIPTS = REPO / "scripts"
ROW_FIELDS = {"trainer", "status", "versions", "precision", "layout", "setup_s", "warmup_s", "rewarmup_s",
              "probe_images_per_s", "images_per_s", "steps", "epochs", "train_s", "augment_s", "test_accuracy",
              "eval_s"}


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines functions only: importing has no side effects
    return module


@pytest.fixture(scope="module")
def compare():
    return load_script("compare_trainers")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_folder_dataset(tmp_path_factory.mktemp("data") / "cifar10", n_train=300, n_test=100)


def run(compare, data, out, *args):
    return CliRunner().invoke(compare.main, ["--data", str(data), "--budget", "2", "--out", str(out), *args])


def assert_plausible(row: dict, trainer: str) -> None:
    assert row["status"] == "ok", row
    assert ROW_FIELDS <= set(row) and row["trainer"] == trainer and row["precision"] == "float32"
    assert row["steps"] > 0 and row["epochs"] == pytest.approx(row["steps"], rel=0.01)  # 300 images: 1 step an epoch
    assert 0 <= row["test_accuracy"] <= 1
    assert row["images_per_s"] > 0 and row["probe_images_per_s"] > 0 and row["warmup_s"] > 0
    assert 0 <= row["augment_s"] < row["train_s"]


@requires_tf
def test_tf_row_and_a_missing_backend_as_one_line(compare, data, tmp_path, monkeypatch):
    monkeypatch.setitem(compare.INSTALL, "jax", (("cifar_edge_no_such_module",), "pip install jax jaxlib"))
    out = tmp_path / "report.json"
    result = run(compare, data, out, "--trainers", "tf,jax")
    assert result.exit_code == 3, result.output  # ExitCode.PARTIAL: one trainer ran, one could not
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert errors == ["compare_trainers: error: cifar_edge_no_such_module is not installed: pip install jax jaxlib"]
    report = json.loads(out.read_text())
    assert [row["trainer"] for row in report["rows"]] == ["tf", "jax"]
    assert_plausible(report["rows"][0], "tf")
    assert report["rows"][0]["versions"]["tensorflow"]
    assert report["rows"][1] == {"trainer": "jax", "status": "failed",
                                 "error": "cifar_edge_no_such_module is not installed: pip install jax jaxlib"}
    assert report["train_images"] == 300 and report["test_images"] == 100 and report["threads"] >= 1
    assert report["cpu"]["model"] and report["recipe"]["batch_size"] == 300 and not report["recipe"]["lookahead"]
    assert "| tf | keras " in result.stdout and "| jax |" in result.stdout and "failed: " in result.stdout
    assert not list(tmp_path.glob(".report.json*"))  # written atomically: no temporary file left


@pytest.mark.parametrize("trainer", ["jax", "torch"])
def test_other_trainers_report_plausible_rows(compare, data, tmp_path, trainer):
    for module in compare.INSTALL[trainer][0]:
        pytest.importorskip(module)
    out = tmp_path / "report.json"
    result = run(compare, data, out, "--trainers", trainer)
    assert result.exit_code == 0, result.output
    assert_plausible(json.loads(out.read_text())["rows"][0], trainer)


def test_an_unknown_trainer_is_a_usage_error(compare, data, tmp_path):
    result = run(compare, data, tmp_path / "report.json", "--trainers", "tf,mxnet")
    assert result.exit_code == 2
    assert result.stderr.strip() == "compare_trainers: error: --trainers 'tf,mxnet': choose from tf, jax, torch, " \
                                    "comma-separated"
    assert not (tmp_path / "report.json").exists()


@requires_tf
def test_the_torch_schedule_is_keras_one_cycle(compare):
    pytest.importorskip("torch")
    from train.optim import OneCycle

    torch_side = load_script("compare_trainers_torch")
    config = compare.recipe(0, 50_000)
    for total in (1, 7, 245):
        keras_schedule = OneCycle(config.lr, total, int(total * config.warmup), config.final_lr, config.start_lr)
        for step in sorted({0, 1, total // 4, total // 2, total - 1, total}):
            assert torch_side.one_cycle(step, total, config) == pytest.approx(float(keras_schedule(step)), rel=1e-6)


def paired_weights(net):
    """(Keras weight path, the port's tensor, the permutation from its layout to Keras') for
    every weight of the PyTorch QuickNet."""
    oihw_to_hwio = (2, 3, 1, 0)
    yield "whiten/kernel", net.whiten.weight, oihw_to_hwio
    for i, (conv1, _, bn1, _, conv2, bn2, _) in enumerate(net.blocks):
        yield f"g{i}_conv1/kernel", conv1.weight, oihw_to_hwio
        yield f"g{i}_2_conv/kernel", conv2.weight, oihw_to_hwio
        for bn, name in ((bn1, f"g{i}_bn1"), (bn2, f"g{i}_2_bn")):
            yield f"{name}/beta", bn.bias, (0,)
            yield f"{name}/moving_mean", bn.running_mean, (0,)
            yield f"{name}/moving_variance", bn.running_var, (0,)
    yield "logits/kernel", net.logits.weight, (1, 0)


@requires_tf
def test_the_torch_port_computes_and_steps_as_the_keras_model(compare):
    """Same weights, same batch: the same probabilities; after one step of the recipe (where
    Keras' and PyTorch's momentum conventions still agree), the same weights: BatchNorm biases
    at 64x the rate, decays and label smoothing included."""
    torch = pytest.importorskip("torch")
    from train.fit import build_for_config, compile_model

    torch_side = load_script("compare_trainers_torch")
    x, y = make_images(64, seed=3)
    config = compare.recipe(0, len(x))
    model = build_for_config(config, 10, x)
    compile_model(model, config.with_(epochs=1), 10)
    trainer = torch_side.TorchTrainer(config, x, channels_last=True, threads=1)
    keras_weights = {w.path: w.numpy() for w in model.weights}
    assert len(keras_weights) == len(list(paired_weights(trainer.net)))  # every Keras weight has its pair
    for path, tensor, to_keras in paired_weights(trainer.net):
        tensor.data.copy_(torch.from_numpy(np.ascontiguousarray(keras_weights[path].transpose(np.argsort(to_keras)))))

    trainer.net.eval()
    with torch.inference_mode():
        torch_probs = torch.softmax(trainer.net(trainer._batch(x)), 1).numpy()
    np.testing.assert_allclose(torch_probs, model.predict(x.astype(np.float32), verbose=0), atol=1e-5)

    model.train_on_batch(x.astype(np.float32), np.eye(10, dtype=np.float32)[y])
    trainer.compile(10)
    trainer.train(x, y)
    after = {w.path: w.numpy() for w in model.weights}
    for path, tensor, to_keras in paired_weights(trainer.net):
        ours = tensor.detach().numpy().transpose(to_keras)
        if path.endswith("moving_variance"):  # PyTorch's is the unbiased one: 576 values a channel in the last block
            np.testing.assert_allclose(ours, after[path], rtol=3e-3, err_msg=path)
            continue
        # The steps themselves, to 1%: weight decay is about 5% of a dirac weight's first step.
        step, keras_step = ours - keras_weights[path], after[path] - keras_weights[path]
        np.testing.assert_allclose(step, keras_step, rtol=1e-2, atol=1e-3 * np.abs(keras_step).max(), err_msg=path)
