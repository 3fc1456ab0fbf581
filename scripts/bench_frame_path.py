"""Frame path: speed and label agreement of runtime.image.preprocess against the path it replaced.

    python scripts/bench_frame_path.py --data ../shared/data/cifar10 [--photos DIR]... [--out runs/frame_path.json]

1. Speed, both paths interleaved in one process so that other load hits them alike: median ms
   of ``Classifier.predict(frame_bgr=)`` on 640x480 and 1920x1080 frames (centre-crop, the
   camera's default) and of ``predict(image_rgb=)`` on a 32x32 image, with the ratios; then
   the stages of each path on a 1920x1080 frame, and ``prepare(path)`` on large PNG/JPEG files.
2. Label agreement (top-1, reference path vs current) on frames made from CIFAR-10 test images
   (letterboxed: upscaled to the frame height, centred on grey; stretched: resized to the
   whole frame and classified with resize="stretch"; both with sensor-like noise, sigma 4) and
   from random crops of photos (matplotlib's sample photo by default, plus any --photos DIR;
   scikit-image's wheel holds 16 more: `pip download scikit-image --no-deps`, unzip skimage/data).
3. The 32x32 test split: every image prepared by both paths (identical arrays expected, as
   32x32 inputs are not resized) and the accuracy of each.

Prints a summary and writes every figure, with the machine and date, to --out (JSON).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Callable

import click
import numpy as np
from PIL import Image

from runtime.atomic import atomic_write
from runtime.cpu import cpu_features
from runtime.image import preprocess
from runtime.model.contract import InputContract

FRAME_SIZES = ((640, 480), (1920, 1080))  # (width, height) px
NOISE_SIGMA = 4.0  # grey levels of Gaussian noise added to every made-up frame, as a sensor would


# -- the reference: the frame and file path as it was before the "Speed" issue, copied verbatim --

def reference_resize_to_input(image_rgb: Image.Image, contract: InputContract) -> Image.Image:
    """REFERENCE (old runtime.image.preprocess.resize_to_input): centre box, full bicubic resize."""
    target_w, target_h = contract.width, contract.height
    w, h = image_rgb.size
    if contract.resize == "center-crop":
        target_aspect = target_w / target_h
        if w / h > target_aspect:
            crop_w, crop_h = round(h * target_aspect), h
        else:
            crop_w, crop_h = w, round(w / target_aspect)
        left, top = (w - crop_w) // 2, (h - crop_h) // 2
        box = (left, top, left + crop_w, top + crop_h)
    else:  # "stretch"
        box = (0, 0, w, h)
    if (w, h) == (target_w, target_h) and box == (0, 0, w, h):
        return image_rgb
    return image_rgb.resize((target_w, target_h), Image.Resampling.BICUBIC, box=box)


def reference_prepare_array(image_rgb: np.ndarray, contract: InputContract) -> np.ndarray:
    """REFERENCE (old runtime.image.preprocess.prepare_array)."""
    image = Image.fromarray(np.ascontiguousarray(image_rgb), mode="RGB")
    return np.asarray(reference_resize_to_input(image, contract), dtype=np.uint8)


def reference_prepare_frame(frame_bgr: np.ndarray, contract: InputContract) -> np.ndarray:
    """REFERENCE (old Classifier.prepare(frame_bgr=)): the BGR->RGB copy of the whole frame first."""
    return reference_prepare_array(frame_bgr[:, :, ::-1], contract)


def reference_prepare(source, contract: InputContract) -> np.ndarray:
    """REFERENCE (old runtime.image.preprocess.prepare): load_image is unchanged and shared."""
    image = preprocess.load_image(source, draft_size=(contract.width * 2, contract.height * 2))
    return np.asarray(reference_resize_to_input(image, contract), dtype=np.uint8)


# -- inputs ---------------------------------------------------------------------------------

def cifar_files(data: Path, per_class: int | None) -> list[tuple[Path, int]]:
    """(file, class index) from DATA/test/<class>/, the first ``per_class`` of each class."""
    from runtime.model.contract import CIFAR10_CLASSES

    files = []
    for index, name in enumerate(CIFAR10_CLASSES):
        paths = sorted(p for p in (data / "test" / name).iterdir()
                       if p.suffix.lower() in preprocess.IMAGE_SUFFIXES)
        files += [(p, index) for p in paths[:per_class]]
    return files


def letterboxed(small: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The image upscaled to the frame's height, centred on grey."""
    width, height = size
    frame = Image.new("RGB", size, (128, 128, 128))
    frame.paste(small.resize((height, height), Image.Resampling.BICUBIC), ((width - height) // 2, 0))
    return frame


def stretched(small: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The image resized to the whole frame, aspect ignored."""
    return small.resize(size, Image.Resampling.BICUBIC)


def photo_crops(photo: Image.Image, size: tuple[int, int], count: int, rng) -> list[Image.Image]:
    """The whole photo and ``count`` random crops of it (frame aspect, 30-100% of the largest
    such box), each resized to the frame."""
    width, height = size
    w, h = photo.size
    full_w, full_h = (w, round(w * height / width)) if w / h < width / height else (round(h * width / height), h)
    crops = [photo.resize(size, Image.Resampling.LANCZOS)]
    for _ in range(count):
        scale = rng.uniform(0.3, 1.0)
        cw, ch = max(8, round(full_w * scale)), max(8, round(full_h * scale))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crops.append(photo.crop((left, top, left + cw, top + ch)).resize(size, Image.Resampling.LANCZOS))
    return crops


class Camera:
    """Frames of a scene as a camera delivers them: BGR, each with its own sensor noise."""

    def __init__(self, size: tuple[int, int], rng: np.random.Generator, draws: int = 8):
        width, height = size
        self.rng = rng
        # Drawing 6 M normal samples per 1080p frame would dominate the run: draw a few fields once.
        self.fields = [np.rint(rng.normal(0.0, NOISE_SIGMA, (height, width, 3))).astype(np.int16)
                       for _ in range(draws)]

    def two_frames(self, scene_rgb: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        """The scene twice with different noise: two (H, W, 3) uint8 BGR frames."""
        clean_bgr = np.asarray(scene_rgb)[:, :, ::-1].astype(np.int16)
        first, second = self.rng.choice(len(self.fields), 2, replace=False)
        return tuple(np.clip(clean_bgr + self.fields[i], 0, 255).astype(np.uint8) for i in (first, second))


def photo_files(dirs: tuple[str, ...]) -> list[Path]:
    """Every JPEG/PNG in the given folders, and matplotlib's sample photo when it is installed
    (its sample_data/grace_hopper.jpg; the PNGs beside it are drawings)."""
    found = [path for d in dirs for path in sorted(Path(d).iterdir())
             if path.suffix.lower() in (".jpg", ".jpeg", ".png")]
    spec = find_spec("matplotlib")
    if spec and spec.origin:
        found += sorted((Path(spec.origin).parent / "mpl-data" / "sample_data").glob("*.jpg"))
    photos: dict[str, Path] = {}  # by file name: the same photo found twice counts once
    for path in found:
        photos.setdefault(path.name, path)
    return list(photos.values())


# -- measurements ---------------------------------------------------------------------------

def interleaved_medians(steps: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Median ms of each step, the steps taken in turn ``runs`` times."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(runs):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: round(float(np.median(ms)), 4) for name, ms in times.items()}


def frame_speed(clf, photo: Image.Image, runs: int) -> dict:
    """predict() on frames vs on a 32x32 image, reference and current interleaved."""
    contract = clf.contract
    small = np.asarray(photo.resize((32, 32), Image.Resampling.BICUBIC))  # (32, 32, 3) uint8 RGB
    steps = {"32x32 image_rgb": lambda: clf.predict(image_rgb=small)}
    for width, height in FRAME_SIZES:
        frame_bgr = np.ascontiguousarray(np.asarray(photo.resize((width, height)))[:, :, ::-1])
        steps[f"{width}x{height} current"] = lambda f=frame_bgr: clf.predict(frame_bgr=f)
        steps[f"{width}x{height} reference"] = (
            lambda f=frame_bgr: clf.top_from(clf.run([reference_prepare_frame(f, contract)])[0][0]))
    clf.predict(image_rgb=small)  # warm-up
    ms = interleaved_medians(steps, runs)
    # Again without the reference path's milliseconds of cache-cold work between the calls, as
    # in a camera loop that does little between frames.
    current = interleaved_medians({k: v for k, v in steps.items() if "reference" not in k}, runs)
    return {"median_ms": ms, "ratio_to_32x32": _ratios(ms), "runs": runs,
            "current_only": {"median_ms": current, "ratio_to_32x32": _ratios(current)}}


def _ratios(ms: dict[str, float]) -> dict[str, float]:
    base = ms["32x32 image_rgb"]
    return {name: round(v / base, 2) for name, v in ms.items() if name != "32x32 image_rgb"}


def frame_stages(photo: Image.Image, contract: InputContract, runs: int) -> dict:
    """Where a 1920x1080 frame's preprocessing time goes in each path (median ms per stage)."""
    frame_bgr = np.ascontiguousarray(np.asarray(photo.resize((1920, 1080)))[:, :, ::-1])
    rgb = np.ascontiguousarray(frame_bgr[:, :, ::-1])
    whole = Image.fromarray(rgb)
    box = preprocess.crop_box(1920, 1080, contract)
    part, part_box = preprocess._array_to_image(frame_bgr, box, contract)
    resized = np.asarray(preprocess._resize_box(part, part_box, contract))
    return interleaved_medians({
        "reference: BGR->RGB copy of the frame": lambda: np.ascontiguousarray(frame_bgr[:, :, ::-1]),
        "reference: Image.fromarray": lambda: Image.fromarray(rgb),
        "reference: bicubic resize of the box": lambda: reference_resize_to_input(whole, contract),
        f"current: read {part.size[0]}x{part.size[1]} px of the frame": (
            lambda: preprocess._array_to_image(frame_bgr, box, contract)),
        "current: box reduction + bicubic resize": lambda: preprocess._resize_box(part, part_box, contract),
        "current: BGR->RGB of the 32x32 result": lambda: np.ascontiguousarray(resized[:, :, ::-1]),
    }, runs)


def file_speed(photo: Image.Image, contract: InputContract, runs: int) -> dict:
    """prepare(path) on large files, reference and current interleaved (median ms)."""
    steps = {}
    with tempfile.TemporaryDirectory() as tmp:
        big = photo.resize((4032, 3024), Image.Resampling.BICUBIC)  # a 12 Mpx phone photo
        for name, kw in (("4032x3024.png", {"compress_level": 1}), ("4032x3024.jpg", {"quality": 90})):
            path = Path(tmp) / name
            big.save(path, **kw)
            steps[f"{name} current"] = lambda p=path: preprocess.prepare(p, contract)
            steps[f"{name} reference"] = lambda p=path: reference_prepare(p, contract)
        return interleaved_medians(steps, runs)


class Agreement:
    """Top-1 agreement of the reference and current paths over one set of frames, beside the
    reference's agreement with itself on a second noise draw of each frame (the floor: how
    often the label already changes with the sensor noise alone)."""

    def __init__(self):
        self.total = self.same = self.floor_same = self.ref_right = self.cur_right = 0
        self.labelled = False
        self.pixel_diffs: list[float] = []  # mean |current - reference| per prepared input
        self.pixel_max = 0

    def add(self, clf, frames_bgr: tuple[np.ndarray, np.ndarray], resize: str | None = None,
            label: int | None = None):
        contract = clf.contract if resize is None else dataclasses.replace(clf.contract, resize=resize)
        ref = reference_prepare_frame(frames_bgr[0], contract)
        cur = clf.prepare(frame_bgr=frames_bgr[0], resize=resize)
        ref_again = reference_prepare_frame(frames_bgr[1], contract)
        ref_top, cur_top, again_top = (int(i) for i in clf.run([ref, cur, ref_again])[0].argmax(axis=1))
        diff = np.abs(cur.astype(np.int16) - ref.astype(np.int16))
        self.pixel_diffs.append(float(diff.mean()))
        self.pixel_max = max(self.pixel_max, int(diff.max()))
        self.total += 1
        self.same += ref_top == cur_top
        self.floor_same += ref_top == again_top
        if label is not None:
            self.labelled = True
            self.ref_right += ref_top == label
            self.cur_right += cur_top == label

    def summary(self) -> dict:
        n = self.total
        out = {"frames": n, "agreement": round(self.same / n, 4), "disagreements": n - self.same,
               "noise_floor_agreement": round(self.floor_same / n, 4),
               "mean_abs_pixel_diff": round(float(np.mean(self.pixel_diffs)), 3),
               "max_abs_pixel_diff": self.pixel_max}
        if self.labelled:
            out["accuracy_reference"] = round(self.ref_right / n, 4)
            out["accuracy_current"] = round(self.cur_right / n, 4)
        return out


def label_agreement(clf, cifar: list[tuple[Path, int]], photos: list[Path], crops: int) -> dict:
    rng = np.random.default_rng(0)
    results = {}
    for size in FRAME_SIZES:
        tag = f"{size[0]}x{size[1]}"
        camera = Camera(size, rng)
        box, stretch, photo = Agreement(), Agreement(), Agreement()
        for path, label in cifar:
            small = Image.open(path).convert("RGB")
            box.add(clf, camera.two_frames(letterboxed(small, size)), label=label)
            stretch.add(clf, camera.two_frames(stretched(small, size)), resize="stretch", label=label)
        for path in photos:
            for scene in photo_crops(preprocess.load_image(path), size, crops, rng):
                photo.add(clf, camera.two_frames(scene))
        results[f"cifar letterboxed {tag}"] = box.summary()
        results[f"cifar stretched {tag}"] = stretch.summary()
        results[f"photos {tag}"] = photo.summary()
    return results


def score_test_split(clf, files: list[tuple[Path, int]], batch: int = 500) -> dict:
    """The 32x32 test images through prepare() by both paths: identical arrays, same accuracy."""
    contract = clf.contract
    identical = ref_right = cur_right = 0
    for start in range(0, len(files), batch):
        chunk = files[start:start + batch]
        cur = [preprocess.prepare(p, contract) for p, _ in chunk]
        ref = [reference_prepare(p, contract) for p, _ in chunk]
        identical += sum(np.array_equal(a, b) for a, b in zip(cur, ref))
        labels = np.array([label for _, label in chunk])
        cur_right += int((clf.run(cur)[0].argmax(1) == labels).sum())
        ref_right += int((clf.run(ref)[0].argmax(1) == labels).sum())
    n = len(files)
    return {"images": n, "identical_inputs": identical, "accuracy_reference": round(ref_right / n, 4),
            "accuracy_current": round(cur_right / n, 4)}


def machine() -> dict:
    return {"cpu": cpu_features().model, "cores": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(),
            **{pkg: metadata.version(pkg) for pkg in ("pillow", "numpy", "onnxruntime")},
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True}, help=__doc__)
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="CIFAR-10 folder tree (test/<class>/*.jpg).")
@click.option("--model", type=click.Path(exists=True, dir_okay=False), help="Model [default: bundled].")
@click.option("--threads", type=click.IntRange(min=0), default=0,
              help="Intra-op threads (0 = onnxruntime's default).")
@click.option("--photos", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Extra folder of photos for the agreement check (repeatable).")
@click.option("--per-class", default=25, type=click.IntRange(min=1),
              help="CIFAR-10 test images per class made into frames.")
@click.option("--crops", default=12, type=click.IntRange(min=0), help="Random crops per photo.")
@click.option("--runs", default=300, type=click.IntRange(min=1), help="Timed rounds (medians).")
@click.option("--test-images", type=click.IntRange(min=1), default=None,
              help="Test images per class for the 32x32 check [default: all].")
@click.option("--out", default="runs/frame_path.json", type=click.Path(dir_okay=False),
              help="JSON file for the figures.")
def main(data, model, threads, photos, per_class, crops, runs, test_images, out):
    from runtime.model import bundled
    from runtime.model.classifier import Classifier

    clf = Classifier(model or bundled.default_model(), threads=threads)
    photo_paths = photo_files(photos)
    timing_photo = preprocess.load_image(photo_paths[0]) if photo_paths else Image.new("RGB", (640, 480), "grey")
    report = {"machine": machine(), "model": clf.describe(),
              "timing_photo": photo_paths[0].name if photo_paths else "grey",
              "speed": frame_speed(clf, timing_photo, runs),
              "stages_1920x1080_ms": frame_stages(timing_photo, clf.contract, runs),
              "files_ms": file_speed(timing_photo, clf.contract, max(3, runs // 30))}
    click.echo(json.dumps(report["speed"], indent=1))
    click.echo(json.dumps(report["stages_1920x1080_ms"], indent=1))
    click.echo(json.dumps(report["files_ms"], indent=1))
    report["photos"] = [p.name for p in photo_paths]
    report["agreement"] = label_agreement(clf, cifar_files(data, per_class), photo_paths, crops)
    click.echo(json.dumps(report["agreement"], indent=1))
    report["test_split_32x32"] = score_test_split(clf, cifar_files(data, test_images))
    click.echo(json.dumps(report["test_split_32x32"], indent=1))
    with atomic_write(out) as fh:
        json.dump(report, fh, indent=1)
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
