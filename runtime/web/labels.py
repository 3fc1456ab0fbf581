"""Labelling in the browser: the frames ``--collect DIR`` kept, filed under ``DIR/labelled/<class>/``.

``Labeller`` answers the label page's API over a ``Collector``: the frames left to label (the
index's records, skipped ones last), each JPEG by its name (only a name the index lists, only
a file directly in DIR), and one action per request: file a frame under a class (the model's,
or a new one), skip it, or delete it. A labelled frame leaves DIR and the index in one
``Collector.take``, so it is never listed, counted against ``--collect-max`` or pruned again;
``DIR/labelled/labels.jsonl`` keeps one line per labelled frame (its record and the label).

On disk, what ``cifar-train --data DIR/labelled`` reads::

    DIR/labelled/<class>/20261202T152400.123Z-000001.jpg
    DIR/labelled/labels.jsonl
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.image.collect import append_line
from runtime.web.uploads import RequestError

if TYPE_CHECKING:
    from runtime.image.collect import Collector

LABELLED = "labelled"
LOG = "labels.jsonl"
MAX_CLASS_CHARS = 64
# A class is a folder name: a letter or digit first, then letters, digits, _ - and inner spaces.
# No separators, no dots (so no "..", no hidden folder), no names the trainer reads as a split.
_CLASS = re.compile(rf"[^\W_](?:[\w -]{{0,{MAX_CLASS_CHARS - 2}}}[\w-])?")
_RESERVED = {"train", "test"}  # DIR/labelled/train/ would make cifar-train read a split layout
_FILE = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,127}\.jpg")
ACTIONS = ("label", "skip", "delete")
LISTED = 60  # frames per listing: the page shows these; a Pi need not render 500 thumbnails at once


def check_class(name) -> str:
    """``name`` if it is a safe class folder name; else a 400 saying what is allowed."""
    if isinstance(name, str) and _CLASS.fullmatch(name) and name.lower() not in _RESERVED:
        return name
    raise RequestError(HTTPStatus.BAD_REQUEST, f"{str(name)[:80]!r} is not a class name: 1 to "
                       f"{MAX_CLASS_CHARS} letters, digits, _ - or inner spaces, starting with a letter "
                       "or digit, not 'train' or 'test'")


class Labeller:
    """The label page's answers over ``collector``'s folder."""

    def __init__(self, collector: "Collector"):
        self.collector = collector
        self.folder = Path(collector.folder).resolve()
        self.labelled = self.folder / LABELLED

    def listing(self) -> dict:
        """The first LISTED frames left to label, oldest first and skipped ones after; how many
        are left in all; how many are filed under each class so far."""
        records = [r for r in self.collector.pending() if (self.folder / r["file"]).is_file()]
        records.sort(key=lambda r: bool(r.get("skipped")))  # stable: oldest first within each
        return {"frames": records[:LISTED], "total": len(records), "labelled": self.counts()}

    def counts(self) -> dict[str, int]:
        """{class: frames in DIR/labelled/<class>/}."""
        if not self.labelled.is_dir():
            return {}
        return {d.name: sum(1 for f in d.glob("*.jpg")) for d in sorted(self.labelled.iterdir())
                if d.is_dir() and not d.name.startswith(".")}

    def jpeg(self, name: str) -> Path:
        """The path of a JPEG the index lists, directly in DIR; else a 404. The name comes from
        the request: it is checked for shape, for being listed, and resolved inside DIR."""
        missing = RequestError(HTTPStatus.NOT_FOUND, "no such collected frame")
        if not _FILE.fullmatch(name) or name not in {r["file"] for r in self.collector.pending()}:
            raise missing
        path = (self.folder / name).resolve()
        if path.parent != self.folder or not path.is_file():
            raise missing
        return path

    def apply(self, request: dict) -> dict:
        """One POST /api/label: {"file", "label"} or {"file", "action": "skip"|"delete"}."""
        if not isinstance(request, dict) or not isinstance(request.get("file"), str):
            raise RequestError(HTTPStatus.BAD_REQUEST, 'send {"file": NAME, "label": CLASS} or '
                               '{"file": NAME, "action": "skip"|"delete"}')
        action = request.get("action", "label")
        if action not in ACTIONS:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"{str(action)[:40]!r} is not an action "
                               f"({', '.join(ACTIONS)})")
        name = self.jpeg(request["file"]).name
        try:
            if action == "skip":
                self.collector.mark(name, skipped=True)
                return {"file": name, "action": "skip"}
            if action == "delete":
                self.collector.take(name, lambda path: path.unlink())
                return {"file": name, "action": "delete"}
            label = check_class(request.get("label"))
            record = self.collector.take(name, lambda path: self._file_under(path, label))
        except (KeyError, FileNotFoundError):  # taken by another request, or pruned, a moment ago
            raise RequestError(HTTPStatus.NOT_FOUND, "no such collected frame") from None
        self._log({**record, "label": label, "labelled": _now()})
        return {"file": name, "action": "label", "label": label, "path": f"{LABELLED}/{label}/{name}"}

    def _file_under(self, path: Path, label: str) -> None:
        """Move the JPEG into DIR/labelled/<label>/: one rename on the same filesystem, so the
        file is there whole or not at all."""
        folder = self.labelled / label
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(path, folder / path.name)

    def _log(self, record: dict) -> None:
        append_line(self.labelled / LOG, (json.dumps(record) + "\n").encode("utf-8"))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
