"""cifar-run: classify images, directories, globs or a live camera with a cifar-edge model.

\b
Images:  cifar-run photos/ cat.jpg 'shots/*.png' [--json|--csv]
                   [--save DIR] [--grid FILE.png]
Camera:  cifar-run --camera 0 [--headless] [--save out.mp4] [--max-frames N]
Browser: cifar-run --camera 0 --serve 8000   (cifar-serve: the upload page alone)
Collect: cifar-run --camera 0 --collect DIR  (frames under 60% confidence, for labelling)

With no --model the model bundled in the package is used; with no SOURCES the sample images
bundled in the package are classified.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from runtime.camera.live import CameraOptions, run_camera
from runtime.cli.common import auth_options, load_classifier, run_cli, traceback_option, trust_options
from runtime.errors import ExitCode, OptionError, SourceError
from runtime.image.collect import CollectOptions, parse_duration, parse_size
from runtime.model import bundled
from runtime.model.providers import PROVIDER_HELP

PROG = "cifar-run"
SAVE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _note(message: str) -> None:
    click.echo(f"{PROG}: {message}", err=True)


@dataclass(frozen=True)
class SavePlan:
    """Where ``--save DIR`` writes each input's annotated copy, as a path below DIR."""

    targets: dict[str, Path]  # input as given -> its copy below DIR (an input given twice: one copy)
    mirrored_below: Path | None  # the inputs' common folder, whose layout DIR repeats; None: flat names
    renamed: frozenset[Path]  # copies whose path was still taken, given a -1, -2 suffix


def _saved_name(source: str) -> tuple[str, str]:
    """The (stem, suffix) of a copy: x.JPG -> x, .jpg; a suffix it is not written in (.gif) -> .png."""
    suffix = Path(source).suffix.lower()
    return Path(source).stem, suffix if suffix in SAVE_SUFFIXES else ".png"


def plan_saved_copies(sources: list[str]) -> SavePlan:
    """Flat names (DIR/x.png) when the inputs' names are distinct; otherwise every input's folder
    below the inputs' common folder is repeated under DIR (a/x.png, b/x.png), so that each copy
    says which input it is. Inputs are made absolute first: ``..`` and inputs from other roots
    never lead outside DIR. A path still taken (x.gif beside x.png; names compared ignoring case,
    as macOS and Windows do) gets -1, -2."""
    files = list(dict.fromkeys(os.path.abspath(s) for s in sources))  # the same file once
    names = [_saved_name(f) for f in files]
    folders = [Path(f).parent.parts for f in files]  # ("/", "home", "me", "a")
    collide = len({(stem + suffix).casefold() for stem, suffix in names}) < len(files)
    common = len(os.path.commonprefix(folders)) if collide else None
    planned, renamed, used = {}, set(), set()
    for file, (stem, suffix), parts in zip(files, names, folders):
        # A root or drive ("/", "C:\\") left below the common folder becomes a plain folder name.
        below = [part.strip("/\\").replace(":", "") or "root" for part in parts[common:]] if collide else []
        target, n = Path(*below, stem + suffix), 0
        while str(target).casefold() in used:
            n += 1
            target = Path(*below, f"{stem}-{n}{suffix}")
        used.add(str(target).casefold())
        planned[file] = target
        if n:
            renamed.add(target)
    return SavePlan({s: planned[os.path.abspath(s)] for s in sources},
                    Path(*folders[0][:common]) if collide else None, frozenset(renamed))


def _parse_size(value: str | None) -> tuple[int, int] | None:
    """"640x480" -> (640, 480); click reports a malformed value as a usage error."""
    if value is None:
        return None
    width, sep, height = value.lower().partition("x")
    if not (sep and width.isdigit() and height.isdigit() and int(width) >= 2 and int(height) >= 2):
        raise click.BadParameter(f"{value!r} is not WIDTHxHEIGHT, e.g. 640x480")
    return int(width), int(height)


def _parsed(parse, value: str | None):
    """An option's value through ``parse``; its OptionError as click's usage error."""
    if value is None:
        return None
    try:
        return parse(value)
    except OptionError as exc:
        raise click.BadParameter(str(exc)) from None


def _parse_address(value: str | None) -> tuple[str, int] | None:
    """"8000" -> ("127.0.0.1", 8000), "0.0.0.0:8000" -> ("0.0.0.0", 8000): a usage error otherwise."""
    if value is None:
        return None
    from runtime.web import parse_address

    return _parsed(parse_address, value)


def _format_top_k(prediction) -> str:
    return ", ".join(f"{name} {p:.3f}" for name, p in prediction.top_k)


def _echo_result(result, label: str | None, fmt: str, writer, width: int, saved: Path | None,
                 saving: bool) -> None:
    """One input's line: a table row, a JSON object or a CSV row; with ``saving`` (--save) the
    JSON and CSV name the annotated copy (``saved``: null or empty when none was written)."""
    pred = result.prediction
    if fmt == "json":
        row = {"file": result.source, **(pred.to_dict() if pred else {}), "error": result.error}
        if pred is not None:
            row["label"] = label
            row["top_label"] = pred.label
        if saving:
            row["saved"] = None if saved is None else str(saved)
        click.echo(json.dumps(row))
    elif writer:
        writer.writerow([result.source, label or "", f"{pred.confidence:.6f}" if pred else "",
                         _format_top_k(pred) if pred else "", result.error or ""]
                        + ([saved or ""] if saving else []))
        sys.stdout.flush()
    elif pred is not None:
        click.echo(f"{result.source:<{width}}  {label:<12} {pred.confidence:>6.1%}  {_format_top_k(pred)}")
    else:
        click.echo(f"{result.source:<{width}}  {'ERROR':<12} {'':>6}  {result.error}")


def classify_images(clf, paths: list[str], *, fmt: str, save_dir: Path | None, grid: Path | None,
                    min_confidence: float, batch_size: int, collect=None) -> int:
    """Classify ``paths``, print one line each, write copies/grid; returns the exit code.

    ``save_dir``: an annotated copy of each input that decodes, named by ``plan_saved_copies``;
    a final note says where, and each JSON/CSV line which copy is its own. ``collect``
    (``CollectOptions``): the inputs the model is unsure of, saved by a ``Collector``."""
    from runtime.atomic import atomic_path
    from runtime.image.draw import TILE, annotate_image, contact_sheet

    collector = None if collect is None else _collector(clf, collect)

    plan = plan_saved_copies(paths) if save_dir is not None else None
    width = min(60, max([len("file")] + [len(p) for p in paths]))
    writer = csv.writer(sys.stdout, lineterminator="\n") if fmt == "csv" else None
    if fmt == "table":
        click.echo(f"{'file':<{width}}  {'label':<12} {'conf':>6}  top-k")
    elif writer:
        writer.writerow(["file", "label", "confidence", "top_k", "error"] + (["saved"] if plan else []))
    written: set[Path] = set()
    sheet_items = []
    failed = 0
    keep = save_dir is not None or grid is not None or collector is not None
    for result in clf.predict_files(paths, batch_size=batch_size, keep_images=keep):
        pred = result.prediction
        if not result.ok:
            failed += 1
        elif collector is not None:
            collector.offer(pred, image_rgb=result.image_rgb, source=result.source)
        label = pred.shown_label(min_confidence) if pred is not None else None
        image = result.image_rgb
        copy = None
        if plan is not None and image is not None:
            copy = save_dir / plan.targets[result.source]
            if copy not in written:  # one file given twice: one copy
                with atomic_path(copy) as tmp:
                    annotate_image(image, pred, min_confidence=min_confidence).save(
                        tmp, format="JPEG" if copy.suffix in (".jpg", ".jpeg") else None)
                written.add(copy)
                if plan.targets[result.source] in plan.renamed:
                    _note(f"{result.source}: annotated copy saved as {copy} (its name was taken)")
        _echo_result(result, label, fmt, writer, width, copy, saving=plan is not None)
        if grid is not None:
            if image is not None and max(image.size) > TILE:
                image = image.copy()
                image.thumbnail((TILE, TILE))  # keep memory small for large runs
            sheet_items.append((Path(result.source).name, image, pred))
    if grid is not None:
        with atomic_path(grid) as tmp:
            contact_sheet(sheet_items, min_confidence=min_confidence).save(tmp, format="PNG")
        _note(f"wrote contact sheet {grid}")
    if plan is not None:
        _note_copies(plan, written, save_dir)
    if collector is not None:
        _note(collector.summary())
    if failed:
        _note(f"{failed} of {len(paths)} input(s) failed")
        return ExitCode.PARTIAL
    return ExitCode.OK


def _collector(clf, collect):
    """The Collector of ``--collect`` (``CollectOptions``), holding its folder for this process."""
    from runtime.image.collect import Collector, model_file_id

    return Collector(collect, model=clf.model_path.name, exclusive=True, model_sha256=model_file_id(clf.model_path))


def _note_copies(plan: SavePlan, written: set[Path], save_dir: Path) -> None:
    layout = ("" if plan.mirrored_below is None else
              f", in their folders below {plan.mirrored_below} (their file names collide)")
    _note(f"wrote {len(written)} annotated cop{'y' if len(written) == 1 else 'ies'} to {save_dir}{layout}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, help=__doc__)
@click.argument("sources", nargs=-1)
@click.option("--model", "-m", type=click.Path(dir_okay=False),
              help="ONNX model exported by cifar-export [default: the bundled model].")
@click.option("--provider", default="auto", show_default=True,
              help=PROVIDER_HELP)
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="onnxruntime intra-op threads (0 = onnxruntime's default).")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True,
              help="How many labels to report per input.")
@click.option("--min-confidence", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="Below this top probability the label is shown as 'uncertain'.")
@click.option("--json", "fmt", flag_value="json", help="One JSON object per line.")
@click.option("--csv", "fmt", flag_value="csv", help="CSV with a header row.")
@click.option("--save", type=click.Path(), help="Images: a directory for annotated copies, flat "
              "(DIR/x.png), or in the inputs' folders when names collide (DIR/a/x.png, DIR/b/x.png); "
              "--json/--csv name each row's copy. Camera: a video file (.mp4/.avi) for the annotated stream.")
@click.option("--grid", type=click.Path(dir_okay=False), help="Write a contact sheet (PNG) of all inputs.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images per onnxruntime call.")
@click.option("--camera", metavar="SRC", help="Classify live video: camera index (0), device "
              "path, video file, rtsp:// or http:// URL, GStreamer pipeline, a Raspberry Pi "
              "camera (picam, picam:N) or a Jetson CSI camera (csi://N).")
@click.option("--camera-size", metavar="WxH", callback=lambda _c, _p, v: _parse_size(v),
              help="picam / csi://N: frame size [default: 640x480 for picam, 1280x720 for csi].")
@click.option("--camera-fps", type=click.IntRange(min=1), metavar="FPS",
              help="picam / csi://N: frame rate [default: 30].")
@click.option("--full-frame", is_flag=True, help="Camera: classify the whole frame, not the centre square.")
@click.option("--smooth", type=click.IntRange(min=1), default=1, show_default=True,
              help="Camera: average probabilities over this many recent frames.")
@click.option("--headless", is_flag=True, help="Camera: no window; print one line per frame "
              "(automatic when there is no display).")
@click.option("--every", type=click.FloatRange(min=0.0), default=0.0, metavar="SECONDS",
              help="Camera, headless: print at most one line every SECONDS (the journal of a "
                   "service need not get 30 lines a second); 0 prints every frame.")
@click.option("--max-frames", type=click.IntRange(min=1), help="Camera: stop after N frames.")
@click.option("--duration", type=click.FloatRange(min=0.0, min_open=True),
              help="Camera: stop after S seconds.")
@click.option("--reconnect", type=click.IntRange(min=0), default=3, show_default=True,
              help="Camera: reopen a live source that stops delivering frames this many times.")
@click.option("--realtime", is_flag=True,
              help="Camera: play a video file at its own frame rate, as a camera would deliver it.")
@click.option("--serve", metavar="[HOST:]PORT", callback=lambda _c, _p, v: _parse_address(v),
              help="Camera: also serve the live view, the prediction and an upload in a browser "
                   "on PORT (127.0.0.1 unless HOST is given; any other HOST needs a token).")
@click.option("--collect", metavar="DIR", type=click.Path(file_okay=False),
              help="Save the frames or images whose top confidence is below --collect-below to DIR "
                   "(full JPEG, and a JSON line in DIR/index.jsonl), for labelling and retraining.")
@click.option("--collect-below", type=click.FloatRange(0.0, 1.0), default=0.6, show_default=True,
              help="--collect: save inputs whose top probability is below this.")
@click.option("--collect-every", metavar="DURATION", callback=lambda _c, _p, v: _parsed(parse_duration, v),
              help="--collect: save at most one input every DURATION (2s, 500ms, 1m; 0: no limit) "
                   "[default: 2s with --camera, 0 for images].")
@click.option("--collect-max", default="500MB", show_default=True, metavar="SIZE",
              callback=lambda _c, _p, v: _parsed(parse_size, v),
              help="--collect: keep DIR under SIZE (500MB, 2GiB); the oldest frames go first.")
@click.option("--reload", "reload_model", is_flag=True,
              help="Camera: watch the --model file; a new file that passes the model's checks replaces "
                   "the running model between frames, one that fails is refused (the log and "
                   "/api/latest say why) and the running model stays.")
@auth_options
@trust_options
@traceback_option
def main(sources, model, provider, threads, top_k, min_confidence, fmt, save, grid, batch_size,
         camera, camera_size, camera_fps, full_frame, smooth, headless, every, max_frames, duration,
         reconnect, realtime, serve, collect, collect_below, collect_every, collect_max, reload_model, token, no_auth,
         no_verify, allow_failed, show_traceback):
    fmt = fmt or "table"
    if collect is None and (collect_every is not None or collect_below != 0.6 or collect_max != 500 * 1000 ** 2):
        raise click.UsageError("--collect-below, --collect-every and --collect-max go with --collect DIR")
    collecting = None if collect is None else CollectOptions(
        Path(collect), below=collect_below, max_bytes=collect_max,
        every_s=collect_every if collect_every is not None else (2.0 if camera is not None else 0.0))

    def body() -> int:
        if serve is None and (token is not None or no_auth):
            raise click.UsageError("--token and --no-auth go with --serve")
        if camera is not None:
            if sources or grid:
                raise click.UsageError("--camera cannot be combined with image SOURCES or --grid")
            serve_config = None
            if serve is not None:
                from runtime.web import ServeConfig, WebServer  # noqa: F401  (without the serve extra: one line, now)

                serve_config = ServeConfig(host=serve[0], port=serve[1], token=token, auth=not no_auth)
            if reload_model and model is None:
                raise click.UsageError("--reload watches the --model FILE: give one")
            clf = load_classifier(model, provider, threads, top_k, no_verify, allow_failed, _note)
            reload = (lambda: load_classifier(model, provider, threads, top_k, no_verify, allow_failed, _note)
                      ) if reload_model else None
            return run_camera(clf, camera, log=_note, options=CameraOptions(
                save=Path(save) if save else None, headless=headless, fmt=fmt, full_frame=full_frame,
                smooth=smooth, min_confidence=min_confidence, reconnect=reconnect, max_frames=max_frames,
                duration=duration, realtime=realtime, size=camera_size, fps=camera_fps, every=every,
                serve=serve_config, collect=collecting, reload=reload))
        if reload_model:
            raise click.UsageError("--reload goes with --camera SRC")
        if serve is not None:
            raise click.UsageError("--serve needs --camera SRC; to classify uploaded images "
                                   "without a camera, run cifar-serve")
        from runtime.image.inputs import expand_sources

        save_dir = Path(save) if save else None
        if save_dir is not None and save_dir.exists() and not save_dir.is_dir():
            raise SourceError(f"--save {save_dir}: exists and is not a directory")
        paths = list(expand_sources(sources)) if sources else [str(p) for p in bundled.sample_images()]
        if not paths:
            raise SourceError("no input paths (stdin was empty)")
        clf = load_classifier(model, provider, threads, top_k, no_verify, allow_failed, _note)
        _note(clf.describe())  # after every check, so that an error stays one line
        if not sources:
            _note(f"no SOURCES given: classifying the {len(paths)} sample images bundled with "
                  "the package")
        return classify_images(clf, paths, fmt=fmt, save_dir=save_dir,
                               grid=Path(grid) if grid else None, min_confidence=min_confidence,
                               batch_size=batch_size, collect=collecting)

    run_cli(PROG, body, show_traceback)


if __name__ == "__main__":
    main()
