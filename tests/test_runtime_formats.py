"""runtime.image.preprocess.IMAGE_SUFFIXES: the one list of image suffixes, each one a format Pillow
reads, used by cifar-run's folder search and by INT8 calibration folders alike."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from runtime_models import solid

from runtime.cli.run import main
from runtime.image.inputs import expand_sources
from runtime.image.preprocess import IMAGE_SUFFIXES, prepare


@pytest.fixture
def one_of_each(tmp_path) -> Path:
    """A red image saved under every suffix in IMAGE_SUFFIXES, plus a text file."""
    folder = tmp_path / "formats"
    folder.mkdir()
    red = Image.fromarray(solid((255, 0, 0)))
    for suffix in IMAGE_SUFFIXES:
        red.save(folder / f"red{suffix}")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_every_suffix_is_found_and_decoded(one_of_each):
    found = list(expand_sources([str(one_of_each)]))
    assert sorted(Path(p).suffix for p in found) == sorted(IMAGE_SUFFIXES)
    for path in found:
        assert prepare(path).shape == (32, 32, 3)


def test_cifar_run_classifies_every_format(tiny_model, one_of_each):
    result = CliRunner().invoke(main, [str(one_of_each), "--model", str(tiny_model), "--csv"])
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()[1:]
    assert len(rows) == len(IMAGE_SUFFIXES)
    assert all(",airplane," in row for row in rows), result.stdout


def test_int8_calibration_folder_takes_the_same_formats(one_of_each):
    pytest.importorskip("onnxruntime")
    from export.quantize import calibration_from_folder

    batch = calibration_from_folder(one_of_each, n=100)
    assert batch.shape == (len(IMAGE_SUFFIXES), 32, 32, 3)
