"""runtime.notebook: the upload widget driven as ipywidgets' own tests drive FileUpload (its
``value`` assigned with real image bytes, and the state a browser's message sets), the label
its Output shows, bad uploads, and the prediction grid.

The widget tests need ipywidgets (the notebook extra) and are skipped without it; the grid and
the import checks run in the base-only environment too.
"""

from __future__ import annotations

import datetime as dt
import io
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import loaded_by_import, requires_notebook
from runtime.errors import CifarEdgeError
from runtime.model.bundled import sample_images

SAMPLES = {path.stem: path for path in sample_images()}


@pytest.fixture(scope="module")
def shipped():
    """The bundled model, loaded once: it labels the bundled samples right."""
    from runtime.model.bundled import load_classifier

    return load_classifier()


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _rgba_png(path) -> bytes:
    """The sample as an RGBA PNG with a transparent left edge (composited onto white)."""
    image = Image.open(path).convert("RGBA")
    alpha = Image.new("L", image.size, 255)
    alpha.paste(0, (0, 0, 4, image.height))
    image.putalpha(alpha)
    return _encoded(image, "PNG")


def _file(name: str, data: bytes, mime: str = "image/jpeg") -> dict:
    """One entry of ipywidgets 8's FileUpload.value, as set from the kernel."""
    return {"name": name, "type": mime, "size": len(data), "content": memoryview(data),
            "last_modified": dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)}


def _shown(output) -> list[str]:
    """Each output item as text: a stream's line, a display's text/plain."""
    return [item["text"].rstrip("\n") if item["output_type"] == "stream" else item["data"]["text/plain"]
            for item in output.outputs]


def _upload(widget, *files: dict) -> list[str]:
    """Assign the files to the widget's FileUpload; the output lines they added. On
    ipywidgets 7 (checked by hand: it is not what CI installs) as its browser side does:
    metadata, data, then the upload counter."""
    upload, output = widget.children
    before = len(output.outputs)
    if upload.has_trait("_counter"):
        upload.metadata = [{k: v for k, v in f.items() if k not in ("content", "last_modified")} for f in files]
        upload.data = [f["content"].tobytes() for f in files]
        upload._counter += 1
    else:
        upload.value = list(files)
    return _shown(output)[before:]


def _emptied(upload) -> bool:
    """Whether the FileUpload was emptied after an upload (ipywidgets 8; 7's value is read-only)."""
    return upload.has_trait("_counter") or upload.value == ()


# --- the widget -------------------------------------------------------------------------------

@requires_notebook
def test_jpeg_rgba_png_greyscale_then_text_then_jpeg_again(shipped, tmp_path):
    import ipywidgets

    from runtime.notebook import upload_widget

    widget = upload_widget(shipped)
    upload, output = widget.children
    assert isinstance(upload, ipywidgets.FileUpload) and isinstance(output, ipywidgets.Output)
    assert upload.multiple and upload.accept == "image/*"
    assert _shown(output)[0].startswith("model model-")  # which model runs, once, first
    cases = [("cat.jpg", SAMPLES["cat"].read_bytes(), "cat"),
             ("ship.png", _rgba_png(SAMPLES["ship"]), "ship"),
             ("horse-grey.png", _encoded(Image.open(SAMPLES["horse"]).convert("L"), "PNG"), "horse")]
    for name, data, label in cases:
        (line,) = _upload(widget, _file(name, data))
        assert line.startswith(f"{name}: {label} "), line
        # The label cifar-run gives the same file, decoded from disk.
        (tmp_path / name).write_bytes(data)
        assert shipped.predict(tmp_path / name).label == label
        assert _emptied(upload)  # so the same file picked again is a change
    html = output.outputs[-1]["data"]["text/html"]
    assert "<b>horse " in html and "data:image/png;base64," in html and html.count("background:") == 3
    assert _upload(widget, _file("notes.txt", b"not an image at all\n", "text/plain")) == [
        "notes.txt: not an image Pillow can read"]
    assert output.outputs[-1]["name"] == "stderr"
    (line,) = _upload(widget, _file("cat.jpg", SAMPLES["cat"].read_bytes()))
    assert line.startswith("cat.jpg: cat "), line


@requires_notebook
def test_several_files_at_once_keep_their_order_and_a_bad_one_stops_none(shipped):
    from runtime.notebook import upload_widget

    widget = upload_widget(shipped, top_k=2)
    lines = _upload(widget, _file("dog.jpg", SAMPLES["dog"].read_bytes()), _file("empty.jpg", b""),
                    _file("truck.jpg", SAMPLES["truck"].read_bytes()))
    assert len(lines) == 3 and lines[0].startswith("dog.jpg: dog ") and lines[2].startswith("truck.jpg: truck ")
    assert lines[1] == "empty.jpg: empty file"
    assert lines[0].count("%") == 3  # the label and the top 2


@requires_notebook
def test_truncated_and_too_large_uploads_are_one_line_each(shipped, monkeypatch):
    import runtime.image.preprocess
    import runtime.notebook
    from runtime.notebook import upload_widget

    widget = upload_widget(shipped)
    photo = _encoded(Image.open(SAMPLES["frog"]).resize((256, 256)), "JPEG", quality=90)
    (line,) = _upload(widget, _file("half.jpg", photo[: len(photo) // 2]))
    assert line.startswith("half.jpg: corrupt or truncated image") and "\n" not in line
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    big = _encoded(Image.fromarray(noise), "PNG")  # 0.3 MB: noise does not compress
    monkeypatch.setattr(runtime.notebook, "MAX_UPLOAD_BYTES", 2**20 // 10)
    assert _upload(widget, _file("big.png", big, "image/png")) == [
        "big.png: 0.3 MB is over the 0.1 MB limit for one image"]
    monkeypatch.setattr(runtime.notebook, "MAX_UPLOAD_BYTES", 10**9)
    monkeypatch.setattr(runtime.image.preprocess, "MAX_PIXELS", 100 * 100)
    (line,) = _upload(widget, _file("bomb.jpg", photo))
    assert line.startswith("bomb.jpg: 256x256 pixels is over the 10,000 pixel limit"), line
    monkeypatch.undo()
    (line,) = _upload(widget, _file("frog.jpg", photo))
    assert line.startswith("frog.jpg: frog "), line


@requires_notebook
def test_the_state_a_browser_sends_is_classified(shipped):
    """The frontend's message: last_modified in ms, content as a buffer (ipywidgets' test_receive_single_file)."""
    from runtime.notebook import upload_widget

    widget = upload_widget(shipped)
    upload, output = widget.children
    if upload.has_trait("_counter"):
        pytest.skip("ipywidgets 7 sends metadata, data and a counter instead (_upload does that)")
    data = SAMPLES["deer"].read_bytes()
    upload.set_state({"value": [{"name": "deer.jpg", "type": "image/jpeg", "size": len(data),
                                 "last_modified": 1578578296434, "content": memoryview(data)}]})
    assert _shown(output)[-1].startswith("deer.jpg: deer ")


@requires_notebook
def test_model_by_path_min_confidence_and_the_output_is_bounded(tiny_model, monkeypatch):
    import runtime.notebook
    from runtime.notebook import upload_widget

    red = _encoded(Image.new("RGB", (32, 32), (255, 0, 0)), "PNG")  # the tiny model's airplane
    widget = upload_widget(tiny_model, min_confidence=0.999)
    (line,) = _upload(widget, _file("red.png", red, "image/png"))
    assert line.startswith("red.png: uncertain (airplane "), line
    monkeypatch.setattr(runtime.notebook, "MAX_RESULTS", 3)
    for i in range(5):
        _upload(widget, _file(f"red{i}.png", red, "image/png"))
    assert [line.split(":")[0] for line in _shown(widget.children[1])] == ["red2.png", "red3.png", "red4.png"]


def test_ipywidgets_7_values_are_read_too():
    from runtime.notebook import uploaded_files

    v7 = {"a.jpg": {"metadata": {"name": "a.jpg", "type": "image/jpeg", "size": 3}, "content": b"abc"}}
    assert uploaded_files(v7) == [("a.jpg", b"abc")]
    assert uploaded_files((_file("b.png", b"xyz"),)) == [("b.png", b"xyz")]
    assert uploaded_files(()) == []


def test_without_ipywidgets_the_widget_says_how_to_install_it(monkeypatch, tiny_model):
    from runtime.notebook import upload_widget

    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import fails as for a missing package
    with pytest.raises(CifarEdgeError, match=r"needs ipywidgets: pip install 'cifar-edge\[notebook\]'"):
        upload_widget(tiny_model)


def test_importing_runtime_notebook_loads_no_widgets_and_no_ipython():
    assert loaded_by_import("import runtime.notebook", ("ipywidgets", "IPython", "matplotlib", "onnxruntime")) == []


# --- the grid -------------------------------------------------------------------------------

def test_grid_colours_right_and_wrong_against_true_labels(shipped):
    from runtime.notebook import RIGHT_COLOR, WRONG_COLOR, show_predictions

    paths = [SAMPLES["cat"], SAMPLES["ship"], SAMPLES["truck"]]
    grid = show_predictions(paths, shipped, cols=2, labels=["cat", "ship", "dog"])
    assert [s.correct for s in grid.shown] == [True, True, False]
    assert grid.accuracy == pytest.approx(2 / 3)
    html = grid._repr_html_()
    assert html.count(f"3px solid {RIGHT_COLOR}") == 2 and html.count(f"3px solid {WRONG_COLOR}") == 1
    assert "true: dog" in html and "repeat(2, " in html and "2 of 3 right" in html
    assert repr(grid).splitlines()[2].startswith("truck.jpg: truck ") and "[true: dog]" in repr(grid)


def test_grid_takes_a_dataset_slice_with_index_labels(shipped):
    from runtime.notebook import show_predictions

    x = np.stack([np.asarray(Image.open(SAMPLES[name]).convert("RGB")) for name in ("frog", "horse")])  # (2, 32, 32, 3)
    grid = show_predictions(x, shipped, labels=np.array([6, 7]))  # CIFAR-10's frog, horse
    assert [s.name for s in grid.shown] == ["#0", "#1"] and grid.accuracy == 1.0
    without = show_predictions(x, shipped)
    assert without.accuracy is None and "solid" not in without._repr_html_()
    # An array and the file it came from get the same label as Classifier.predict gives.
    assert without.shown[1].prediction.label == shipped.predict(image_rgb=x[1]).label == "horse"


def test_grid_shows_a_bad_image_as_its_line_and_checks_its_arguments(shipped, tmp_path):
    from runtime.notebook import show_predictions

    (tmp_path / "notes.txt").write_text("hello")
    grid = show_predictions([tmp_path / "notes.txt", SAMPLES["bird"]], shipped, labels=["cat", "bird"])
    assert grid.shown[0].error == f"{tmp_path / 'notes.txt'}: not an image Pillow can read"
    assert grid.accuracy == 1.0  # the bad image is not judged
    with pytest.raises(CifarEdgeError, match="2 images but 1 labels"):
        show_predictions([SAMPLES["cat"], SAMPLES["dog"]], shipped, labels=["cat"])
    with pytest.raises(CifarEdgeError, match="label 10 is not a class"):
        show_predictions([SAMPLES["cat"]], shipped, labels=[10])
    assert show_predictions(SAMPLES["cat"]).shown[0].prediction.label == "cat"  # one path, the bundled model
