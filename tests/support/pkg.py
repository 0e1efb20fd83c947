"""Import this checkout as the package ``dtgen`` whatever its folder is called.

A clone may be named ``dtgen``, ``ComfyUI-DTGen`` or ``main``; ComfyUI itself imports it by path.
Tests import ``dtgen.nodes...`` (``from support.pkg import ROOT`` for paths); subprocesses run ``BOOTSTRAP`` first to do the same.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NAME = "dtgen"


def load_package(root: Path = ROOT, name: str = NAME):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, root / "__init__.py", submodule_search_locations=[str(root)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


BOOTSTRAP = (
    "import importlib.util, sys\n"
    f"spec = importlib.util.spec_from_file_location({NAME!r}, {str(ROOT / '__init__.py')!r}, "
    f"submodule_search_locations=[{str(ROOT)!r}])\n"
    "m = importlib.util.module_from_spec(spec); sys.modules[spec.name] = m; spec.loader.exec_module(m)\n"
)
