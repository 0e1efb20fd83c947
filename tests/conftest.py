"""Root conftest: makes this checkout importable as ``dtgen`` (see tests/support/pkg.py).

Only ``tests/`` goes on sys.path (as the ``support`` package), never the checkout itself, whose
``nodes`` package would shadow ComfyUI's ``nodes`` module.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.pkg import load_package  # noqa: E402

load_package()
