"""Write the tiny 0.2.0 dataset fixture (tests/fixtures/dataset_0_2_0/) with the 0.2.0 code itself.

The fixture is what DTGen 0.2.0 left on disk, so tests/unit/store/test_compat_0_2_0.py can show
that the current code still opens, repairs, loads, resumes and finalizes such a dataset. It was
made from commit 824fa52 (the last 0.2.0 landing; 7d49bf2 is "0.2.0 with a changelog") with:

    git archive 824fa52 | (mkdir -p /tmp/dtgen020 && tar -x -C /tmp/dtgen020)
    python tools/make_0_2_0_fixture.py /tmp/dtgen020 tests/fixtures/dataset_0_2_0

The old checkout is imported as the package ``dtgen020`` (as tests/support/pkg.py imports this
one as ``dtgen``); items come from its own prompt ``Sampler`` (inline pack ``PACK_YAML`` below,
mode ``balanced``, base seed ``BASE_SEED``, classes cat / dog / tea_cup) and are stored with its
``nodes.dataset.writer.DatasetWriter``, in two batches (two queue runs):

- indices 0..5, sampler metadata as 0.2.0 emits it (``stream``, ``pack_hash``, ``base_seed``,
  ``mode``, ``index`` ...): 0..3 accepted, 4 and 5 rejected (``below_threshold``);
- index 6 (cat, accepted) in the 0.1.0 shape: the same metadata without ``stream``, so its id is
  ``pack_hash:6`` and it is matched on (base seed, mode) when resuming.

Images are 8 x 8 RGB from ``numpy.random.default_rng(index)``; embeddings are 4-d unit vectors
(components +-0.5).
0.2.0 records carry no ``bytes`` field. ``.lock`` is removed afterwards (not part of the state);
``.clean`` is kept: it stamps the manifest's inode, so in a copy or a clone it never matches and
the current code must reconcile the dataset on open. Only ``time``/``created`` differ between runs.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

PACKAGE = "dtgen020"
BASE_SEED = 7
MODE = "balanced"
CLASSES = ("cat", "dog", "tea_cup")
REJECTED = {4, 5}
LEGACY_INDEX = 6       # written in the 0.1.0 shape (no stream)
SIZE = 8
PACK_YAML = """\
version: 1
name: compat
negative: blurry
slots:
  place: [on a table, on grass]
classes:
  - label: cat
    templates: ["a cat {place}"]
  - label: dog
    templates: ["a dog {place}"]
  - label: tea_cup
    templates: ["a tea cup {place}"]
"""
MODELS = {"checkpoint": "tiny.safetensors", "clip": "ViT-B-32"}
SAMPLER_SETTINGS = {"steps": 4, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "width": SIZE,
                    "height": SIZE}


def load_old(root: Path, name: str = PACKAGE):
    """Import the checkout at ``root`` as package ``name`` (like tests/support/pkg.py)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, root / "__init__.py", submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def scored(prompt_item, metadata: dict, accepted: bool):
    records = importlib.import_module(f"{PACKAGE}.nodes.common.records")
    i = prompt_item.index
    rng = np.random.default_rng(i)
    # unit vectors of +-0.5: exact floats whose bytes hold NULs and no CR/LF, so git sees a binary
    # file and never converts line endings in it
    emb = np.where(rng.standard_normal(4) < 0, -0.5, 0.5).astype(np.float32)
    score = round(0.30 + 0.01 * i, 4) if accepted else round(0.10 + 0.01 * i, 4)
    return records.ScoredItem(
        image=rng.random((SIZE, SIZE, 3), dtype=np.float32), label=prompt_item.label,
        prompt=prompt_item.positive, negative=prompt_item.negative, seed=prompt_item.seed, index=i,
        metadata=metadata, score=score, threshold=0.25, method="mean_std", accepted=accepted,
        reason="ok" if accepted else "below_threshold", embedding=emb,
        extra={"clip_text": prompt_item.label},
    )


def make(old_root: Path, out: Path) -> None:
    old = load_old(old_root)
    assert old.__version__ == "0.2.0", f"{old_root} is DTGen {old.__version__}, not 0.2.0"
    pack_mod = importlib.import_module(f"{PACKAGE}.nodes.prompting.pack")
    sampler_mod = importlib.import_module(f"{PACKAGE}.nodes.prompting.sampler")
    writer_mod = importlib.import_module(f"{PACKAGE}.nodes.dataset.writer")

    if out.exists() and any(out.iterdir()):
        sys.exit(f"error: {out} is not empty; remove it first")
    sampler = sampler_mod.Sampler(pack_mod.parse_pack(PACK_YAML, source="<compat>"), MODE, BASE_SEED, list(CLASSES))
    prompts = sampler.items(0, LEGACY_INDEX + 1)
    run1 = [scored(p, p.metadata, p.index not in REJECTED) for p in prompts[:LEGACY_INDEX]]
    legacy = prompts[LEGACY_INDEX]
    legacy_meta = {k: v for k, v in legacy.metadata.items() if k != "stream"}
    run2 = [scored(legacy, legacy_meta, True)]

    with writer_mod.DatasetWriter(out) as w:
        r1 = w.write(run1, MODELS, SAMPLER_SETTINGS)
    with writer_mod.DatasetWriter(out) as w:
        r2 = w.write(run2, MODELS, SAMPLER_SETTINGS)
    (out / ".lock").unlink(missing_ok=True)
    print(f"run 1: {r1.written}, run 2: {r2.written}; stream {sampler.stream}, "
          f"pack_hash {sampler.pack.pack_hash}")
    for p in sorted(out.rglob("*")):
        if p.is_file():
            print(f"{p.stat().st_size:7d}  {p.relative_to(out)}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old_checkout", type=Path, help="a DTGen 0.2.0 checkout (e.g. git archive 824fa52)")
    ap.add_argument("out", type=Path, help="dataset folder to create (must not exist or be empty)")
    args = ap.parse_args(argv)
    make(args.old_checkout.resolve(), args.out)


if __name__ == "__main__":
    main()
