"""Opt-in download of named pretrained weights: the offline path for real, the online path with a
stand-in downloader (this machine has no model hub)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from dtgen.nodes.scoring.clip_model import load_clip
from dtgen.nodes.scoring.download import download_target, fetch_pretrained
from dtgen.nodes.scoring.errors import ClipFilterError

ROOT = Path(__file__).resolve().parents[3]


def test_offline_download_fails_clearly_and_leaves_folder_empty(tmp_path):
    """Real open_clip / huggingface_hub code with HF_HUB_OFFLINE=1 (as on a machine without a hub)."""
    folder = tmp_path / "models" / "open_clip"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from support.pkg import load_package
        load_package()
        from dtgen.nodes.scoring.download import fetch_pretrained
        from dtgen.nodes.scoring.errors import ClipFilterError
        try:
            fetch_pretrained("ViT-B-32", "laion2b_s34b_b79k", {str(folder)!r})
        except ClipFilterError as exc:
            print("ERROR:", exc)
        else:
            print("NO ERROR")
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith(f"ERROR: {folder / 'ViT-B-32-laion2b_s34b_b79k.safetensors'}: could not download "
                           "ViT-B-32 / laion2b_s34b_b79k weights from Hugging Face "
                           "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"), line
    assert "Offline? Download the file by hand and save it at this path" in line
    assert list(folder.iterdir()) == []   # no partial file, no leftover temp folder


def _fake_download(state_path: Path, suffix: str, calls: list):
    """A downloader that 'fetches' ``state_path`` as a .bin pickle or a .safetensors file."""
    def download(cfg, cache_dir):
        import torch
        from safetensors.torch import load_file, save_file

        calls.append(cfg)
        out = Path(cache_dir) / f"open_clip_pytorch_model{suffix}"
        state = load_file(str(state_path))
        if suffix == ".bin":
            torch.save(state, str(out))
        else:
            save_file(state, str(out))
        return str(out)
    return download


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_download_lands_as_safetensors_once(tmp_path, vitb32_path, suffix):
    calls = []
    folder = tmp_path / "open_clip"
    path = fetch_pretrained("ViT-B-32", "laion2b_s34b_b79k", folder, _fake_download(vitb32_path, suffix, calls))
    assert path == folder / "ViT-B-32-laion2b_s34b_b79k.safetensors" == download_target(
        folder, "ViT-B-32", "laion2b_s34b_b79k")
    assert sorted(p.name for p in folder.iterdir()) == [path.name]   # temp folder gone
    assert calls[0]["hf_hub"] == "laion/CLIP-ViT-B-32-laion2B-s34B-b79K/"
    bundle = load_clip("ViT-B-32", str(path), pretrained_tag="laion2b_s34b_b79k")
    assert bundle.weights_name == path.name

    again = fetch_pretrained("ViT-B-32", "laion2b_s34b_b79k", folder, _fake_download(vitb32_path, suffix, calls))
    assert again == path and len(calls) == 1   # present: not downloaded again


def test_downloaded_file_that_is_not_weights_is_refused(tmp_path):
    def download(cfg, cache_dir):
        out = Path(cache_dir) / "open_clip_pytorch_model.bin"
        out.write_bytes(b"<html>rate limited</html>")
        return str(out)

    folder = tmp_path / "open_clip"
    with pytest.raises(ClipFilterError, match="corrupt or not a weights file"):
        fetch_pretrained("ViT-B-32", "openai", folder, download)
    assert list(folder.iterdir()) == []


def test_download_errors_name_the_problem(tmp_path):
    def boom(cfg, cache_dir):
        raise OSError("Temporary failure in name resolution")

    with pytest.raises(ClipFilterError, match=r"unknown pretrained tag 'nope' for ViT-B-32"):
        fetch_pretrained("ViT-B-32", "nope", tmp_path, boom)
    with pytest.raises(ClipFilterError, match="no pretrained tag given"):
        fetch_pretrained("ViT-B-32", "", tmp_path, boom)
    with pytest.raises(ClipFilterError, match="unknown CLIP architecture"):
        fetch_pretrained("ViT-B32", "openai", tmp_path, boom)
    with pytest.raises(ClipFilterError, match=r"OSError: Temporary failure in name resolution"):
        fetch_pretrained("ViT-B-32", "openai", tmp_path, boom)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_host_fails_fast_without_calling_the_hub(tmp_path, monkeypatch):
    """Without a stand-in, the real downloader would retry for a minute; an unreachable host is
    reported at once (".invalid" never resolves, RFC 2606, so this holds online too)."""
    import time

    from dtgen.nodes.scoring import download as dl

    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    cfg = {"url": "https://weights.example.invalid/clip/ViT-B-32.pt", "hf_hub": ""}
    monkeypatch.setattr(dl, "tag_config", lambda arch, tag: cfg)
    start = time.monotonic()
    with pytest.raises(ClipFilterError, match=r"cannot reach weights\.example\.invalid .*looks offline"):
        fetch_pretrained("ViT-B-32", "openai", tmp_path)
    assert time.monotonic() - start < 30
    assert list(tmp_path.iterdir()) == []
