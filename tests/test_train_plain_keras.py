"""Every model.keras the project writes opens in plain Keras: ``keras.saving.load_model(path)``
in a fresh interpreter with nothing of this project imported, as in a user's notebook."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import make_images, requires_tf

pytestmark = [requires_tf, pytest.mark.tf]

# Loads each model in argv[2:] with Keras alone, saves its predictions on the batch in argv[1]
# beside it, and prints which of this project's packages got imported (none should).
PLAIN_KERAS = """
import json, sys
import numpy as np
import keras

batch = np.load(sys.argv[1])
for i, path in enumerate(sys.argv[2:]):
    model = keras.saving.load_model(path)
    np.save(f"{sys.argv[1]}.{i}.npy", model.predict(batch, verbose=0))
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("train", "export", "runtime"))))
"""


def _modules(node) -> set[str]:
    """The ``module`` of every object a .keras config.json names."""
    if isinstance(node, dict):
        own = {node["module"]} if "module" in node else set()
        return own.union(*map(_modules, node.values()))
    if isinstance(node, list):
        return set().union(*map(_modules, node))
    return set()


def _load_in_plain_keras(paths, batch, tmp_path) -> list[np.ndarray]:
    """Predictions of each model on ``batch``, loaded in a fresh interpreter with only Keras
    imported, run outside the repository and without PYTHONPATH."""
    batch_file = tmp_path / "batch.npy"
    np.save(batch_file, batch)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", PLAIN_KERAS, str(batch_file), *map(str, paths)],
                          capture_output=True, text=True, cwd=tmp_path, env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"},
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == []  # nothing of this project was needed
    return [np.load(f"{batch_file}.{i}.npy") for i in range(len(paths))]


def test_model_keras_of_a_run_and_the_shipped_one_open_in_plain_keras(folder_dataset, tmp_path):
    from train.config import TrainConfig
    from train.fit import fit
    from train.models import SHIPPED_MODEL, load_keras_model, read_keras_config

    # float32: the run's model.keras is the compiled training model itself, whose optimizer
    # (train.optim.BiasScaledSGD on a OneCycle schedule) plain Keras cannot resolve.
    run = tmp_path / "run"
    fit(TrainConfig(model="tiny", batch_size=16, val_images=10, seed=3, epochs=2, precision="float32"),
        out=run, data=folder_dataset, quiet=True, log=lambda s: None)
    paths = [run / "model.keras", SHIPPED_MODEL]
    for path in paths:
        config = read_keras_config(path)
        assert not config.get("compile_config"), path  # no optimizer, schedule, loss or metrics
        assert all(m == "keras" or m.startswith("keras.") for m in _modules(config)), (path, _modules(config))
    # The resume checkpoint keeps the optimizer (tests/test_train_fit.py resumes from it).
    assert read_keras_config(run / "last.keras")["compile_config"]["optimizer"]["class_name"] == "BiasScaledSGD"

    batch = make_images(8, seed=5)[0].astype(np.float32)  # (8, 32, 32, 3) float32 RGB 0-255
    plain = _load_in_plain_keras(paths, batch, tmp_path)
    for path, theirs in zip(paths, plain):
        ours = load_keras_model(path).predict(batch, verbose=0)
        np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-6, err_msg=str(path))
