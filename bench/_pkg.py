"""Make this checkout importable as the package ``dtgen`` for standalone bench scripts.

Usage at the top of a bench script (run as ``python bench/<script>.py`` from anywhere):
``from _pkg import load_package; load_package()`` then ``from dtgen.nodes... import ...``.
The loader is the tests' one (tests/support/pkg.py), read by path so that neither the checkout
nor tests/ goes on sys.path (the checkout's ``nodes`` would shadow ComfyUI's ``nodes`` module).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "_dtgen_pkg_loader", Path(__file__).resolve().parents[1] / "tests" / "support" / "pkg.py")
_loader = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_loader)

ROOT = _loader.ROOT
load_package = _loader.load_package
