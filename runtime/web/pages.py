"""What the server sends besides JSON and the stream: the pages, their scripts and style sheet
(read once from the package, served by a fixed list of names, never by a path from the
request) and the results page a form without JavaScript gets back."""

from __future__ import annotations

import html
import re
from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
# route -> (file in STATIC_DIR, Content-Type): the only files the server ever reads.
STATIC_FILES = {
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/app.css": ("app.css", "text/css; charset=utf-8"),
    "/static/label.js": ("label.js", "text/javascript; charset=utf-8"),
}
HTML = "text/html; charset=utf-8"
_LIVE_SECTION = re.compile(r"<!-- live:begin -->.*?<!-- live:end -->\n?", re.DOTALL)


def load_static() -> dict[str, tuple[bytes, str]]:
    """Every static route's bytes and type, read now, so requests never open a file."""
    return {route: ((STATIC_DIR / name).read_bytes(), kind) for route, (name, kind) in STATIC_FILES.items()}


def index_page(live: bool) -> bytes:
    """The page: live view and upload, or upload only when there is no camera."""
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    return (page if live else _LIVE_SECTION.sub("", page)).encode("utf-8")


def label_page() -> bytes:
    """The label page (its script, label.js, fills it from /api/collected)."""
    return (STATIC_DIR / "label.html").read_bytes()


def _top_k_list(top_k: list[dict]) -> str:
    rows = "".join(f'<li><span class="name">{html.escape(t["label"])}</span>'
                   f'<progress max="1" value="{t["probability"]:.4f}"></progress>'
                   f'<span class="pct">{t["probability"]:.1%}</span></li>' for t in top_k)
    return f'<ol class="topk">{rows}</ol>'


def _result_item(result: dict) -> str:
    name = html.escape(result["name"])
    if "error" in result:
        return (f'<li class="result" data-state="error"><div class="meta"><span class="file">{name}'
                f'</span><span class="result-error">{html.escape(result["error"])}</span></div></li>')
    picture = f'<img class="thumb" src="{result["thumbnail"]}" alt="{name}">' if "thumbnail" in result else ""
    return (f'<li class="result" data-state="done">{picture}<div class="meta">'
            f'<span class="file">{name}</span>'
            f'<span class="result-label">{html.escape(result["label"])}</span> '
            f'<span class="result-confidence">{result["confidence"]:.1%}</span>'
            f'{_top_k_list(result["top_k"])}</div></li>')


def results_page(results: list[dict]) -> bytes:
    """The answer to a form sent without JavaScript: each image with its label and top-k."""
    items = "\n".join(_result_item(r) for r in results)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>cifar-edge: results</title><link rel="icon" href="data:,">'
            f'<link rel="stylesheet" href="/static/app.css"></head>'
            f'<body><main><h1>cifar-edge</h1><section class="card"><h2>Results</h2>'
            f'<ul id="results" class="results">\n{items}\n</ul>'
            f'<p><a id="back" href="/">Classify more images</a></p></section></main></body></html>\n'
            ).encode("utf-8")
