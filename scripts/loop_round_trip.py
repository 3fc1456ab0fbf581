#!/usr/bin/env python3
"""The loop on the device, measured end to end: a class the shipped model does not know is
collected from a camera stand-in, labelled over the labelling page's HTTP API, trained on with
``cifar-train --init shipped``, exported, and picked up by a running ``cifar-run --reload``.

    .venv/bin/python scripts/loop_round_trip.py --cifar ../shared/data/cifar10
    .venv/bin/python scripts/loop_round_trip.py --cifar ../shared/data/cifar10 --replay 0 --quick

The new class is a traffic cone, drawn here (an orange cone with white bands on a noisy
two-colour background, random size, place, tilt and blur, 96x96): CIFAR-10 has nothing like it.
The known classes are CIFAR-10 test images. Every step is the user's command, run as a
subprocess with this interpreter's entry points:

1. before: the bundled default model (``model-int8.onnx``, what ``cifar-run`` uses) on held-out
   images (``--held-out-cones`` cones and ``--held-out-known`` CIFAR-10 test images a class; none
   of them ever shown to training).
2. collect: a video of other cones and other CIFAR-10 test images (``--clip-cones``,
   ``--clip-known`` a class), 128x128 frames, through
   ``cifar-run --camera CLIP --headless --json --collect DIR --collect-every 0``; checked: the
   saved frames are exactly those the JSON lines put below 0.6, each JPEG whole.
3. label: ``cifar-serve --collect DIR``, then one ``POST /api/label`` per listed frame with its
   true class (the script knows which frame was what), as a click on ``/label`` sends it.
4. train and export: ``cifar-train --data DIR/labelled --init shipped`` (its fine-tuning
   defaults), and the same with ``--replay CIFAR --replay-images N`` (N CIFAR-10 *training*
   images a class beside the labelled frames, in the run's ``data/``: what keeps the classes the
   camera rarely shows); ``cifar-export --data`` the folder each run read.
5. after: each new model on the same held-out images as step 1.
6. reload: ``cifar-run --camera HELD-OUT-CLIP --realtime --model current.onnx --reload --serve``
   plays the held-out images as a camera would (25 fps); a few seconds in, the new export
   replaces ``current.onnx`` (one ``os.replace``); later a corrupt file does. Checked: every frame
   of the clip arrives in order (none dropped), the reload count goes to 1 and stays there,
   ``/api/latest`` names the refusal, the cone frames after the reload are called cones.

Writes ``WORK/report.json`` (atomically; ``--work`` defaults to a new folder under the
system's temporary folder) and prints a markdown summary; exits 1 when a check fails. With the
CPU (model name and flags) in the report, as every figure in the docs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runtime.atomic import atomic_write  # noqa: E402
from runtime.cpu import cpu_features  # noqa: E402
from runtime.model.bundled import default_model  # noqa: E402

NEW_CLASS = "traffic cone"
FRAME = 128  # the camera stand-in's frame size
BELOW = 0.6  # cifar-run's --collect-below default
FPS = 25
RELOAD_CLIP_S = 20  # at least: the reload takes 2-3 s (two looks a second apart, then the checks)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the images ---------------------------------------------------------------------------

def draw_cone(rng: np.random.Generator, size: int = 96):
    """One traffic cone on a noisy two-colour background, as a PIL image."""
    from PIL import Image, ImageDraw, ImageFilter

    top, bottom = rng.integers(40, 200, 3), rng.integers(40, 200, 3)
    t = np.linspace(0, 1, size)[:, None, None]
    background = (top * (1 - t) + bottom * t) * np.ones((1, size, 1)) + rng.normal(0, 12, (size, size, 3))
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    h = rng.uniform(0.45, 0.85) * size
    w = h * rng.uniform(0.45, 0.7)
    cx = size / 2 + rng.uniform(-0.15, 0.15) * size
    base = size / 2 + h / 2 + rng.uniform(-0.1, 0.1) * size
    orange = (int(rng.integers(215, 256)), int(rng.integers(70, 140)), int(rng.integers(0, 50)))
    draw.polygon([(cx, base - h), (cx - w / 2, base), (cx + w / 2, base)], fill=orange)
    half_width = lambda y: (w / 2) * (y - (base - h)) / h  # noqa: E731
    for f in (0.35, 0.62)[: int(rng.integers(1, 3))]:  # one or two white bands
        y0, y1 = base - h * (1 - f) - h * 0.05, base - h * (1 - f) + h * 0.05
        draw.polygon([(cx - half_width(y0), y0), (cx + half_width(y0), y0),
                      (cx + half_width(y1), y1), (cx - half_width(y1), y1)], fill=(240, 240, 240))
    draw.rectangle([cx - w * 0.65, base - h * 0.04, cx + w * 0.65, base + h * 0.04], fill=orange)
    fill = tuple(int(v) for v in top)
    image = image.rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR, fillcolor=fill)
    return image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.2))))


def cifar_images(root: Path, split: str, start: int, per_class: int) -> list[tuple[Path, str]]:
    """``per_class`` files of each class of ``root/split``, from the ``start``-th in name order."""
    found = []
    for folder in sorted(p for p in (root / split).iterdir() if p.is_dir()):
        files = sorted(folder.iterdir())[start:start + per_class]
        if len(files) < per_class:
            raise SystemExit(f"{folder}: fewer than {start + per_class} images")
        found += [(f, folder.name) for f in files]
    return found


def make_sets(args, work: Path) -> dict:
    """The clip's images and the held-out ones, as (RGB array, true class) lists."""
    from PIL import Image

    rng = np.random.default_rng(args.seed)
    cones = [np.asarray(draw_cone(rng)) for _ in range(args.clip_cones + args.held_out_cones)]
    clip_known = cifar_images(args.cifar, "test", 0, args.clip_known)
    held_known = cifar_images(args.cifar, "test", args.clip_known, args.held_out_known)
    load = lambda items: [(np.asarray(Image.open(f).convert("RGB")), c) for f, c in items]  # noqa: E731
    clip = [(x, NEW_CLASS) for x in cones[:args.clip_cones]] + load(clip_known)
    held = [(x, NEW_CLASS) for x in cones[args.clip_cones:]] + load(held_known)
    order = np.random.default_rng([args.seed, 1])
    clip = [clip[i] for i in order.permutation(len(clip))]
    held = [held[i] for i in order.permutation(len(held))]
    Image.fromarray(np.concatenate([x for x, c in held if c == NEW_CLASS][:8], axis=1)).save(work / "cones.png")
    return {"clip": clip, "held_out": held}


def write_clip(images: list, path: Path) -> None:
    """An mp4 of the images, one frame each, at FRAME x FRAME (the camera stand-in)."""
    import cv2

    tmp = path.with_name(f".{path.name}.tmp.mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (FRAME, FRAME))
    for rgb, _ in images:
        frame = cv2.resize(rgb, (FRAME, FRAME), interpolation=cv2.INTER_LINEAR)
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    os.replace(tmp, path)


# --- the user's commands ------------------------------------------------------------------

def tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def run(cmd: list[str], what: str, timeout: float = 1800) -> tuple[float, str]:
    """Run a command to its end; its wall time and stdout. A failure stops the script."""
    log(f"{what}: {' '.join(cmd)}")
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    seconds = time.monotonic() - start
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"{what} failed (exit {done.returncode})")
    return seconds, done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def wait_for_server(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}) before answering")
        try:
            if http(port, "GET", "/api/info")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"no answer on port {port} in {timeout:.0f} s")


# --- the steps ------------------------------------------------------------------------------

def score(model: Path, images: list) -> dict:
    """Accuracy on the held-out images: the new class, the known ones, and what the cones are called."""
    from runtime.model.classifier import Classifier

    clf = Classifier(model)
    predictions = list(clf.predict_batch([x for x, _ in images]))
    truth = [c for _, c in images]
    right = [p.label == t for p, t in zip(predictions, truth)]
    cone = [r for r, t in zip(right, truth) if t == NEW_CLASS]
    known = [r for r, t in zip(right, truth) if t != NEW_CLASS]
    cone_conf = [p.confidence for p, t in zip(predictions, truth) if t == NEW_CLASS]
    known_classes = [c for c in clf.class_names if c != NEW_CLASS]
    per_class = {c: round(float(np.mean([r for r, t in zip(right, truth) if t == c])), 4)
                 for c in sorted(set(truth) - {NEW_CLASS})}
    return {"model": str(model), "classes": len(clf.class_names), "knows_new_class": NEW_CLASS in clf.class_names,
            "new_class_accuracy": round(float(np.mean(cone)), 4),
            "known_accuracy": round(float(np.mean(known)), 4), "known_per_class": per_class,
            "known_accuracy_own_classes": round(float(np.mean(
                [r for r, t in zip(right, truth) if t != NEW_CLASS and t in known_classes] or [0])), 4),
            "known_classes_in_model": len(known_classes),
            "cones_called": dict(Counter(p.label for p, t in zip(predictions, truth) if t == NEW_CLASS).most_common(5)),
            "cones_below_threshold": round(float(np.mean(np.array(cone_conf) < BELOW)), 4)}


def collect(clip: Path, truth: list[str], folder: Path) -> dict:
    """cifar-run on the clip with --collect; the JSON lines checked against what was saved."""
    seconds, out = run([tool("cifar-run"), "--camera", str(clip), "--headless", "--json", "--collect", str(folder),
                        "--collect-every", "0", "--collect-below", str(BELOW)], "collect")
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    below = {r["frame"] for r in rows if r["confidence"] < BELOW}
    index = [json.loads(line) for line in (folder / "index.jsonl").read_text().splitlines()]
    saved = {r["frame"] for r in index}
    from PIL import Image

    for record in index:
        with Image.open(folder / record["file"]) as im:
            im.load()  # a truncated JPEG raises here
    by_truth = Counter(truth[f] for f in saved if f < len(truth))
    return {"seconds": round(seconds, 1), "frames": len(rows), "clip_frames": len(truth),
            "below_threshold": len(below), "saved": len(saved), "saved_are_below": saved == below,
            "saved_new_class": by_truth[NEW_CLASS], "saved_known": sum(by_truth.values()) - by_truth[NEW_CLASS],
            "saved_by_truth": dict(by_truth.most_common())}


def label(folder: Path, truth: list[str]) -> dict:
    """cifar-serve --collect DIR, and each listed frame filed under its true class over HTTP."""
    port = free_port()
    server = subprocess.Popen([tool("cifar-serve"), "--collect", str(folder), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_server(port, server)
        filed, start = Counter(), time.monotonic()
        while True:
            status, listing = http(port, "GET", "/api/collected")
            frames = listing.get("frames") or []
            if status != 200 or not frames:
                break
            for record in frames:
                status, answer = http(port, "POST", "/api/label", {"file": record["file"],
                                                                    "label": truth[record["frame"]]})
                if status != 200:
                    raise SystemExit(f"labelling {record['file']}: {status} {answer}")
                filed[truth[record["frame"]]] += 1
        seconds = time.monotonic() - start
        labelled = http(port, "GET", "/api/collected")[1].get("labelled", {})
    finally:
        server.terminate()
        server.wait(timeout=30)
    on_disk = {d.name: len(list(d.glob("*.jpg"))) for d in (folder / "labelled").iterdir() if d.is_dir()}
    return {"filed": sum(filed.values()), "seconds": round(seconds, 2), "by_class": dict(sorted(on_disk.items())),
            "server_counts_match": labelled == on_disk}


def train_and_export(data: Path, run_dir: Path, seed: int, extra: list[str]) -> dict:
    """cifar-train --init shipped on ``data`` (``extra``: --replay ...), then cifar-export on the
    data the run read (with --replay, its own snapshot RUN/data)."""
    train_s, _ = run([tool("cifar-train"), "--data", str(data), "--init", "shipped", "--out", str(run_dir),
                      "--overwrite", "--seed", str(seed), "--quiet", *extra], f"train {run_dir.name}")
    trained_on = run_dir / "data" if "--replay" in extra else data
    export_s, _ = run([tool("cifar-export"), str(run_dir / "model.keras"), "--data", str(trained_on), "-q"],
                      f"export {run_dir.name}")
    config = json.loads((run_dir / "config.json").read_text())
    parity = json.loads((run_dir / "model.parity.json").read_text())
    return {"train_seconds": round(train_s, 1), "export_seconds": round(export_s, 1),
            "train_images": config.get("train_images"),
            "classes": config["class_names"], "untested": (config.get("split") or {}).get("untested"),
            "epochs": (config.get("config") or {}).get("epochs"),
            "parity_passed": parity.get("passed"), "onnx": str(run_dir / "model.onnx")}


class Stream:
    """cifar-run --reload's JSON lines, read on a thread as they come."""

    def __init__(self, proc: subprocess.Popen):
        self.rows: list[dict] = []
        self.arrived: list[float] = []
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc) -> None:
        for line in proc.stdout:
            if line.startswith("{"):
                self.rows.append(json.loads(line))
                self.arrived.append(time.monotonic())

    def wait(self, test, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not (self.rows and test(self.rows[-1])):
            if time.monotonic() > deadline:
                raise SystemExit(f"waited {timeout:.0f} s for {what}")
            time.sleep(0.05)


def reload_live(clip: Path, truth: list[str], new_model: Path, work: Path) -> dict:
    """A running cifar-run --reload picks up the new model, then refuses a corrupt file."""
    current = work / "current.onnx"
    shutil.copy(default_model(), current)
    port = free_port()
    proc = subprocess.Popen([tool("cifar-run"), "--camera", str(clip), "--realtime", "--headless", "--json",
                             "--model", str(current), "--reload", "--serve", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stream = Stream(proc)
    try:
        stream.wait(lambda r: r["frame"] >= 2 * FPS, 120, "two seconds of frames")
        staged = work / ".current.onnx.new"
        shutil.copy(new_model, staged)
        swapped_at = time.monotonic()
        os.replace(staged, current)
        stream.wait(lambda r: r["totals"]["reloads"] >= 1, 60, "the reload")
        reload_s = stream.arrived[-1] - swapped_at
        first_new = stream.rows[-1]["frame"]
        staged.write_bytes(b"not an onnx model" * 100)
        os.replace(staged, current)
        deadline, latest = time.monotonic() + 30, {}
        while not latest.get("reload_error") and time.monotonic() < deadline:
            time.sleep(0.25)
            latest = http(port, "GET", "/api/latest")[1]
        proc.wait(timeout=len(truth) / FPS + 120)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
    stream.thread.join(timeout=10)
    stderr = proc.stderr.read()
    return summarise_reload(stream.rows, truth, first_new, reload_s, latest, stderr, proc.returncode)


def summarise_reload(rows, truth, first_new, reload_s, latest, stderr, code) -> dict:
    frames = [r["frame"] for r in rows]
    after = [r for r in rows if r["frame"] >= first_new]
    cones_before = [r["label"] == NEW_CLASS for r in rows if r["frame"] < first_new and truth[r["frame"]] == NEW_CLASS]
    cones_after = [r["label"] == NEW_CLASS for r in after if truth[r["frame"]] == NEW_CLASS]
    return {"exit_code": code, "clip_frames": len(truth), "frames": len(rows),
            "in_order_none_dropped": frames == list(range(frames[0], frames[0] + len(truth))) if frames else False,
            "first_frame_of_new_model": first_new, "reload_seconds": round(reload_s, 2),
            "reloads_at_end": rows[-1]["totals"]["reloads"] if rows else None,
            "refused_on_api_latest": latest.get("reload_error"),
            "model_on_api_latest": latest.get("model"),
            "refusal_logged": "refused, the running model stays" in stderr,
            "cones_called_cone_before": round(float(np.mean(cones_before)), 4) if cones_before else None,
            "cones_called_cone_after": round(float(np.mean(cones_after)), 4) if cones_after else None}


# --- the whole trip -----------------------------------------------------------------------

def checks(report: dict) -> list[str]:
    """What must hold; the failures, by name."""
    c, lab, live = report["collect"], report["label"], report["reload"]
    after = report["after"]["labelled"]
    wanted = {
        "collect saved exactly the frames below the threshold": c["saved_are_below"] and c["saved"] > 0,
        "every collected frame was labelled and counted": lab["filed"] == c["saved"] and lab["server_counts_match"],
        "the new model knows the new class": after["knows_new_class"],
        "the new class is learnt (held-out accuracy over 50%)": after["new_class_accuracy"] > 0.5,
        "the clip played whole, in order, through the reload": live["in_order_none_dropped"] and live["exit_code"] == 0,
        "one reload, and the corrupt file refused": live["reloads_at_end"] == 1 and bool(live["refused_on_api_latest"])
        and live["refusal_logged"],
    }
    return [name for name, ok in wanted.items() if not ok]


def trip(args, work: Path) -> dict:
    sets = make_sets(args, work)
    clip, held = work / "clip.mp4", work / "held-out.mp4"
    write_clip(sets["clip"], clip)
    # The reload clip: the held-out images, played again until it lasts RELOAD_CLIP_S.
    live = sets["held_out"] * -(-RELOAD_CLIP_S * FPS // len(sets["held_out"]))
    write_clip(live, held)
    report = {"cpu": cpu_features().to_dict(), "new_class": NEW_CLASS, "seed": args.seed,
              "images": {"clip_new": args.clip_cones, "clip_known_per_class": args.clip_known,
                         "held_out_new": args.held_out_cones, "held_out_known_per_class": args.held_out_known}}
    report["before"] = score(default_model(), sets["held_out"])
    folder = work / "collected"
    report["collect"] = collect(clip, [c for _, c in sets["clip"]], folder)
    report["label"] = label(folder, [c for _, c in sets["clip"]])
    extra = ["--epochs", str(args.epochs)] if args.epochs else []
    runs = {"labelled": train_and_export(folder / "labelled", work / "run-labelled", args.seed, extra)}
    if args.replay:
        runs["replay"] = train_and_export(folder / "labelled", work / "run-replay", args.seed,
                                          [*extra, "--replay", str(args.cifar), "--replay-images", str(args.replay)])
    report["train"] = runs
    report["after"] = {name: score(Path(r["onnx"]), sets["held_out"]) for name, r in runs.items()}
    best = runs.get("replay", runs["labelled"])["onnx"]
    report["reload"] = reload_live(held, [c for _, c in live], Path(best), work)
    report["failed"] = checks(report)
    return report


def summary(report: dict) -> str:
    cpu = report["cpu"]
    lines = [f"CPU: {cpu.get('cpu_model')} ({cpu.get('arch')}; {', '.join(cpu.get('flags') or [])})", "",
             "| model | classes | traffic cone (held out) | CIFAR-10 classes (held out) | of them, classes it has "
             "| cones below 0.6 |", "| --- | --- | --- | --- | --- | --- |"]
    for name, s in [("shipped (before)", report["before"])] + [(f"after: {k}", v) for k, v in report["after"].items()]:
        lines.append(f"| {name} | {s['classes']} | {s['new_class_accuracy']:.1%} | {s['known_accuracy']:.1%} "
                     f"| {s['known_accuracy_own_classes']:.1%} | {s['cones_below_threshold']:.1%} |")
    c, live = report["collect"], report["reload"]
    lines += ["", f"collect: {c['saved']} of {c['frames']} frames saved ({c['saved_new_class']} cones, "
                  f"{c['saved_known']} known) in {c['seconds']} s",
              "train: " + "; ".join(f"{k} {v['train_images']} images, {v['train_seconds']} s + export "
                                     f"{v['export_seconds']} s" for k, v in report["train"].items()),
              f"reload: {live['frames']}/{live['clip_frames']} frames, in order: {live['in_order_none_dropped']}; "
              f"new model from frame {live['first_frame_of_new_model']}, {live['reload_seconds']} s after the "
              f"file changed; cones called cone {live['cones_called_cone_before']} before, "
              f"{live['cones_called_cone_after']} after; corrupt file: {live['refused_on_api_latest']}",
              "", "PASS" if not report["failed"] else "FAIL: " + "; ".join(report["failed"])]
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar", type=Path, default=REPO.parent / "shared" / "data" / "cifar10",
                   help="CIFAR-10 as image folders (train/<class>/, test/<class>/)")
    p.add_argument("--work", type=Path, help="where the files go [default: a new temporary folder]")
    p.add_argument("--clip-cones", type=int, default=300, help="cones in the collect clip")
    p.add_argument("--clip-known", type=int, default=30, help="CIFAR-10 test images a class in the collect clip")
    p.add_argument("--held-out-cones", type=int, default=200)
    p.add_argument("--held-out-known", type=int, default=50, help="CIFAR-10 test images a class held out")
    p.add_argument("--replay", type=int, default=100,
                   help="CIFAR-10 training images a class added for the second run (0: no second run)")
    p.add_argument("--epochs", type=int, help="cifar-train --epochs [default: its fine-tuning recipe's]")
    p.add_argument("--quick", action="store_true", help="small sets and 2 epochs: a check that it works, not figures")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.clip_cones, args.clip_known, args.held_out_cones, args.held_out_known = 60, 4, 60, 4
        args.epochs, args.replay = args.epochs or 2, min(args.replay, 10)
    if not (args.cifar / "test").is_dir():
        p.error(f"{args.cifar}: no CIFAR-10 image folders (expected {args.cifar}/test/<class>/)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="loop-round-trip-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    report = trip(args, work)
    report["seconds"] = round(time.monotonic() - start, 1)
    with atomic_write(work / "report.json") as fh:
        json.dump(report, fh, indent=2)
    print(summary(report))
    log(f"report: {work / 'report.json'} ({report['seconds']} s)")
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
