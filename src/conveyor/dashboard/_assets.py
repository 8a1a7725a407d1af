"""The dashboard's static files and templates, read once from the package.

A request names an asset by a key of :data:`ASSETS`, never by a path: the files
are read into memory when the app is made, so no part of a URL ever reaches the
filesystem. ``uPlot.iife.min.js`` is uPlot's built file from the npm registry
(MIT, ``uPlot.LICENSE``), vendored so that users need no build step.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

__all__ = ["ASSETS", "Asset", "load_assets", "templates"]

ASSETS = {
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "uPlot.LICENSE": "text/plain; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


class Asset:
    def __init__(self, body: bytes, media_type: str) -> None:
        self.body = body
        self.media_type = media_type
        self.etag = hashlib.sha256(body).hexdigest()[:16]


def load_assets() -> dict[str, Asset]:
    folder = resources.files("conveyor.dashboard") / "static"
    return {name: Asset((folder / name).read_bytes(), kind) for name, kind in ASSETS.items()}


def templates() -> Any:
    """The Jinja2 environment: templates from the package, every value escaped."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("conveyor.dashboard", "templates"),
        autoescape=True,  # every template: a stage named <script> renders as text
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
