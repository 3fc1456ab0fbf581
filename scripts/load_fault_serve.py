"""Faults and load against the server, on loopback: hostile uploads, slow and many clients,
bad framing, a stop mid-upload, a cross-site post, and the stream with 8 viewers.

    python scripts/load_fault_serve.py                         # this checkout's cifar-serve
    python scripts/load_fault_serve.py --repo ../main --save-json before.json
    python scripts/load_fault_serve.py --save-json after.json
    python scripts/load_fault_serve.py --compare before.json after.json --write docs/running.md
    python scripts/load_fault_serve.py --serve-command "{python} scripts/serve_candidates.py aiohttp" ...

Each probe starts its own server (``cifar-serve --port 0`` from ``--repo``, or
``cifar-run --camera CLIP --realtime --serve`` for the stream) in a child process, so that
one probe's leftovers (memory, a CPU still busy) never count in the next, and reads the
server's peak resident memory from /proc/PID/status (VmHWM) when the probe is done.
Everything is bounded: at most 200 sockets, 50 uploading threads, 30 bodies of 20 MB, and
30 s for the longest probe; a request that gets no answer in its time is reported as such.
Loopback only: the server is never bound elsewhere.

The probes are the ones of issue 26 (see docs/running.md for the figures and the targets).
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import click
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import load_test_serve as load  # noqa: E402  (the clip, the viewers, the camera loop's rate)

HOST = "127.0.0.1"
RESETS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, http.client.RemoteDisconnected)


# -- the server in a child process ---------------------------------------------------------------

@dataclass(frozen=True)
class Setup:
    repo: Path  # the checkout whose server is probed
    serve_command: str | None = None  # instead of its cifar-serve (a candidate server)


class Served:
    """``cifar-serve --port 0`` (or cifar-run with a camera) from ``setup.repo``, started by
    ``with``; ``port``, ``pid``, ``started_s`` (until it answered), ``memory_mb()``."""

    def __init__(self, setup: Setup, camera: Path | None = None):
        module = "runtime.cli.run" if camera else "runtime.cli.serve"
        extra = ("--camera", str(camera), "--realtime", "--headless", "--every", "60", "--serve", f"{HOST}:0") \
            if camera else ("--host", HOST, "--port", "0")
        self.command = [sys.executable, "-m", module, *extra]
        if setup.serve_command and not camera:
            self.command = shlex.split(setup.serve_command.replace("{python}", sys.executable))
        self.repo = setup.repo
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Served":
        started = time.perf_counter()
        self.proc = subprocess.Popen(self.command, cwd=self.repo, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONPATH": str(self.repo)})
        watchdog = threading.Timer(60, self.proc.kill)
        watchdog.start()
        try:
            for line in self.proc.stderr:
                if (found := re.search(r"open http://127\.0\.0\.1:(\d+)/", line)):
                    self.port = int(found[1])
                    break
            else:
                raise click.ClickException(f"the server ended before serving: {self.command}")
        finally:
            watchdog.cancel()
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # never let it block
        wait_until_answering(self.port)
        self.started_s = time.perf_counter() - started
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def memory_mb(self, key: str = "VmHWM") -> float:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return float("nan")
        return int(re.search(rf"{key}:\s+(\d+) kB", status)[1]) / 1024

    def cpu_s(self) -> float:
        """CPU seconds the server has used so far (user and system, all threads)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_until_answering(port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if request(port, "GET", "/api/info", timeout_s=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise click.ClickException(f"nothing answered on port {port} within {timeout_s:.0f} s")


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            timeout_s: float = 30) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    try:
        conn.request(method, path, body=body, headers={"Connection": "close", **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def outcome(port: int, method: str, path: str, body=None, headers=None, timeout_s: float = 30) -> str:
    """'413 in 0.05 s', 'no answer in 30 s', 'reset after 1.2 s': one request, in words."""
    started = time.perf_counter()
    try:
        status, _ = request(port, method, path, body, headers, timeout_s)
        return f"{status} in {time.perf_counter() - started:.2f} s"
    except TimeoutError:
        return f"no answer in {timeout_s:.0f} s"
    except RESETS as exc:
        return f"{type(exc).__name__} after {time.perf_counter() - started:.1f} s"


def raw_exchange(port: int, data: bytes, timeout_s: float = 10) -> str:
    """The status line the server answers ``data`` with (sent as is), or what happened instead."""
    with socket.create_connection((HOST, port), timeout=timeout_s) as sock:
        try:
            sock.sendall(data)
            answer = sock.recv(4096)
        except TimeoutError:
            return f"no answer in {timeout_s:.0f} s"
        except RESETS as exc:
            return type(exc).__name__
    return answer.split(b"\r\n", 1)[0].decode("latin-1") if answer else "closed without an answer"


# -- what the probes send -----------------------------------------------------------------------------

def big_rgba_png(side: int = 7071) -> bytes:
    """A 7071x7071 RGBA PNG (50.0 Mpx, just under the pixel limit) of one colour: about 200 KB."""
    buffer = io.BytesIO()
    Image.new("RGBA", (side, side), (200, 30, 30, 255)).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def semicolon_form(count: int = 100_000) -> tuple[bytes, dict]:
    """A multipart form whose part header has ``count`` semicolons (each with a space) inside a
    quoted parameter: about 200 KB."""
    disposition = f'form-data; name="image"; filename="{"; " * count}.png"'
    body = (f"--b\r\nContent-Disposition: {disposition}\r\nContent-Type: image/png\r\n\r\n".encode()
            + b"\x89PNG not really\r\n--b--\r\n")
    return body, {"Content-Type": "multipart/form-data; boundary=b"}


def small_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (255, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG_HEADERS = {"Content-Type": "image/png"}


# -- the probes: each returns {row name: text} ----------------------------------------------------------

def probe_idle(setup: Setup, starts: int = 3) -> dict:
    """Cold start (the median of ``starts``) and resident memory after one upload."""
    times, memory = [], []
    for _ in range(starts):
        with Served(setup) as server:
            request(server.port, "POST", "/api/classify", small_png(), PNG_HEADERS)  # warm: one upload
            time.sleep(0.5)
            times.append(server.started_s)
            memory.append(server.memory_mb("VmRSS"))
    return {f"cold start, until it answers (median of {starts})": f"{statistics.median(times):.2f} s",
            "memory at idle (after one upload)": f"{statistics.median(memory):.0f} MB"}


def probe_big_png(setup: Setup) -> dict:
    png = big_rgba_png()
    rows = {}
    for clients in (1, 3):
        with Served(setup) as server:
            before = server.memory_mb("VmRSS")
            with ThreadPoolExecutor(clients) as pool:
                answers = list(pool.map(lambda _: outcome(server.port, "POST", "/api/classify", png, PNG_HEADERS,
                                                          timeout_s=60), range(clients)))
            time.sleep(1)
            rows[f"{len(png) // 1024} KB RGBA PNG, 7071x7071, x{clients}"] = (
                f"{'; '.join(sorted(set(answers)))}; peak **{server.memory_mb():.0f} MB** "
                f"(idle {before:.0f}), {server.memory_mb('VmRSS'):.0f} MB after")
    return rows


def probe_semicolons(setup: Setup) -> dict:
    body, headers = semicolon_form()
    with Served(setup) as server:
        answer = outcome(server.port, "POST", "/api/classify", body, headers, timeout_s=10)
    return {f"multipart, 100k ';' in a quoted parameter ({len(body) // 1024} KB)": answer}


def probe_slow_sockets(setup: Setup, count: int = 200, hold_s: float = 30) -> dict:
    """``count`` sockets send a request's headers at 1 byte/s; normal requests meanwhile."""
    with Served(setup) as server:
        sockets = []
        for _ in range(count):
            sock = socket.create_connection((HOST, server.port), timeout=5)
            sock.sendall(b"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            sockets.append(sock)
        started, timings, dropped_at = time.monotonic(), [], []
        next_probe = started + 2
        while time.monotonic() - started < hold_s:
            for sock in list(sockets):
                try:
                    sock.send(b"a")
                except OSError:
                    sockets.remove(sock)
                    dropped_at.append(time.monotonic() - started)
            if time.monotonic() >= next_probe:
                timings.append(outcome(server.port, "POST", "/api/classify", small_png(), PNG_HEADERS, timeout_s=10))
                next_probe += 5
            time.sleep(max(0.0, 1 - (time.monotonic() - started) % 1))
        for sock in sockets:
            sock.close()
    dropped = (f"{len(dropped_at)} dropped by the server after {min(dropped_at):.0f}-{max(dropped_at):.0f} s"
               if dropped_at else "none dropped by the server")
    return {f"{count} sockets at 1 byte/s for {hold_s:.0f} s: a normal upload meanwhile":
            f"{', '.join(timings)} ({dropped})"}


def probe_uploaders(setup: Setup, clients: int = 50, seconds: float = 20) -> dict:
    """``clients`` threads post a 1600x1200 JPEG, a new connection each time, for ``seconds``."""
    jpeg, _ = load.photo(str(_default_model(setup.repo)))
    latencies, statuses, resets, stop = [], {}, [], time.monotonic() + seconds

    def upload():
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                status, _ = request(port, "POST", "/api/classify", jpeg, {"Content-Type": "image/jpeg"})
                statuses[status] = statuses.get(status, 0) + 1
                latencies.append(time.perf_counter() - started)
            except RESETS + (TimeoutError, ConnectionRefusedError) as exc:
                resets.append(type(exc).__name__)

    with Served(setup) as server:
        port, cpu_before = server.port, server.cpu_s()
        threads = [threading.Thread(target=upload) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(seconds + 60)
        peak, cpu = server.memory_mb(), server.cpu_s() - cpu_before
    total = sum(statuses.values()) + len(resets)
    p50, p95 = (statistics.quantiles(latencies, n=20)[i] for i in (9, 18)) if len(latencies) > 1 else (0, 0)
    answered = ", ".join(f"{n} x {s}" for s, n in sorted(statuses.items()))
    return {f"{clients} uploaders for {seconds:.0f} s ({len(jpeg) // 1024} KB JPEG, a connection each)":
            f"**{len(resets)} resets** of {total} ({', '.join(sorted(set(resets))) or 'none'}); answered "
            f"{answered}; p50 {p50:.2f} s, **p95 {p95:.2f} s**; server CPU {cpu * 1000 / max(len(latencies), 1):.0f} ms "
            f"an upload; peak {peak:.0f} MB"}


def probe_big_bodies(setup: Setup, clients: int = 30, size: int = 20 * 2**20 - 4096) -> dict:
    body = b"\x89PNG\r\n\x1a\n" + bytes(size - 8)  # a PNG signature, then nothing a decoder accepts

    with Served(setup) as server:
        with ThreadPoolExecutor(clients) as pool:
            answers = list(pool.map(lambda _: outcome(server.port, "POST", "/api/classify", body, PNG_HEADERS,
                                                      timeout_s=60), range(clients)))
        time.sleep(1)
        peak, after = server.memory_mb(), server.memory_mb("VmRSS")
    kinds = {}
    for answer in answers:
        kind = answer.split(" in ")[0].split(" after ")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    return {f"{clients} clients x {size / 2**20:.0f} MB bodies": (
        f"{', '.join(f'{n} x {k}' for k, n in sorted(kinds.items()))}; peak **{peak:.0f} MB**, {after:.0f} MB after")}


def probe_framing(setup: Setup) -> dict:
    head = "POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
    with Served(setup) as server:  # "²" in Latin-1, one byte: a digit to str.isdigit(), not to int()
        return {
            "`Content-Length: ²`": raw_exchange(server.port, (head + "Content-Length: ²\r\n\r\nab").encode("latin-1")),
            "two Content-Length headers (2 and 2)":
                raw_exchange(server.port, (head + "Content-Length: 2\r\nContent-Length: 2\r\n\r\nab").encode()),
            "two Content-Length headers (2 and 9)":
                raw_exchange(server.port, (head + "Content-Length: 2\r\nContent-Length: 9\r\n\r\nab").encode()),
            "cross-site POST (`Origin: http://evil.example`)":
                outcome(server.port, "POST", "/api/classify", small_png(),
                        {**PNG_HEADERS, "Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}),
        }


def probe_sigterm(setup: Setup) -> dict:
    """Half an upload sent, SIGTERM, then the rest: is the upload answered, does the server end?"""
    png = Image.new("RGB", (1600, 1200), (0, 0, 255))
    buffer = io.BytesIO()
    png.save(buffer, format="PNG", compress_level=0)
    body = buffer.getvalue()  # ~5.5 MB
    with Served(setup) as server:
        sock = socket.create_connection((HOST, server.port), timeout=15)
        sock.sendall(f"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:len(body) // 2])
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        time.sleep(0.3)
        try:
            sock.sendall(body[len(body) // 2:])
            answer = sock.recv(4096).split(b"\r\n", 1)[0].decode("latin-1") or "closed without an answer"
        except (OSError, TimeoutError) as exc:
            answer = type(exc).__name__
        sock.close()
        try:
            code = server.proc.wait(20)
        except subprocess.TimeoutExpired:
            code = "still running after 20 s"
        ended = time.monotonic() - stopped
    return {"SIGTERM with an upload half sent": f"{answer}; exit code {code} after {ended:.1f} s"}


def probe_stream(setup: Setup, viewers: int = 8, seconds: float = 15) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        clip = load.write_sample_clip(Path(scratch) / "clip.mp4", fps=30, seconds=seconds * 2 + 30)
        with Served(setup, camera=clip) as server:
            target = load.Target(f"http://{HOST}:{server.port}/")
            time.sleep(2)
            idle = load.loop_fps(target, seconds / 2)
            tally, stop = load.Tally(), threading.Event()
            threads = [threading.Thread(target=load.watch, args=(target, stop, tally)) for _ in range(viewers)]
            for thread in threads:
                thread.start()
            time.sleep(1)
            started = time.monotonic()
            loaded = load.loop_fps(target, seconds)
            stop.set()
            for thread in threads:
                thread.join(30)
            elapsed = time.monotonic() - started + 1
    per_viewer = [f / elapsed for f in tally.frames]
    return {f"stream, {viewers} viewers (640x480 clip at 30 fps)":
            f"camera loop {loaded:.1f} fps with them, {idle:.1f} without; each viewer "
            f"{min(per_viewer, default=0):.1f}-{max(per_viewer, default=0):.1f} fps; {len(tally.errors)} errors"}


def _default_model(repo: Path) -> Path:
    return repo / "runtime" / "assets" / "model-int8.onnx"


PROBES = {"idle": probe_idle, "png": probe_big_png, "semicolons": probe_semicolons, "slow": probe_slow_sockets,
          "uploaders": probe_uploaders, "bodies": probe_big_bodies, "framing": probe_framing,
          "sigterm": probe_sigterm, "stream": probe_stream}


# -- the table -------------------------------------------------------------------------------------------

def machine_line() -> str:
    from runtime.cpu import cpu_features

    cpu = cpu_features()
    missing = [name for name, flags in (("AVX-512", ("avx512f",)), ("VNNI", ("avx512_vnni", "avx_vnni")))
               if not set(flags) & set(cpu.flags)]
    flags = ", ".join(cpu.flags) + "".join(f"; no {name}" for name in missing)
    return (f"Measured {date.today().isoformat()} on {cpu.model}, {cpu.cores} cores ({flags}), loopback, "
            f"load average {'/'.join(f'{x:.1f}' for x in os.getloadavg())} at the end")


def table(results: list[dict], common: bool = False) -> str:
    rows = list(dict.fromkeys(row for result in results for row in result["rows"]))
    if common:
        rows = [row for row in rows if all(row in result["rows"] for result in results)]
    lines = [f"| probe | {' | '.join(r['label'] for r in results)} |",
             "| --- |" + " --- |" * len(results)]
    lines += [f"| {row} | {' | '.join(r['rows'].get(row, '-') for r in results)} |" for row in rows]
    return "\n".join(lines + [""] + [f"{r['label']}: {r['machine']}." for r in results])


@click.command()
@click.option("--repo", type=click.Path(file_okay=False, path_type=Path), default=REPO, show_default=True,
              help="The checkout whose cifar-serve is probed (e.g. main, for the figures before a change).")
@click.option("--label", default=None, help="The column's name [default: the checkout's git branch].")
@click.option("--serve-command", default=None,
              help="A server to probe instead of cifar-serve (it prints 'open http://127.0.0.1:PORT/'); "
                   "{python} stands for this interpreter.")
@click.option("--only", default=",".join(PROBES), show_default=True, help="Probes to run, comma-separated.")
@click.option("--save-json", type=click.Path(dir_okay=False, path_type=Path), help="Keep the figures as JSON.")
@click.option("--compare", type=click.Path(exists=True, dir_okay=False, path_type=Path), multiple=True,
              help="Print (and --write) a table of saved figures side by side instead of probing.")
@click.option("--common", is_flag=True, help="With --compare: only the probes every saved run has.")
@click.option("--write", type=click.Path(dir_okay=False, path_type=Path),
              help="Replace a block of this Markdown file with the table.")
@click.option("--block", default="fault-probes", show_default=True,
              help="Which block: between <!-- BLOCK:begin --> and <!-- BLOCK:end -->.")
def main(repo, label, serve_command, only, save_json, compare, common, write, block):
    """Hostile uploads, slow and many clients, bad framing, SIGTERM mid-upload, a cross-site
    post and the stream with 8 viewers, against a local server; prints a Markdown table."""
    if compare:
        results = [json.loads(path.read_text()) for path in compare]
    else:
        label = label or subprocess.run(["git", "-C", str(repo), "branch", "--show-current"],
                                        capture_output=True, text=True).stdout.strip() or str(repo)
        rows = {}
        for name in only.split(","):
            click.echo(f"probe {name} ...", err=True)
            try:
                rows.update(PROBES[name](Setup(repo.resolve(), serve_command)))
            except Exception as exc:  # one probe's failure is a row of the table, not the end of it
                rows[f"probe {name}"] = f"failed: {type(exc).__name__}: {exc}"
        results = [{"label": label, "machine": machine_line(), "rows": rows}]
        if save_json:
            save_json.write_text(json.dumps(results[0], indent=1))
    text = table(results, common)
    click.echo(text)
    if write:
        from runtime.atomic import write_marked

        write_marked(write, f"<!-- {block}:begin -->", f"<!-- {block}:end -->", text)


if __name__ == "__main__":
    main()
