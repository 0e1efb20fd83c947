"""Make this checkout importable as the package ``dtgen`` for standalone bench scripts.

Usage at the top of a bench script (run as ``python bench/<script>.py`` from anywhere):
``from _pkg import load_package; load_package()`` then ``from dtgen.nodes... import ...``.
Only the checkout is registered as ``dtgen``; its folder never goes on sys.path (its ``nodes``
package would shadow ComfyUI's ``nodes`` module).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = "dtgen"


def load_package(root: Path = ROOT, name: str = NAME):
    """Import the checkout at ``root`` as package ``name`` (once) and return the module."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, root / "__init__.py", submodule_search_locations=[str(root)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
