"""Load on the live view: stream viewers and uploads at once, against ``cifar-run --serve``.

    python scripts/load_test_serve.py                        # 5 viewers + 1 uploader, 30 s
    python scripts/load_test_serve.py --viewers 8 --camera 0 # a real camera, on the device
    python scripts/load_test_serve.py --write docs/running.md

``cifar-run --camera CLIP --realtime --serve 127.0.0.1:0`` runs in a child process, CLIP being
the bundled sample images as a generated video played at its own frame rate (a camera's
pace). First nobody watches for ``--baseline`` seconds; then ``--viewers`` clients read
/stream.mjpg and ``--uploaders`` clients post a 1600x1200 JPEG to /api/classify one after
another, for ``--seconds``. Reported: errors (any failed request, short stream, wrong label,
or an unclean stop), the server's resident memory before, during and after, the camera loop's
frame rate under load against the baseline (target: at least 80%), the viewers' frame rate
and upload latency. Exit code 1 when there were errors or the target was missed.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import click
import numpy as np
from PIL import Image

from runtime.atomic import write_marked
from runtime.cli.common import run_cli, traceback_option
from runtime.cpu import cpu_features
from runtime.model.bundled import default_model, sample_images

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- load-test:begin -->", "<!-- load-test:end -->"
FPS_TARGET = 0.80  # the camera loop keeps at least this share of its frame rate under load
BOUNDARY = b"--cifar-edge-frame\r\n"


def write_sample_clip(path: Path, size=(640, 480), fps: int = 30, seconds: float = 60,
                      seconds_per_sample: float = 1) -> Path:
    """A video of the bundled sample images, each scaled to the frame's height in its
    middle (where cifar-run's centre square finds it), ``seconds_per_sample`` each."""
    import cv2

    width, height = size
    left = (width - height) // 2
    samples = [np.asarray(Image.open(p).convert("RGB").resize((height, height), Image.BICUBIC))[..., ::-1]
               for p in sample_images()]  # (H, H, 3) uint8 BGR
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    frame_bgr = np.full((height, width, 3), 32, np.uint8)
    for i in range(round(seconds * fps)):
        frame_bgr[:, left:left + height] = samples[int(i / (fps * seconds_per_sample)) % len(samples)]
        writer.write(frame_bgr)
    writer.release()
    return path


def start_serving(*args: str, timeout_s: float = 60) -> tuple[subprocess.Popen, str]:
    """``cifar-run ARGS --headless --serve 127.0.0.1:0`` in a child process: (the process,
    the first URL it printed, with its token if it has one)."""
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli.run", *args, "--headless", "--every", "5",
                             "--serve", "127.0.0.1:0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    watchdog = threading.Timer(timeout_s, proc.kill)  # a start that hangs ends the read below
    watchdog.start()
    try:
        for line in proc.stderr:  # ends at EOF if it dies first
            if (found := re.search(r"open (http://\S+)", line)):
                return proc, found[1]
        raise click.ClickException(f"cifar-run ended before serving (exit code {proc.wait()})")
    finally:
        watchdog.cancel()


def stop_serving(proc: subprocess.Popen) -> str | None:
    """SIGTERM, as systemd stops it; None when it stopped cleanly, else what went wrong."""
    proc.send_signal(signal.SIGTERM)
    try:
        _, stderr = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        return "did not stop within 20 s of SIGTERM"
    if proc.returncode != 130 or "Traceback" in stderr:
        return f"exit code {proc.returncode}: {stderr.strip()[-300:]}"
    return None


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (Linux: /proc), NaN where that is not readable."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    return int(re.search(r"VmRSS:\s+(\d+) kB", status)[1]) / 1024


@dataclass
class Tally:
    """What the clients saw; threads append, the main thread reads after joining them."""
    errors: list[str] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)  # per viewer
    stream_bytes: list[int] = field(default_factory=list)  # per viewer
    latencies_ms: list[float] = field(default_factory=list)


class Target:
    def __init__(self, url: str):
        match = re.match(r"http://([^/:]+):(\d+)/(?:\?token=(\S+))?", url)
        self.host, self.port, token = match[1], int(match[2]), match[3]
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=20)

    def latest(self) -> dict | None:
        conn = self.connect()
        try:
            conn.request("GET", "/api/latest", headers=self.headers)
            response = conn.getresponse()
            body = response.read()
            return json.loads(body) if response.status == 200 else None
        finally:
            conn.close()


def watch(target: Target, stop: threading.Event, tally: Tally) -> None:
    """One viewer: read the MJPEG stream until ``stop``, counting frames and bytes."""
    conn, frames, size = target.connect(), 0, 0
    try:
        conn.request("GET", "/stream.mjpg", headers=target.headers)
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"status {response.status}")
        while not stop.is_set():
            if response.readline() != BOUNDARY:
                raise RuntimeError("the stream lost its boundary")
            headers = dict(line.decode().split(":", 1) for line in iter(response.readline, b"\r\n"))
            jpeg = response.read(int(headers["Content-Length"]) + 2)[:-2]
            if len(jpeg) != int(headers["Content-Length"]) or not jpeg.startswith(b"\xff\xd8"):
                raise RuntimeError("a short or broken frame")
            frames, size = frames + 1, size + len(jpeg)
    except Exception as exc:  # counted, never raised: the other clients go on
        tally.errors.append(f"viewer: {type(exc).__name__}: {exc}")
    finally:
        conn.close()
        tally.frames.append(frames)
        tally.stream_bytes.append(size)


def upload(target: Target, stop: threading.Event, tally: Tally, jpeg: bytes, label: str) -> None:
    """One uploader: post ``jpeg`` again and again until ``stop``, timing each answer."""
    conn = target.connect()
    try:
        while not stop.is_set():
            started = time.perf_counter()
            conn.request("POST", "/api/classify", jpeg, {**target.headers, "Content-Type": "image/jpeg"})
            response = conn.getresponse()
            body = response.read()
            tally.latencies_ms.append((time.perf_counter() - started) * 1000)
            if response.status != 200 or json.loads(body)["label"] != label:
                tally.errors.append(f"upload: status {response.status}: {body[:200]!r}")
    except Exception as exc:
        tally.errors.append(f"upload: {type(exc).__name__}: {exc}")
    finally:
        conn.close()


def photo(model: str) -> tuple[bytes, str]:
    """A 1600x1200 JPEG (a sample scaled up, with sensor-like noise) and its label by ``model``."""
    from runtime.model.classifier import Classifier

    rng = np.random.default_rng(0)
    pixels = np.asarray(Image.open(sample_images()[3]).convert("RGB").resize((1600, 1200), Image.BICUBIC))
    noisy = np.clip(pixels + rng.normal(0, 6, pixels.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, format="JPEG", quality=90)
    jpeg = buffer.getvalue()
    return jpeg, Classifier(model).predict(Image.open(io.BytesIO(jpeg))).label


def loop_fps(target: Target, seconds: float, during=lambda: None) -> float:
    """The camera loop's frame rate over ``seconds``, from /api/latest's frame numbers and
    times; ``during`` is called halfway."""
    first = target.latest()
    time.sleep(seconds / 2)
    during()
    time.sleep(seconds / 2)
    last = target.latest()
    return (last["frame"] - first["frame"]) / (last["time"] - first["time"])


def run_load(target: Target, pid: int, model: str, viewers: int, uploaders: int, seconds: float,
             baseline_s: float) -> dict:
    """Nobody for ``baseline_s``, then the clients for ``seconds``: the figures."""
    deadline = time.monotonic() + 30
    while target.latest() is None:  # 503 until the first frame
        if time.monotonic() > deadline:
            raise click.ClickException("no frame classified within 30 s")
        time.sleep(0.2)
    time.sleep(2)  # warm-up: the first frames, the first stream encode
    memory = {"idle": rss_mb(pid)}
    idle_fps = loop_fps(target, baseline_s)
    tally, stop = Tally(), threading.Event()
    jpeg, label = photo(model)
    clients = [threading.Thread(target=watch, args=(target, stop, tally)) for _ in range(viewers)]
    clients += [threading.Thread(target=upload, args=(target, stop, tally, jpeg, label)) for _ in range(uploaders)]
    for client in clients:
        client.start()
    started = time.monotonic()
    time.sleep(1)  # every client connected
    memory["load start"] = rss_mb(pid)
    loaded_fps = loop_fps(target, seconds - 1, during=lambda: memory.update({"load middle": rss_mb(pid)}))
    memory["load end"] = rss_mb(pid)
    stop.set()
    for client in clients:
        client.join(30)
    elapsed = time.monotonic() - started
    time.sleep(2)
    memory["after"] = rss_mb(pid)
    return {"tally": tally, "memory": memory, "idle_fps": idle_fps, "loaded_fps": loaded_fps,
            "elapsed": elapsed, "upload_bytes": len(jpeg)}


def report(figures: dict, viewers: int, uploaders: int, seconds: float, source: str,
           load_before: tuple[float, ...]) -> tuple[str, bool]:
    """The figures as Markdown, and whether the run passed."""
    tally, memory = figures["tally"], figures["memory"]
    ratio = figures["loaded_fps"] / figures["idle_fps"]
    lat = tally.latencies_ms
    p50, p95 = (statistics.quantiles(lat, n=20)[i] for i in (9, 18)) if len(lat) >= 2 else (float("nan"),) * 2
    viewer_fps = [f / figures["elapsed"] for f in tally.frames]
    load = ", ".join(f"{'/'.join(f'{x:.2f}' for x in v)} {when}"  # 1, 5 and 15 minutes
                     for when, v in (("before", load_before), ("at the end", os.getloadavg())))
    passed = not tally.errors and ratio >= FPS_TARGET
    lines = [
        f"Measured {date.today().isoformat()} on {cpu_features().model}, {os.cpu_count()} cores "
        f"(load average {load}); {source}; {viewers} viewers and {uploaders} uploader(s) for {seconds:.0f} s.",
        "",
        "| figure | value |", "| --- | --- |",
        f"| errors | **{len(tally.errors)}** ({sum(tally.frames):,} stream frames, {len(lat):,} uploads) |",
        f"| camera loop, nobody watching | {figures['idle_fps']:.1f} fps |",
        f"| camera loop, under load | {figures['loaded_fps']:.1f} fps (**{ratio:.0%}**; target at least "
        f"{FPS_TARGET:.0%}) |",
        f"| stream, per viewer | {min(viewer_fps, default=0):.1f}-{max(viewer_fps, default=0):.1f} fps, "
        f"{sum(tally.stream_bytes) / figures['elapsed'] / 2**20:.1f} MB/s for all |",
        f"| upload latency ({figures['upload_bytes'] / 1024:.0f} kB JPEG, 1600x1200) | p50 {p50:.0f} ms, "
        f"p95 {p95:.0f} ms |",
        f"| server memory (resident) | idle {memory['idle']:.0f} MB; under load {memory['load start']:.0f} MB at "
        f"the start, {memory['load middle']:.0f} MB halfway, {memory['load end']:.0f} MB at the end; "
        f"{memory['after']:.0f} MB after |",
    ]
    return "\n".join(lines + [f"  {e}" for e in tally.errors[:5]]), passed


@click.command()
@click.option("--viewers", type=click.IntRange(0, 8), default=5, show_default=True,
              help="Clients reading /stream.mjpg (the server allows 8).")
@click.option("--uploaders", type=click.IntRange(min=0), default=1, show_default=True,
              help="Clients posting to /api/classify back to back.")
@click.option("--seconds", type=click.FloatRange(min=5), default=30, show_default=True, help="Length of the load.")
@click.option("--baseline", type=click.FloatRange(min=2), default=10, show_default=True,
              help="Seconds of the camera loop with nobody watching, first.")
@click.option("--camera", default=None, help="A camera to serve instead of the generated clip (cifar-run --camera SRC).")
@click.option("--fps", type=click.IntRange(1, 120), default=30, show_default=True, help="The clip's frame rate.")
@click.option("--model", type=click.Path(dir_okay=False), default=None, help="[default: the bundled model]")
@click.option("--write", type=click.Path(path_type=Path), default=None,
              help="Replace the load-test block of this Markdown file with the figures.")
@traceback_option
def main(viewers, uploaders, seconds, baseline, camera, fps, model, write, show_traceback):
    """Stream viewers and uploads against cifar-run --serve; errors, memory, FPS, latency."""

    def body() -> int:
        load_before = os.getloadavg()  # what else this machine is doing
        with tempfile.TemporaryDirectory() as scratch:
            if camera is None:
                clip = write_sample_clip(Path(scratch) / "clip.mp4", fps=fps, seconds=baseline + seconds + 20)
                source, args = f"a 640x480 clip at {fps} fps (--realtime)", ["--camera", str(clip), "--realtime"]
            else:
                source, args = f"camera {camera}", ["--camera", camera]
            model_path = str(model or default_model())
            proc, url = start_serving(*args, "--model", model_path)
            try:
                figures = run_load(Target(url), proc.pid, model_path, viewers, uploaders, seconds, baseline)
            finally:
                stopped = stop_serving(proc)
        if stopped:
            figures["tally"].errors.append(f"server: {stopped}")
        table, passed = report(figures, viewers, uploaders, seconds, source, load_before)
        click.echo(table)
        if write:
            write_marked(write, BEGIN, END, table)
            click.echo(f"wrote the figures into {write}", err=True)
        return 0 if passed else 1

    run_cli("load_test_serve", body, show_traceback)


if __name__ == "__main__":
    main()
