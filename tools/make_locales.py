"""Generate locales/en/nodeDefs.json (display names, descriptions, input and output tooltips of
the DTGen nodes) from a running server's ``/object_info``, so the translation source stays in step
with the node schemas. ComfyUI merges it into ``GET /i18n``; the frontend looks entries up as
``nodeDefs.<node>.display_name | description | inputs.<input>.{name,tooltip} | outputs.<i>.{name,tooltip}``
and translators copy the file to locales/<lang>/.

    python tools/make_locales.py --url http://127.0.0.1:8188          # write the file
    python tools/make_locales.py --url http://127.0.0.1:8188 --check  # exit 1 when stale
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NODE_DEFS = ROOT / "locales" / "en" / "nodeDefs.json"
PREFIX = "DTGen"


def node_defs(object_info: dict, prefix: str = PREFIX) -> dict:
    """The nodeDefs locale entries of every node whose id starts with ``prefix``."""
    out = {}
    for name in sorted(n for n in object_info if n.startswith(prefix)):
        spec = object_info[name]
        inputs = {}
        for group in ("required", "optional"):
            declared = spec.get("input", {}).get(group, {})
            for inp in spec.get("input_order", {}).get(group, list(declared)):
                options = (declared[inp][1] if len(declared[inp]) > 1 else None) or {}
                entry = {"name": options.get("display_name", inp)}
                if options.get("tooltip"):
                    entry["tooltip"] = options["tooltip"]
                inputs[inp] = entry
        outputs = {}
        tooltips = spec.get("output_tooltips") or []
        for i, out_name in enumerate(spec.get("output_name", [])):
            entry = {"name": out_name}
            if i < len(tooltips) and tooltips[i]:
                entry["tooltip"] = tooltips[i]
            outputs[str(i)] = entry
        out[name] = {"display_name": spec.get("display_name") or name, "description": spec.get("description", ""),
                     "inputs": inputs, "outputs": outputs}
    return out


def dumps(data: dict) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8188", help="running ComfyUI with DTGen loaded")
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when the file is stale")
    args = ap.parse_args(argv)
    with urllib.request.urlopen(args.url.rstrip("/") + "/object_info", timeout=60) as r:
        text = dumps(node_defs(json.loads(r.read())))
    if not text.strip("{}\n"):
        print(f"no {PREFIX}* nodes in {args.url}/object_info: is the pack loaded?", file=sys.stderr)
        return 1
    if args.check:
        if not NODE_DEFS.exists() or NODE_DEFS.read_text() != text:
            print(f"stale: {NODE_DEFS.relative_to(ROOT)} (run tools/make_locales.py)", file=sys.stderr)
            return 1
        return 0
    NODE_DEFS.parent.mkdir(parents=True, exist_ok=True)
    NODE_DEFS.write_text(text)
    print(f"wrote {NODE_DEFS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
