"""Entry point for ``python -m runner ...`` (from the checkout) and ``python <checkout>/runner ...``.

Registers the checkout as the package ``dtgen`` (like bench/_pkg.py) so the runner uses the pack's
plain modules (prompt sampler, dataset manifest) without ComfyUI; the checkout folder itself is
taken off sys.path, where its ``nodes`` package would shadow ComfyUI's ``nodes`` module.
"""
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_dtgen():
    if "dtgen" not in sys.modules:
        spec = importlib.util.spec_from_file_location("dtgen", os.path.join(ROOT, "__init__.py"),
                                                      submodule_search_locations=[ROOT])
        module = importlib.util.module_from_spec(spec)
        sys.modules["dtgen"] = module
        spec.loader.exec_module(module)
    return sys.modules["dtgen"]


if __name__ == "__main__":
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") not in (ROOT, os.path.join(ROOT, "runner"))]
    _load_dtgen()
    from dtgen.runner.cli import main

    sys.exit(main())
