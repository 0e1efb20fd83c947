"""What the browser tests need besides ComfyUI, and where it was found (used by conftest and tests)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from support.comfy_server import comfyui_candidates, find_comfyui


def chromium_path() -> str | None:
    path = os.environ.get("CHROMIUM") or "/usr/bin/chromium"
    return path if os.access(path, os.X_OK) else None


def playwright_path() -> Path | None:
    cache = Path(os.environ.get("DTGEN_CI_CACHE") or Path.home() / ".cache" / "dtgen-ci")
    modules = Path(os.environ.get("DTGEN_NODE_MODULES") or cache / "node" / "node_modules")
    path = modules / "playwright-core"
    return path if (path / "package.json").is_file() else None


def missing() -> list[str]:
    gaps = []
    if find_comfyui() is None:
        gaps.append("ComfyUI (" + ", ".join(map(str, comfyui_candidates())) + ")")
    if chromium_path() is None:
        gaps.append("chromium (apt-get install chromium chromium-driver)")
    if shutil.which("node") is None:
        gaps.append("node")
    if playwright_path() is None:
        gaps.append("npm playwright-core (in ~/.cache/dtgen-ci/node or $DTGEN_NODE_MODULES)")
    return gaps


def skip_reason() -> str | None:
    gaps = missing()
    return "browser tests SKIPPED: missing " + "; ".join(gaps) if gaps else None
