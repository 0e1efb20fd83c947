"""Time to load the pack inside ComfyUI, the way ComfyUI does it (target < 100 ms).

Runs a fresh Python with ComfyUI's own modules already imported (as in a real server), then
times: exec of the pack's __init__.py from its folder path + comfy_entrypoint() +
get_node_list() + every node's schema. Repeats in several fresh processes and prints the median.

    python bench/bench_import_time.py [--comfyui ~/comfy/ComfyUI] [--runs 5]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import sys, time, asyncio, importlib.util, json
sys.path.insert(0, {comfyui!r})
from comfy.cli_args import args; args.cpu = True
import nodes, folder_paths, comfy.model_management, comfy_api.latest  # loaded before custom nodes
t0 = time.perf_counter()
spec = importlib.util.spec_from_file_location("dtgen_pack", {init!r}, submodule_search_locations=[{root!r}])
m = importlib.util.module_from_spec(spec); sys.modules["dtgen_pack"] = m; spec.loader.exec_module(m)
t1 = time.perf_counter()
ext = asyncio.run(m.comfy_entrypoint())
node_list = asyncio.run(ext.get_node_list())
for n in node_list: n.GET_SCHEMA()
t2 = time.perf_counter()
print(json.dumps({{"import_ms": (t1 - t0) * 1e3, "entry_and_schemas_ms": (t2 - t1) * 1e3,
                   "total_ms": (t2 - t0) * 1e3, "open_clip_loaded": "open_clip" in sys.modules}}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH") or str(Path.home() / "comfy" / "ComfyUI"))
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    code = PROBE.format(comfyui=args.comfyui, init=str(ROOT / "__init__.py"), root=str(ROOT))
    results = []
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, "-c", code], cwd=args.comfyui, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr[-2000:], file=sys.stderr)
            return 1
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for key in ("import_ms", "entry_and_schemas_ms", "total_ms"):
        values = [r[key] for r in results]
        print(f"{key:>22}: median {statistics.median(values):7.1f} ms  (min {min(values):.1f}, max {max(values):.1f}, "
              f"{args.runs} fresh processes)")
    total = statistics.median(r["total_ms"] for r in results)
    print(f"{'target':>22}: < 100 ms -> {'OK' if total < 100 else 'OVER'} ({total / 100:.2f} of budget)")
    print(f"{'open_clip imported':>22}: {any(r['open_clip_loaded'] for r in results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
