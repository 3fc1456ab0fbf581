"""notebooks/quickstart.ipynb, executed top to bottom by nbclient in a real IPython kernel on a
small generated dataset (tens of seconds), and the committed file's hygiene: no outputs, no
absolute paths.

The kernel runs this interpreter on this checkout (a kernelspec written for the test, its
PYTHONPATH the repository) with the notebook's QUICKSTART_* variables set small. Executing
needs TensorFlow (the train extra) and ipywidgets, ipykernel and nbclient (the notebook extra).
"""

from __future__ import annotations

import json
import re
import time

import pytest

from helpers import CLASSES, REPO, has_module, make_images, write_kernelspec

NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"
NEEDS = ("tensorflow", "ipywidgets", "ipykernel", "nbclient", "nbformat")
# The notebook's knobs for CI: a dataset of colours that even a few seconds of training learn.
SMALL = {"QUICKSTART_TRAIN_IMAGES": "500", "QUICKSTART_TEST_IMAGES": "100", "QUICKSTART_SECONDS": "30",
         "QUICKSTART_MODEL": "tiny", "QUICKSTART_INIT": ""}
CELL_TIMEOUT_S = 300  # one cell; the whole notebook takes about a minute here


def _cells() -> list[dict]:
    return json.loads(NOTEBOOK.read_text())["cells"]


def test_the_committed_notebook_has_no_outputs_and_no_absolute_paths():
    code = [cell for cell in _cells() if cell["cell_type"] == "code"]
    assert code and all(cell["outputs"] == [] and cell["execution_count"] is None for cell in code)
    text = NOTEBOOK.read_text()
    assert not re.search(r"""["'(\s](/work|/home|/root|/tmp|/Users|[A-Za-z]:\\\\)""", text), "an absolute path"


def test_the_notebook_follows_the_tutorial_in_order():
    headings = [cell["source"][0] if isinstance(cell["source"], list) else cell["source"].splitlines()[0]
                for cell in _cells() if cell["cell_type"] == "markdown"]
    steps = [h.split(". ", 1)[1].strip() for h in headings if re.match(r"## \d+\. ", h)]
    assert steps == ["Load CIFAR-10", "Look at the data", "Preprocess", "Build the model", "Compile", "Train",
                     "Evaluate", "Predict on new images", "Visualize", "Export to ONNX, with the parity table",
                     "The upload widget"]


@pytest.fixture
def kernel_name(tmp_path, monkeypatch) -> str:
    """A kernelspec for this interpreter, found first on JUPYTER_PATH."""
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return write_kernelspec(tmp_path / "jupyter")


def _write_dataset(root, n_train: int, n_test: int):
    """root/{train,test}/<class>/NNNN.png of one palette (helpers.write_folder_dataset draws
    the test split's colours afresh): a test split the trained model can get right."""
    from PIL import Image

    x, y = make_images(n_train + n_test, seed=0)
    for i, (image, label) in enumerate(zip(x, y)):
        folder = root / ("train" if i < n_train else "test") / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    return root


def _cell_seconds(cells) -> list[float]:
    """Each executed cell's seconds, from the timestamps nbclient records."""
    import datetime as dt

    def at(cell, key):
        return dt.datetime.fromisoformat(cell.metadata.execution[key].replace("Z", "+00:00"))

    return [round((at(c, "shell.execute_reply") - at(c, "iopub.execute_input")).total_seconds(), 1) for c in cells]


def _outputs_text(cell) -> str:
    """A cell's outputs as text: its streams, and the text/plain of everything it displayed."""
    return "".join(out.get("text", "") if out["output_type"] == "stream" else out.get("data", {}).get("text/plain", "")
                   for out in cell.get("outputs", []))


@pytest.mark.skipif(not all(map(has_module, NEEDS)),
                    reason=f"needs {', '.join(NEEDS)} (the train and notebook extras)")
def test_the_notebook_runs_end_to_end_on_small_data(tmp_path, monkeypatch, kernel_name):
    import nbformat
    from nbclient import NotebookClient

    data = _write_dataset(tmp_path / "cifar10", n_train=500, n_test=100)
    for name, value in {**SMALL, "CIFAR10_DIR": str(data), "QUICKSTART_RUN": str(tmp_path / "run"),
                        "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}.items():
        monkeypatch.setenv(name, value)  # the kernel inherits this environment
    nb = nbformat.read(NOTEBOOK, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=kernel_name,
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    seconds = time.perf_counter() - start
    nbformat.write(nb, tmp_path / "executed.ipynb")  # to read when it fails
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    errors = [out for cell in code for out in cell.outputs if out.output_type == "error"]
    assert not errors, errors
    text = [_outputs_text(cell) for cell in code]
    assert any("accuracy" in t and "precision" in t for t in text)  # the evaluation's table
    assert any("top-1 agree" in t and "\nint8 " in t for t in text)  # the parity table, an INT8 row
    assert any("\nthe runtime uses model" in t for t in text)
    assert re.match(r"airplane\.jpg: \w+ \d+% \(", text[-1]), text[-1]  # the widget classified the upload
    widget_views = [out for cell in code for out in cell.outputs
                    if "application/vnd.jupyter.widget-view+json" in out.get("data", {})]
    assert widget_views, "the upload widget was not displayed"
    assert (tmp_path / "run" / "model-int8.onnx").is_file()
    print(f"notebook executed in {seconds:.0f} s ({tmp_path / 'executed.ipynb'}); cells: {_cell_seconds(code)}")
