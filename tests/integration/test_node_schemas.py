"""Every DTGen node is registered in a real ComfyUI, documented, and cheap to import."""
from __future__ import annotations

import json
import subprocess
import sys

from support.comfy_server import PACK_NAME
from support.pkg import ROOT

EXPECTED = {"DTGenPromptSampler", "DTGenClipLoader", "DTGenClipFilter", "DTGenDatasetWriter", "DTGenDataset",
            "DTGenDatasetFinalize", "DTGenFewShotImages", "DTGenCopyPaste",
            "DTGenMaskSampler", "DTGenMaskIoUFilter", "DTGenEvaluate", "DTGenTrainCheckpointLoader"}


def test_object_info_lists_every_node_with_tooltips(client, comfy_server):
    info = client.get_json("/object_info")
    ours = {name: spec for name, spec in info.items() if name.startswith("DTGen")}
    assert EXPECTED <= set(ours), f"missing: {EXPECTED - set(ours)}\n{comfy_server.log()[-3000:]}"
    problems = []
    for name, spec in ours.items():
        if not spec.get("description"):
            problems.append(f"{name}: no description")
        if not spec.get("category", "").startswith("DTGen/"):
            problems.append(f"{name}: category {spec.get('category')!r} not under DTGen/")
        for group in ("required", "optional"):
            for inp, (_, opts) in spec["input"].get(group, {}).items():
                if not (opts or {}).get("tooltip"):
                    problems.append(f"{name}.{inp}: input without tooltip")
        for out, tip in zip(spec["output_name"], spec["output_tooltips"]):
            if not tip:
                problems.append(f"{name} output {out}: no tooltip")
    assert not problems, "\n".join(problems)


def test_pack_loaded_without_import_errors(comfy_server):
    link = str(comfy_server.base_dir / "custom_nodes" / PACK_NAME)   # where the launcher links the checkout
    ours = [line for line in comfy_server.log().splitlines() if link in line]
    assert ours, "the pack folder was never looked at"
    bad = [line for line in ours if "IMPORT FAILED" in line or "Cannot import" in line or "Error while" in line]
    assert not bad, bad


def test_import_inside_comfyui_does_no_heavy_work(comfyui_path):
    """Load the pack the way ComfyUI does (module from the folder path, then the entry point and
    every schema) and check that nothing heavy came with it. The time is printed by
    bench/bench_import_time.py; here only what must not happen is asserted."""
    code = f"""
import sys, asyncio, importlib.util, json
sys.path.insert(0, {str(comfyui_path)!r})
from comfy.cli_args import args; args.cpu = True
import nodes, folder_paths  # ComfyUI's own modules, loaded before any custom node
before = set(sys.modules)
spec = importlib.util.spec_from_file_location("dtgen_pack", {str(ROOT / '__init__.py')!r},
                                              submodule_search_locations=[{str(ROOT)!r}])
m = importlib.util.module_from_spec(spec); sys.modules["dtgen_pack"] = m; spec.loader.exec_module(m)
ext = asyncio.run(m.comfy_entrypoint())
node_list = asyncio.run(ext.get_node_list())
for n in node_list: n.GET_SCHEMA()
new = sorted(set(sys.modules) - before)
print(json.dumps({{"nodes": [n.GET_SCHEMA().node_id for n in node_list], "new": new}}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=comfyui_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(data["nodes"]) == EXPECTED
    heavy = [m for m in data["new"] if m.split(".")[0] in {"open_clip", "timm", "safetensors", "yaml", "transformers"}]
    assert not heavy, f"heavy modules imported at load: {heavy}"


def test_outputs_are_named_in_the_editor(client):
    """Sockets show their names, not bare types like STRING/IMAGE."""
    info = client.get_json("/object_info")
    for name in EXPECTED:
        spec = info[name]
        assert spec["output_name"] != spec["output"] or not spec["output"], (name, spec["output_name"])
        assert all(n and n == n.lower() for n in spec["output_name"]), (name, spec["output_name"])
