"""The hostile-input corpus: what an attacker or a careless user can send (prompt packs, dataset
names, labels, weights files, queue-client arguments), each refused with an error that names the
problem, quickly, and with nothing written where it should not be.

One parametrised test; ``pytest tests/unit/test_hostile_inputs.py -v`` prints the outcome per case.
Every case runs under an alarm: a hang (the billion-laughs class of defect) fails instead of blocking.
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from dtgen.nodes.store.paths import DatasetPathError, safe_dataset_dir, safe_label
from dtgen.nodes.prompting.pack import MAX_PACK_BYTES, PromptPackError, load_pack, parse_pack
from support.pkg import ROOT

MAX_MESSAGE = 1200         # characters: a refusal repeats at most a short part of what it was sent
HANG_GUARD_S = 20          # far above any real refusal (they take milliseconds); a hang fails the case
EXAMPLE = ROOT / "example_workflows" / "api" / "dtgen_sd35_lora.json"

HEAD = "version: 1\nname: t\n"
ONE_CLASS = "classes:\n  - label: a\n    templates: ['{s0}']\n"


def _laughs(levels: int, indent: str = "") -> str:
    lines = [f"{indent}l0: &l0 [" + ", ".join(['"lol"'] * 9) + "]"]
    lines += [f"{indent}l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def _doubling(levels: int) -> str:
    slots = "".join(f"  s{i}: ['{{s{i + 1}}} {{s{i + 1}}}']\n" for i in range(levels))
    return HEAD + "slots:\n" + slots + f"  s{levels}: [x]\n" + ONE_CLASS


def _chain(levels: int) -> str:
    slots = "".join(f"  s{i}: ['{{s{i + 1}}}']\n" for i in range(levels))
    return HEAD + "slots:\n" + slots + f"  s{levels}: [x]\n" + ONE_CLASS


def _label(label: str) -> str:
    return HEAD + f"classes:\n  - label: {json.dumps(label)}\n    templates: ['x']\n"


PACKS = {
    # name: (YAML text, what the message must say)
    "billion_laughs_9_levels": (_laughs(9) + "version: 1\n", "MAX_YAML_NODES"),
    "billion_laughs_in_slots": (HEAD + "slots:\n" + _laughs(9, "  ") + "classes: []\n", "MAX_YAML_NODES"),
    "expansion_bomb_60_levels": (_doubling(60), "MAX_SLOT_DEPTH"),
    "expansion_doubling_20_levels": (_doubling(20), "MAX_PROMPT_CHARS"),
    "expansion_steps": (HEAD + "slots:\n  w: [x]\n  s: ['" + "{w}" * 3000 + "']\nclasses:\n  - label: a\n"
                        "    templates: ['{s}']\n", "MAX_EXPANSION_STEPS"),
    "slot_chain_3000": (_chain(3000), "MAX_SLOT_DEPTH"),
    "nesting_100k_deep": ("a: " + "[" * 100_000 + "]" * 100_000 + "\n", "MAX_YAML_DEPTH"),
    "alias_heavy": ("a: &a x\nb: [" + ", ".join(["*a"] * 1500) + "]\n", "MAX_YAML_ALIASES"),
    "long_string_repeated_by_aliases": ("s: &s '" + "x" * 100_000 + "'\nt: [" + ", ".join(["*s"] * 60) + "]\n",
                                        "MAX_YAML_CHARS"),
    "oversized_pack": (HEAD + "description: '" + "x" * (MAX_PACK_BYTES + 10) + "'\n", "MAX_PACK_BYTES"),
    "python_object_tag": (HEAD + "x: !!python/object/apply:os.system ['touch /tmp/dtgen-pwned']\n",
                          "could not determine a constructor"),
    "python_name_tag": (HEAD + "x: !!python/name:os.system\n", "could not determine a constructor"),
    "duplicate_key": (HEAD + "name: u\nclasses: []\n", "'name' appears twice"),
    "reference_cycle": (HEAD + "slots:\n  a: ['{b}']\n  b: ['{a}']\nclasses:\n  - label: x\n"
                        "    templates: ['{a}']\n", "reference cycle"),
    "unknown_slot": (HEAD + "classes:\n  - label: x\n    templates: ['{nope}']\n", "unknown slot {nope}"),
    "label_traversal": (_label("../escape"), "labels are folder names"),
    "label_metadata_jsonl": (_label("metadata.jsonl"), "file name the dataset layout uses"),
    "label_manifest_other_case": (_label("Manifest.JSONL"), "file name the dataset layout uses"),
    "label_windows_device": (_label("CON"), "reserved device name"),
    "label_slash": (_label("a/b"), "labels are folder names"),
    "label_too_long": (_label("x" * 101), "longer than 100"),
    "not_a_mapping": ("- 1\n- 2\n", "must be a mapping"),
    "unclosed_flow": ("a: [1, 2\n", "malformed YAML"),
    "flow_list_of_60k_items": ("[" + "1," * 60_000 + "1]\n", "must be a mapping, got list [1, 1,"),
}

DATASET_NAMES = {
    "parent_traversal": ("../escape", "'.' and '..' are not allowed"),
    "nested_traversal": ("a/../../b", "'.' and '..' are not allowed"),
    "absolute": ("/etc", "must be relative"),
    "windows_drive": ("C:\\x", "must not contain"),
    "hidden": (".ssh", "must not start with '.'"),
    "device_name": ("nul", "reserved Windows device name"),
    "fullwidth_dots": ("\uff0e\uff0e/x", "'.' and '..' are not allowed"),
    "nul_byte": ("a\x00b", "only ASCII letters"),
    "part_too_long": ("x" * 101, "longer than 100"),
    "name_too_long_50x100": ("/".join(["x" * 100] * 50), "the limit is 200"),
    "empty_segment": ("a//b", "empty name"),
}

LABELS = {
    "traversal": ("..", "must start with a letter or digit"),
    "slash": ("a/b", "labels are folder names"),
    "metadata_jsonl": ("metadata.jsonl", "file name the dataset layout uses"),
    "dataset_json_upper": ("DATASET.JSON", "file name the dataset layout uses"),
    "device": ("LPT1", "reserved device name on Windows"),
    "empty": ("   ", "label is empty"),
    "non_ascii": ("caf\u00e9", "labels are folder names"),
    "lookalike_cyrillic_a": ("pl\u0430te", "contains '\u0430' (U+0430 CYRILLIC SMALL LETTER A)"),
    "too_long": ("x" * 101, "longer than 100"),
}


class _Payload:
    """Unpickling this runs a shell command: what a malicious .pt file does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# weights file: what the message must say
WEIGHTS = {"pickle_payload.pt": "it was not unpickled", "pickle_payload_protocol2.pt": "refusing to unpickle", "html_error_page.safetensors": "corrupt",
           "empty.bin": "empty", "header_claims_1TB.safetensors": "corrupt",
           "folder.safetensors": "folder.safetensors", "missing.safetensors": "missing.safetensors"}


def _make_weights(tmp: Path, name: str) -> Path:
    path = tmp / name
    if name == "pickle_payload.pt":
        path.write_bytes(pickle.dumps({"state_dict": _Payload(tmp / "pwned")}))
    elif name == "pickle_payload_protocol2.pt":
        path.write_bytes(pickle.dumps({"state_dict": _Payload(tmp / "pwned")}, protocol=2))
    elif name == "html_error_page.safetensors":
        path.write_bytes(b"<html><body>rate limited</body></html>")
    elif name == "empty.bin":
        path.write_bytes(b"")
    elif name == "header_claims_1TB.safetensors":
        path.write_bytes(struct.pack("<Q", 10 ** 12) + b"{}")
    elif name == "folder.safetensors":
        path.mkdir()
    return path


RUNNER_ARGS = {
    "quota_zero": (["--quota", "0"], "a quota must be >= 1"),
    "retries_negative": (["--quota", "1", "--retries", "-1"], "--retries: must be >= 0"),
    "pack_dir_missing": (["--quota", "1", "--pack-dir", "/nonexistent"], "'/nonexistent' is not an existing folder"),
    "set_typo": (["--quota", "1", "--set", "KSampler.stepz=4"], "did you mean 'steps'"),
    "set_not_finite": (["--quota", "1", "--set", "KSampler.cfg=NaN"], "cfg"),
    "pending_zero": (["--quota", "1", "--pending", "0"], "--pending: must be >= 1"),
    "dead_after_nan": (["--quota", "1", "--dead-after", "nan"], "--dead-after"),
    "inline_billion_laughs": (["--quota", "1", "--set", "DTGenPromptSampler.inline_yaml="
                               + json.dumps(_laughs(9) + "version: 1\n")], "MAX_YAML_NODES"),
    "inline_expansion_bomb": (["--quota", "1", "--set", "DTGenPromptSampler.inline_yaml="
                               + json.dumps(_doubling(60))], "MAX_SLOT_DEPTH"),
}


@dataclass
class Case:
    attempt: Callable[[Path], object]     # raises, or returns what the check below inspects
    expect: str                           # text the refusal must contain


def _expect_raise(fn, error, expect):
    def attempt(tmp):
        with pytest.raises(error) as info:
            fn(tmp)
        return str(info.value)
    return Case(attempt, expect)


def _runner(args):
    def attempt(tmp):
        import contextlib
        import io

        from dtgen.runner.cli import main

        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(["queue", str(EXAMPLE), *args])
            except SystemExit as exc:
                code = exc.code
        assert code not in (0, None), f"exit code {code}"
        text = err.getvalue()
        assert text.startswith("error: ") and "Traceback" not in text, text
        return text
    return attempt


def _load_weights(name):
    def attempt(tmp):
        from dtgen.nodes.scoring.clip_model import load_clip
        from dtgen.nodes.scoring.errors import ClipFilterError

        path = _make_weights(tmp, name)
        with pytest.raises(ClipFilterError) as info:
            load_clip("ViT-B-32", str(path))
        assert not (tmp / "pwned").exists(), "the pickle payload ran"
        return str(info.value)
    return attempt


def _pack_file(tmp: Path, data: bytes):
    path = tmp / "pack.yaml"
    path.write_bytes(data)
    return load_pack(path)


CASES: dict[str, Case] = {}
CASES.update({f"pack/{k}": _expect_raise(lambda tmp, t=t: parse_pack(t), PromptPackError, e)
              for k, (t, e) in PACKS.items()})
CASES["pack/file_not_utf8"] = _expect_raise(lambda tmp: _pack_file(tmp, b"version: 1\nname: \xff\xfe\n"),
                                            PromptPackError, "not UTF-8")
CASES["pack/file_oversized"] = _expect_raise(lambda tmp: _pack_file(tmp, b"#" * (MAX_PACK_BYTES + 1)),
                                             PromptPackError, "MAX_PACK_BYTES")
CASES.update({f"dataset_name/{k}": _expect_raise(lambda tmp, n=n: safe_dataset_dir(tmp, n), DatasetPathError, e)
              for k, (n, e) in DATASET_NAMES.items()})
CASES.update({f"label/{k}": _expect_raise(lambda tmp, n=n: safe_label(n), DatasetPathError, e)
              for k, (n, e) in LABELS.items()})
CASES.update({f"weights/{n}": Case(_load_weights(n), e) for n, e in WEIGHTS.items()})
CASES.update({f"runner/{k}": Case(_runner(a), e) for k, (a, e) in RUNNER_ARGS.items()})


# ---- files that are not regular files: a FIFO named like an image, a caption, a pack, a manifest
# (opening a FIFO blocks until a writer appears: this froze ComfyUI's event loop at queue time)
def _photo(path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (80, 80), (200, 120, 40)).save(path)
    return path


def _fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def _fewshot_caption_fifo(tmp):
    from dtgen.nodes.fewshot.imageset import scan

    _photo(tmp / "set" / "plate" / "a.jpg")
    _fifo(tmp / "set" / "plate" / "a.txt")
    return scan(tmp / "set")


def _fewshot_image_fifo(tmp):
    from dtgen.nodes.fewshot.pixels import load_image

    return load_image(_fifo(tmp / "photo.jpg"), 64)


def _cutout_fifo(tmp):
    from dtgen.nodes.synthesis.cutouts import load_cutouts

    _fifo(tmp / "cut" / "plate" / "photo.jpg")
    _photo(tmp / "cut" / "plate" / "photo_mask.png")
    return load_cutouts(tmp / "cut")


def _background_fifo(tmp):
    from dtgen.nodes.synthesis.backgrounds import load_backgrounds

    _photo(tmp / "bg" / "a.png")
    _fifo(tmp / "bg" / "b.jpg")
    return load_backgrounds(tmp / "bg")


def _real_mask_fifo(tmp):
    from dtgen.nodes.synthesis.defect_masks import load_real_masks

    _fifo(tmp / "masks" / "m.png")
    return load_real_masks(tmp / "masks")


def _pack_fifo(tmp):
    return load_pack(_fifo(tmp / "pack.yaml"))


def _manifest_fifo(tmp):
    from dtgen.nodes.store.reader import live_records

    (tmp / "ds").mkdir()
    (tmp / "ds" / ".dtgen_dataset").write_text("{}")
    _fifo(tmp / "ds" / "manifest.jsonl")
    return live_records(tmp / "ds")


def _manifest_hard_link(tmp):
    """A manifest hard-linked to a file outside the dataset: appending to it is refused, the outside
    file unchanged."""
    from dtgen.nodes.store import manifest

    outside = tmp / "outside.txt"
    outside.write_text("precious\n")
    (tmp / "ds").mkdir()
    os.link(outside, tmp / "ds" / "manifest.jsonl")
    try:
        manifest.append(tmp / "ds", [{"id": "x", "label": "a"}])
    finally:
        assert outside.read_text() == "precious\n", "appended to a file outside the dataset"


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG header that claims width x height pixels (no pixel data): Pillow refuses it on open."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _finalize_bomb(tmp):
    """A stored image swapped for a decompression bomb: ``runner finalize`` says one line naming it."""
    import contextlib
    import io

    import numpy as np

    from dtgen.nodes.common.records import ScoredItem
    from dtgen.nodes.store.writer import DatasetWriter
    from dtgen.runner.cli import main

    noise = np.random.default_rng(0).random((64, 64, 3)).astype(np.float32)
    with DatasetWriter(tmp / "ds") as w:
        w.write([ScoredItem(noise, "a", "p", seed=1, index=0, accepted=True, reason="ok", score=0.3)])
    stored = next((tmp / "ds" / "images" / "a").glob("*.png"))
    bomb = _bomb_png(40_000, 40_000)
    stored.write_bytes(bomb + b"\0" * (stored.stat().st_size - len(bomb)))   # padded to its recorded size
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(["finalize", str(tmp / "ds"), "--export", "none"])
        except SystemExit as exc:
            code = exc.code
    text = err.getvalue()
    assert code not in (0, None) and text.startswith("error: ") and "Traceback" not in text, (code, text)
    assert text.count("\n") == 1 and stored.name in text, text
    return text


CASES["files/finalize_decompression_bomb"] = Case(_finalize_bomb, "image is too large to decode safely")


def _background_bomb(tmp):
    """A bomb PNG in a background set: the message names the file, not only Pillow's words."""
    from dtgen.nodes.synthesis.backgrounds import load_backgrounds

    _photo(tmp / "bg" / "a.png")
    (tmp / "bg" / "b.png").write_bytes(_bomb_png(40_000, 40_000))
    with pytest.raises(Exception) as info:
        load_backgrounds(tmp / "bg")
    assert str(tmp / "bg" / "b.png") in str(info.value), info.value
    return str(info.value)


CASES["files/background_decompression_bomb"] = Case(_background_bomb, "image is too large to decode safely")

FIFO = "FIFO (named pipe), not a regular file"
CASES["files/fewshot_caption_fifo"] = _expect_raise(_fewshot_caption_fifo, Exception, FIFO)
CASES["files/fewshot_image_fifo"] = _expect_raise(_fewshot_image_fifo, Exception, FIFO)
CASES["files/cutout_fifo"] = _expect_raise(_cutout_fifo, Exception, FIFO)
CASES["files/background_fifo"] = _expect_raise(_background_fifo, Exception, FIFO)
CASES["files/real_mask_fifo"] = _expect_raise(_real_mask_fifo, Exception, FIFO)
CASES["files/pack_fifo"] = _expect_raise(_pack_fifo, PromptPackError, FIFO)
CASES["files/manifest_fifo"] = _expect_raise(_manifest_fifo, Exception, FIFO)
CASES["files/manifest_hard_link"] = _expect_raise(_manifest_hard_link, Exception, "has 2 hard links")


def _manifest_folder(tmp):
    """manifest.jsonl is a folder: the message names the file (not "[Errno 21] Is a directory: 4")."""
    from dtgen.nodes.store.reader import live_records

    (tmp / "ds" / "manifest.jsonl").mkdir(parents=True)
    (tmp / "ds" / ".dtgen_dataset").write_text("{}")
    with pytest.raises(OSError) as info:
        live_records(tmp / "ds")
    assert str(tmp / "ds" / "manifest.jsonl") in str(info.value), info.value
    return str(info.value)


CASES["files/manifest_is_a_folder"] = Case(_manifest_folder, "is a folder, not a regular file")


# ---- the queue client's workflow file and what ComfyUI answers
def _runner_workflow(make):
    """``runner queue FILE --quota 1`` on the file ``make(tmp)`` writes: one line."""
    def attempt(tmp):
        import contextlib
        import io

        from dtgen.runner.cli import main

        path = make(tmp)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["queue", str(path), "--quota", "1"])
        text = err.getvalue()
        assert code == 1 and text.startswith("error: ") and text.count("\n") == 1 and str(path) in text, text
        return text
    return attempt


def _nested_workflow(tmp):
    path = tmp / "nested.json"
    path.write_text("[" * 200_000)
    return path


def _big_workflow(tmp):
    path = tmp / "big.json"
    path.write_text('{"1": {"class_type": "' + "x" * (17 * 1024 ** 2) + '"}}')
    return path


CASES["runner/workflow_nested_200k"] = Case(_runner_workflow(_nested_workflow), "its JSON is nested too deeply")
CASES["runner/workflow_fifo"] = Case(_runner_workflow(lambda tmp: _fifo(tmp / "wf.json")), FIFO)
CASES["runner/workflow_17_mib"] = Case(_runner_workflow(_big_workflow), "at most 16 MiB are read")


def _refusal(answer):
    def attempt(tmp):
        from dtgen.runner.api import GraphRejected

        text = str(GraphRejected("http://127.0.0.1:8188", answer))
        assert len(text) < 1300, len(text)
        return text
    return attempt


CASES["runner/refusal_600k_chars"] = Case(_refusal({"error": {"message": "x" * 600_000}}),
                                          "... (599000 more characters)")
CASES["runner/outputs_partly_refused"] = Case(_refusal({"prompt_id": "p1", "number": 0, "node_errors": {
    "9": {"class_type": "SaveImage", "errors": [{"message": "Required input is missing", "details": "images"}]}}}),
    "queued the workflow as prompt p1 but left out the outputs of the nodes it refused (the rest runs): node 9")


def _explicit_key(tmp):
    """A 100 KB explicit key (``? kkk...``) is echoed capped, not 200 KB of message."""
    text = HEAD + "classes:\n  - label: a\n    templates: [x]\n    ? " + "k" * 100_000 + "\n    : 1\n"
    with pytest.raises(PromptPackError) as info:
        parse_pack(text)
    assert len(str(info.value)) < 700, len(str(info.value))
    return str(info.value)


CASES["pack/explicit_key_100kb"] = Case(_explicit_key, "more characters")


def _alarm(signum, frame):
    raise TimeoutError(f"no answer within {HANG_GUARD_S} s: a hang")


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_is_refused_quickly_with_a_message_naming_it(name, tmp_path):
    case = CASES[name]
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_GUARD_S)
    start = time.perf_counter()
    try:
        message = case.attempt(tmp_path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    elapsed = time.perf_counter() - start
    assert case.expect in message, message[:2000]
    assert len(message) <= MAX_MESSAGE, f"{len(message)} characters: {message[:300]}"
    print(f"{name}: refused in {elapsed * 1000:.0f} ms: {message[:160]}")
