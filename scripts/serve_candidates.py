"""The two server stacks considered for runtime/web, as they come: the measurement that chose.

    python scripts/load_fault_serve.py --serve-command "{python} scripts/serve_candidates.py starlette"
    python scripts/load_fault_serve.py --serve-command "{python} scripts/serve_candidates.py aiohttp"

Each serves GET /api/info and POST /api/classify on a free loopback port with the bundled model
and runtime.web.uploads' decode and classify (no decode budget), with the stack's own body and
multipart reading and its defaults but for what any deployment sets (aiohttp: a 20 MB body
limit, a 10 s keep-alive): none of the server's own limits, deadlines or checks. Needs
``pip install starlette uvicorn python-multipart aiohttp`` (not an extra of the project).
docs/running.md has the figures.
"""

from __future__ import annotations

import asyncio
import socket
import sys

from runtime.model.bundled import default_model
from runtime.model.classifier import Classifier
from runtime.web.uploads import Upload, classify_uploads

CLF = Classifier(default_model())
INFO = {"model": CLF.describe()}


def bound_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(f"serving: open http://127.0.0.1:{sock.getsockname()[1]}/", file=sys.stderr, flush=True)
    return sock


def answer(files: list[tuple[str, bytes]]) -> tuple[dict, int]:
    results = classify_uploads(CLF, [Upload(name or "upload", data) for name, data in files])
    return (results[0], results[0].get("status", 200)) if results else ({"error": "no file"}, 400)


def serve_starlette() -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def classify(request):
        if request.headers.get("content-type", "").startswith("multipart/"):
            form = await request.form(max_files=32)
            files = [(f.filename, await f.read()) for f in form.getlist("image")]
        else:
            files = [("upload", await request.body())]
        body, status = await run_in_threadpool(answer, files)
        return JSONResponse(body, status_code=status)

    app = Starlette(routes=[Route("/api/info", lambda _r: JSONResponse(INFO)),
                            Route("/api/classify", classify, methods=["POST"])])
    uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning")).run(sockets=[bound_socket()])


def serve_aiohttp() -> None:
    from aiohttp import web

    async def info(_request):
        return web.json_response(INFO)

    async def classify(request):
        if request.content_type.startswith("multipart/"):
            form = await request.post()
            files = [(f.filename, f.file.read()) for f in form.getall("image", [])]
        else:
            files = [("upload", await request.read())]
        body, status = await asyncio.get_running_loop().run_in_executor(None, answer, files)
        return web.json_response(body, status=status)

    app = web.Application(client_max_size=20 * 2**20)
    app.add_routes([web.get("/api/info", info), web.post("/api/classify", classify)])
    web.run_app(app, sock=bound_socket(), keepalive_timeout=10, access_log=None, print=None)


if __name__ == "__main__":
    {"starlette": serve_starlette, "aiohttp": serve_aiohttp}[sys.argv[1]]()
