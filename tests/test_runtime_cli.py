"""cifar-run on images: input modes, output formats, annotated copies, grid, bad files,
the bundled model and samples, and the no-TensorFlow guarantee."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from runtime_models import solid

from runtime.cli.run import main

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "keras", "tf2onnx", "onnx", "cv2")


def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


@pytest.fixture
def images(tmp_path) -> Path:
    """red.png, green.jpg at the top, nested/blue.bmp and nested/deeper/yellow.png below."""
    root = tmp_path / "imgs"
    (root / "nested" / "deeper").mkdir(parents=True)
    Image.fromarray(solid((255, 0, 0))).save(root / "red.png")
    Image.fromarray(solid((0, 255, 0))).save(root / "green.jpg", quality=95)
    Image.fromarray(solid((0, 0, 255))).save(root / "nested" / "blue.bmp")
    Image.fromarray(solid((255, 255, 0))).save(root / "nested" / "deeper" / "yellow.png")
    (root / "nested" / "readme.txt").write_text("not an image, and not picked up")
    return root


def json_rows(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_table_output(tiny_model, images):
    r = run(images / "red.png", images / "green.jpg", "--model", tiny_model)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["file", "label", "conf"]
    assert "airplane" in lines[1] and "automobile" in lines[2] and "%" in lines[1]
    assert "on cpu" in r.stderr  # says which provider runs


def test_directory_is_recursive_and_json(tiny_model, images):
    r = run(images, "--model", tiny_model, "--json", "--top-k", "2")
    assert r.exit_code == 0, r.output
    rows = json_rows(r.stdout)
    labels = {Path(row["file"]).name: row["label"] for row in rows}
    assert labels == {"red.png": "airplane", "green.jpg": "automobile", "blue.bmp": "bird",
                      "yellow.png": "cat"}
    assert all(len(row["top_k"]) == 2 and row["error"] is None for row in rows)


def test_glob_and_csv(tiny_model, images):
    r = run(str(images / "**" / "*.png"), "--model", tiny_model, "--csv")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert sorted(Path(row["file"]).name for row in rows) == ["red.png", "yellow.png"]
    assert {row["label"] for row in rows} == {"airplane", "cat"}


def test_paths_on_stdin(tiny_model, images):
    r = run("-", "--model", tiny_model, "--json", input=f"{images / 'red.png'}\n\n{images / 'green.jpg'}\n")
    assert [row["label"] for row in json_rows(r.stdout)] == ["airplane", "automobile"]


def test_glob_or_directory_without_images_is_an_error(tiny_model, tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no images" in run(tmp_path / "empty", "--model", tiny_model).stderr
    r = run(str(tmp_path / "*.jpg"), "--model", tiny_model)
    assert r.exit_code == 1 and "matches no files" in r.stderr


def test_bad_files_are_reported_and_others_run(tiny_model, images, tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("plain text")
    raw = (images / "green.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(raw[: len(raw) // 3])
    bomb = tmp_path / "bomb.png"
    Image.new("1", (8100, 8100)).save(bomb)
    bad = [tmp_path / "missing.jpg", tmp_path / "empty.jpg", tmp_path / "text.jpg",
           tmp_path / "cut.jpg", bomb]
    r = run(images / "red.png", *bad, images / "green.jpg", "--model", tiny_model, "--json")
    assert r.exit_code == 3, r.output  # ExitCode.PARTIAL
    rows = json_rows(r.stdout)
    assert len(rows) == 7
    assert rows[0]["label"] == "airplane" and rows[-1]["label"] == "automobile"
    errors = [row["error"] for row in rows[1:-1]]
    for fragment, err in zip(["no such file", "empty", "not an image", "truncated",
                              "decompression bomb"], errors):
        assert fragment in err
    assert "5 of 7 input(s) failed" in r.stderr
    table = run(tmp_path / "missing.jpg", images / "red.png", "--model", tiny_model)
    assert table.exit_code == 3 and "ERROR" in table.stdout and "airplane" in table.stdout


def test_save_annotated_copies_and_grid(tiny_model, images, tmp_path):
    out, grid = tmp_path / "out", tmp_path / "sheet" / "grid.png"
    r = run(images, tmp_path / "missing.jpg", "--model", tiny_model, "--save", out, "--grid", grid)
    assert r.exit_code == 3, r.output
    saved = sorted(p.name for p in out.iterdir())
    assert saved == ["blue.bmp", "green.jpg", "red.png", "yellow.png"]
    copy = Image.open(out / "red.png")
    assert min(copy.size) >= 256  # a 40x30 input is upscaled so the label is readable
    assert copy.getpixel((5, 2)) == (0, 0, 0)  # the black label band
    sheet = Image.open(grid)
    assert sheet.format == "PNG" and sheet.size[0] >= 128 * 3
    assert not list(tmp_path.glob("**/.*"))  # no temp files left behind


def _corner(path: Path) -> tuple:
    """The bottom-right pixel of an annotated copy: the input's own colour, below the label band."""
    with Image.open(path) as image:
        return image.convert("RGB").getpixel((image.width - 1, image.height - 1))


def test_save_keeps_flat_names_and_says_which_copy_is_which(tiny_model, images, tmp_path):
    out = tmp_path / "out"
    r = run(images / "red.png", images / "nested" / "blue.bmp", tmp_path / "missing.jpg", "--model",
            tiny_model, "--save", out, "--csv")
    assert r.exit_code == 3, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [row["saved"] for row in rows] == [str(out / "red.png"), str(out / "blue.bmp"), ""]
    assert sorted(p.name for p in out.iterdir()) == ["blue.bmp", "red.png"]  # distinct names stay flat
    assert _corner(out / "blue.bmp") == (0, 0, 255)
    assert f"wrote 2 annotated copies to {out}\n" in r.stderr  # no folders kept: nothing collides
    plain = run(images / "red.png", "--model", tiny_model, "--csv")  # without --save: no saved column
    assert next(csv.reader(io.StringIO(plain.stdout))) == ["file", "label", "confidence", "top_k", "error"]
    assert "saved" not in json_rows(run(images / "red.png", "--model", tiny_model, "--json").stdout)[0]


def test_save_name_collisions_keep_the_inputs_folders(tiny_model, images, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(solid((0, 0, 255))).save(other / "red.png")
    out = tmp_path / "o"
    r = run(images / "red.png", other / "red.png", images / "green.jpg", "--model", tiny_model, "--save", out,
            "--json")
    assert r.exit_code == 0, r.output
    saved = {row["file"]: row["saved"] for row in json_rows(r.stdout)}
    assert saved == {str(images / "red.png"): str(out / "imgs" / "red.png"),
                     str(other / "red.png"): str(out / "other" / "red.png"),
                     str(images / "green.jpg"): str(out / "imgs" / "green.jpg")}
    assert _corner(out / "imgs" / "red.png") == (255, 0, 0) and _corner(out / "other" / "red.png") == (0, 0, 255)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.*")) == [
        "imgs/green.jpg", "imgs/red.png", "other/red.png"]
    assert f"wrote 3 annotated copies to {out}, in their folders below {tmp_path} (their file names collide)" \
        in r.stderr
    assert not list(tmp_path.glob("**/.*"))  # no temp files left behind


def test_save_a_name_still_taken_gets_a_suffix_and_a_note(tiny_model, images, tmp_path):
    Image.fromarray(solid((0, 0, 255))).save(images / "red.gif")  # written as PNG: red.png is taken
    out = tmp_path / "o"
    r = run(images / "red.png", images / "red.gif", images / "red.png", "--model", tiny_model, "--save", out)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["red-1.png", "red.png"]  # red.png given twice: one copy
    assert _corner(out / "red.png") == (255, 0, 0) and _corner(out / "red-1.png") == (0, 0, 255)
    assert f"{images / 'red.gif'}: annotated copy saved as {out / 'red-1.png'} (its name was taken)" in r.stderr
    assert f"wrote 2 annotated copies to {out}, in their folders below {images} " in r.stderr


def test_saved_copies_never_leave_the_folder(tmp_path, monkeypatch):
    from runtime.cli.run import plan_saved_copies

    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    sources = ["../a/x.png", "/srv/b/x.png", "../../x.jpg", "c/X.PNG", "c/x.png", "./c/x.png", "d/y.tiff"]
    plan = plan_saved_copies(sources)
    below = {source: str(target) for source, target in plan.targets.items()}
    assert all(not Path(t).is_absolute() and ".." not in Path(t).parts for t in below.values())
    root = Path(os.path.abspath("/")).parts[0]  # the inputs share only the root: their whole path is kept
    assert plan.mirrored_below == Path(root)
    here = Path(os.path.abspath(".")).relative_to(root)
    assert below["/srv/b/x.png"] == str(Path("srv/b/x.png"))
    assert below["../a/x.png"] == str(here.parent / "a" / "x.png")
    assert below["c/X.PNG"] == str(here / "c" / "X.png")
    assert below["c/x.png"] == below["./c/x.png"] == str(here / "c" / "x-1.png")  # case: taken on macOS
    assert below["d/y.tiff"] == str(here / "d" / "y.png")
    assert plan.renamed == {Path(below["c/x.png"])}
    assert plan_saved_copies(["a/x.png", "b/y.png"]).mirrored_below is None  # distinct names: flat
    assert plan_saved_copies(["a/x.png", "b/y.png"]).targets == {"a/x.png": Path("x.png"), "b/y.png": Path("y.png")}


def test_bundled_model_and_samples(bundled_assets):
    r = run("--json")
    assert r.exit_code == 0, r.output
    assert "sample images bundled" in r.stderr and "model-int8.onnx" in r.stderr
    rows = json_rows(r.stdout)
    assert sorted(Path(row["file"]).stem for row in rows) == sorted(
        ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"])


def test_no_bundled_model_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_EDGE_ASSETS", str(tmp_path))
    r = run()
    assert r.exit_code == 1 and "no model is bundled" in r.stderr and "--model" in r.stderr


def test_model_errors_are_one_line(no_metadata_model, images):
    r = run(images, "--model", no_metadata_model)
    assert r.exit_code == 1
    assert r.stderr.count("\n") == 1 and "cifar-export" in r.stderr


def test_provider_error(tiny_model, images):
    r = run(images, "--model", tiny_model, "--provider", "tensorrt")
    assert r.exit_code == 1
    assert "'tensorrt' is not available" in r.stderr and "available: " in r.stderr


def test_min_confidence_uncertain(tiny_model, images):
    r = run(images / "red.png", "--model", tiny_model, "--json", "--min-confidence", "0.99")
    row = json_rows(r.stdout)[0]
    assert row["label"] == "uncertain" and row["top_label"] == "airplane"


def test_help_mentions_every_mode():
    r = run("--help")
    for word in ("--camera", "--save", "--grid", "--json", "--csv", "--provider", "--threads"):
        assert word in r.output


def test_no_heavy_imports(tiny_model, images):
    """Importing runtime and running cifar-run on images loads no TF/Keras/tf2onnx/onnx/cv2;
    importing runtime alone does not even load onnxruntime, nor the notebook's ipywidgets/IPython."""
    code = (
        "import sys, runtime\n"
        "assert 'onnxruntime' not in sys.modules, 'import runtime loaded onnxruntime'\n"
        "widgets = [m for m in ('ipywidgets', 'IPython', 'runtime.notebook') if m in sys.modules]\n"
        "assert not widgets, f'import runtime loaded {widgets}'\n"
        "from runtime.cli.run import main\n"
        f"sys.argv = ['cifar-run', {str(images)!r}, '--model', {str(tiny_model)!r}, '--json']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        f"loaded = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "assert not loaded, f'loaded: {loaded}'\n"
        "assert 'aiohttp' not in sys.modules, 'the web server got loaded'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "airplane" in [row["label"] for row in json_rows(proc.stdout)]


@pytest.mark.parametrize("prog, args", [("cifar-serve", []), ("cifar-run", ["--camera", "clip.mp4", "--serve", "0"])])
def test_without_the_serve_extra_one_line_says_what_to_install(prog, args):
    """The web server is the serve extra: without aiohttp, cifar-serve and cifar-run --serve
    stop in one line, before a model or a camera is opened."""
    module = "serve" if prog == "cifar-serve" else "run"
    code = ("import sys\nsys.modules['aiohttp'] = None  # as if it were not installed\n"
            f"from runtime.cli.{module} import main\nsys.argv = {[prog, *args]!r}\nmain()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [f"{prog}: error: the web server needs aiohttp, which the base install "
                                        "leaves out: pip install 'cifar-edge[serve]'"]


def test_console_script_runs(tiny_model, images):
    exe = Path(sys.executable).parent / "cifar-run"
    if not exe.exists():
        pytest.skip("cifar-run console script not installed in this environment")
    proc = subprocess.run([str(exe), str(images / "red.png"), "--model", str(tiny_model)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "airplane" in proc.stdout


def test_help_keeps_each_example_on_its_own_lines():
    lines = [line.strip() for line in run("--help").output.splitlines()]
    images = lines.index("Images:  cifar-run photos/ cat.jpg 'shots/*.png' [--json|--csv]")
    assert lines[images + 1] == "[--save DIR] [--grid FILE.png]"
    assert lines[images + 2] == "Camera:  cifar-run --camera 0 [--headless] [--save out.mp4] [--max-frames N]"


def test_uncertain_is_one_word_for_table_caption_and_frames():
    import numpy as np

    from runtime.image.draw import caption
    from runtime.model.classifier import UNCERTAIN, Prediction

    pred = Prediction((("cat", 0.4), ("dog", 0.3)), np.zeros(10, np.float32))
    assert (pred.shown_label(0.5), pred.shown_label(0.4)) == (UNCERTAIN, "cat")
    assert caption(pred, min_confidence=0.5) == f"{UNCERTAIN} (cat 40%)"
    assert UNCERTAIN == "uncertain"  # the word users see and scripts match on (docs/running.md)


def test_errors_before_classifying_are_one_line(tiny_model, tmp_path):
    (tmp_path / "empty").mkdir()
    r = run(tmp_path / "empty", "--model", tiny_model)
    assert r.exit_code == 1 and r.stderr.splitlines() == [
        f"cifar-run: error: {tmp_path / 'empty'}: directory contains no images "
        "(.jpg, .jpeg, .png, .bmp, .gif, .tif, .tiff, .webp, .ppm, .pgm, .pbm)"]
    r = run("-", "--model", tiny_model, input="")
    assert r.exit_code == 1 and r.stderr == "cifar-run: error: no input paths (stdin was empty)\n"
