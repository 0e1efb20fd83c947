"""Real-anchored curation on the textile set (issue #27, item 4): does comparing each image with the
few real photos of its class catch images that match their class text but not the real domain,
where the text check keeps them?

Data: ``conformal-clip-data`` (MIT) simulated textiles, three classes (``nominal``, ``local`` = one
small mark, ``global`` = finer weave), 250 x 250. CLIP: the small open_clip model trained at fixture
time on these images (tests/support/tiny_clip.py; built into the fixture cache on first use, a few
minutes): its held-out images (the last 100 per class by name, never trained on) give the real
photos and the test set.

Per class and repeat (seeded):
- real anchors: ``--anchors`` held-out images (the user's few real photos);
- test set: ``--test`` other held-out images (the probe's test; disjoint from everything else;
  default all 90 left);
- candidates (what a generator produced): ``--in-domain`` real images of the class from the CLIP's
  training files (stand-ins for good generated images), plus ``--off`` planted off-domain images
  of the right class made from other training files, in equal parts: ``blur`` (Gaussian, radius 2),
  ``colour`` (a warm tint on the gray fabric), ``rescale`` (the centre half upscaled 2x: the weave
  twice as coarse), ``other_source`` (another texture source: a procedural woven grating at the
  data's 60-degree orientation, with the class's mark or fine weave painted the same way).

Each candidate is scored as the CLIP filter scores it (``filtering.filter_run``: text score on the
class text, real-anchored score = mean top-k cosine to the class's anchors, k = ``--top-k``) and
decided per class with ``--method`` (default ``mean_std``, k = ``--k``) over the candidates of the class, on text, real
and both; ``real_calibrated`` / ``both_calibrated`` take the real-anchored threshold from the anchors
themselves instead (each anchor's leave-one-out real score against the other anchors of its class; floor =
median - (1 + ``--slack``) * spread, spread = median - min, at least the classes' mean spread:
``real_anchor.real_floor``). Reported per basis: precision / recall of the rejections (planted = positive), and, the
target, the precision of the rejections the real-anchored check adds over the text check (images
text keeps and real rejects); then the accuracy of the pack's linear probe (Evaluate's
``LinearProbe`` on the tiny CLIP's image embeddings) trained on the kept candidates (plus the
anchors, as Evaluate's "both" arm would) and tested on the test set. Mean ± sd over repeats.

Two more rows answer "could any rejection have done better?": ``oracle`` keeps what text keeps minus
every planted image (the best an extra check can do), so the spread of its probe difference is the
noise floor of target 2. Pooled figures carry a 95 % bootstrap interval over repeats.

Settings are never chosen on the runs they are reported on. ``--select`` runs the calibrated rule
over a grid (k 3-9, slack 0.5-3) on the given seeds, from the same embeddings the filter decides on,
and names the setting that rejects the most planted images (ties: the higher precision) among those
whose precision on the images the text check keeps, and that of every neighbour (k +- 1, one slack
step), is >= 0.9. The pack's defaults (``real_anchor.DEFAULT_TOP_K`` 8, ``DEFAULT_FLOOR_SLACK`` 1)
were chosen so on the development seeds 0-3:
``python bench/bench_real_anchored.py --seed 0 1 2 3 --repeats 5 --select`` (when the grid still scored
against the bench's own encoding of the photos; from the filter's own bank, as now, it picks k 9 at the
grid's edge, 0.4 planted images per repeat more, and the defaults were left). How the rule came to be:
a first floor (each class's own spread only) and bar (0.85) chose k 7, slack 1.75 on seeds 0-3
(0.86 there) and reached only 0.77 on the held-out seeds 10-13, most of the miss in one repeat
whose photos of one class were near-alike; the typical spread across classes and the bar of 0.9
came from that, so seeds 10-13 are no longer untouched, and the README's final figures are on seeds
20-23, run once with the defaults fixed before:
``python bench/bench_real_anchored.py --seed 20 21 22 23 --repeats 5``.

Run from the checkout (installs: tests/requirements.txt):
``python bench/bench_real_anchored.py [--method mean_std] [--k 1.5] [--top-k K] [--slack S] [--anchors 10]
[--in-domain 40] [--off 16] [--test 90] [--repeats 3] [--seed 0 [1 ...]] [--select]``
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pkg import load_package  # noqa: E402

load_package()
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))   # the ``support`` package

import numpy as np  # noqa: E402
from PIL import Image, ImageFilter  # noqa: E402

KINDS = ("blur", "colour", "rescale", "other_source")
BASES = ("text", "real", "both", "real_calibrated", "both_calibrated")
ROWS = BASES + ("oracle",)          # oracle: text's kept set minus every planted image
GRID_K = (3, 4, 5, 6, 7, 8, 9)          # with 10 photos a class, k is at most 9
GRID_SLACK = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)
SELECT_PRECISION = 0.9


def to_pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8))


def from_pil(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def other_source(label: str, rng: np.random.Generator, size: int = 250) -> np.ndarray:
    """A woven texture from another source: two crossed gratings (one along the data's 60-degree
    weave direction), its gray level and contrast drawn near the data's; ``global``: a finer weave;
    ``local``: one dark-and-light speckle mark of about 13 x 21 px."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(5.0, 7.0) * (0.6 if label == "global" else 1.0)
    a = np.deg2rad(60.0)
    u = x * np.cos(a) + y * np.sin(a)
    v = -x * np.sin(a) + y * np.cos(a)
    g = 0.5 + 0.18 * np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / (period * 1.3))
    g += rng.normal(0, 0.03, g.shape)
    if label == "local":
        cy, cx = rng.integers(30, size - 30, 2)
        patch = rng.random((13, 21)) > 0.5
        g[cy:cy + 13, cx:cx + 21] = np.where(patch, 0.05, 0.95)
    g = np.clip(g * rng.uniform(0.9, 1.1), 0, 1)
    return np.repeat(g[:, :, None], 3, axis=2).astype(np.float32)


def off_domain(kind: str, img: np.ndarray, label: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "blur":
        return from_pil(to_pil(img).filter(ImageFilter.GaussianBlur(2.0)))
    if kind == "colour":
        tint = np.array([1.25, 0.95, 0.65], np.float32) * rng.uniform(0.95, 1.05)
        return np.clip(img * tint + np.array([0.05, 0.0, -0.05], np.float32), 0, 1)
    if kind == "rescale":
        h, w = img.shape[:2]
        crop = to_pil(img).crop((w // 4, h // 4, w // 4 + w // 2, h // 4 + h // 2))
        return from_pil(crop.resize((w, h), Image.BICUBIC))
    return other_source(label, rng, img.shape[0])


def rejection_pr(rejected: np.ndarray, planted: np.ndarray) -> tuple[float, float]:
    tp = int((rejected & planted).sum())
    precision = tp / rejected.sum() if rejected.sum() else float("nan")
    return precision, tp / planted.sum() if planted.sum() else float("nan")


def auroc(scores: np.ndarray, planted: np.ndarray) -> float:
    """How well a low score singles out the planted images: P(score of a planted < score of an
    in-domain one), ties half (Mann-Whitney)."""
    off, ok = scores[planted], scores[~planted]
    if not len(off) or not len(ok):
        return float("nan")
    return float(((off[:, None] < ok[None, :]).sum() + 0.5 * (off[:, None] == ok[None, :]).sum()) / (len(off) * len(ok)))


def mean_sd(values) -> str:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return "n/a"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if v.size > 1 else f"{v.mean():.3f}"


def interval(values, stat, n_boot: int = 2000) -> tuple[float, float]:
    """95 % bootstrap interval of ``stat`` over repeats (``values``: one entry per repeat)."""
    values = list(values)
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(0)
    draws = [stat([values[i] for i in rng.integers(0, len(values), len(values))]) for _ in range(n_boot)]
    draws = [d for d in draws if np.isfinite(d)]
    return (float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))) if draws else (float("nan"),) * 2


def pooled(pairs) -> float:
    """Pooled precision of (planted, images) pairs: all planted / all images."""
    n = sum(b for _, b in pairs)
    return sum(a for a, _ in pairs) / n if n else float("nan")


def calibrated_added(run, top_k: int, slack: float) -> tuple[int, int]:
    """(planted, images) the calibrated real check rejects among what text keeps, at ``top_k`` / ``slack``."""
    from dtgen.nodes.curation.real_anchor import real_scores

    out = real_scores(run["emb"], run["labels"], run["bank"], top_k=top_k, floor_slack=slack)
    rejected = np.array([o["real_floor"] is not None and o["real_score"] < o["real_floor"] for o in out])
    extra = run["text_kept"] & rejected
    return int((extra & run["planted"]).sum()), int(extra.sum())


def select(runs) -> None:
    """The grid and the rule of the module doc, on these runs."""
    print(f"\n--select: the calibrated rule over k x slack on these {len(runs)} repeats; per cell: pooled precision of "
          "the rejections it adds over text / planted images it adds per repeat")
    cells = {}
    for k in GRID_K:
        for slack in GRID_SLACK:
            pairs = [calibrated_added(run, k, slack) for run in runs]
            cells[k, slack] = (pooled(pairs), sum(a for a, _ in pairs) / len(runs))
    print("| k \\ slack | " + " | ".join(f"{x:g}" for x in GRID_SLACK) + " |")
    print("|---|" + "---|" * len(GRID_SLACK))
    for k in GRID_K:
        print(f"| {k} | " + " | ".join(f"{cells[k, x][0]:.3f} / {cells[k, x][1]:.2f}" for x in GRID_SLACK) + " |")

    def steady(k, i):
        near = [(k, GRID_SLACK[i])] + [(k + d, GRID_SLACK[i]) for d in (-1, 1) if k + d in GRID_K] \
            + [(k, GRID_SLACK[i + d]) for d in (-1, 1) if 0 <= i + d < len(GRID_SLACK)]
        return all(np.isfinite(cells[c][0]) and cells[c][0] >= SELECT_PRECISION for c in near)

    ok = [(k, GRID_SLACK[i]) for k in GRID_K for i in range(len(GRID_SLACK)) if steady(k, i)]
    if not ok:
        print(f"no setting has precision >= {SELECT_PRECISION} with all its neighbours")
        return
    best = max(ok, key=lambda c: (cells[c][1], cells[c][0]))
    print(f"chosen: k = {best[0]}, slack = {best[1]:g} (precision {cells[best][0]:.3f}, {cells[best][1]:.2f} planted "
          f"images added per repeat; it and its neighbours >= {SELECT_PRECISION})")


def main() -> None:
    from dtgen.nodes.curation.real_anchor import DEFAULT_FLOOR_SLACK, DEFAULT_TOP_K

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--anchors", type=int, default=10, help="real photos per class (held-out images)")
    ap.add_argument("--in-domain", type=int, default=40, help="in-domain candidates per class")
    ap.add_argument("--off", type=int, default=16, help="planted off-domain candidates per class (4 kinds)")
    ap.add_argument("--test", type=int, default=90, help="held-out test images per class for the probe")
    ap.add_argument("--top-k", type=int, default=DEFAULT_TOP_K,
                    help=f"k of the real-anchored score (the pack's default {DEFAULT_TOP_K})")
    ap.add_argument("--method", default="mean_std", help="threshold method (mean_std | median_mad | percentile | gmm)")
    ap.add_argument("--k", type=float, default=1.5, help="k of mean_std / median_mad (the filter's default 1.5)")
    ap.add_argument("--slack", type=float, default=DEFAULT_FLOOR_SLACK,
                    help="slack of the calibrated floor: median - (1 + slack) * spread of the anchors' leave-one-out "
                         f"scores (the pack's default {DEFAULT_FLOOR_SLACK:g})")
    ap.add_argument("--repeats", type=int, default=3, help="repeats per seed")
    ap.add_argument("--seed", type=int, nargs="+", default=[0], help="one or more seeds; repeat r of seed s draws "
                                                                     "with the generator [s, r]")
    ap.add_argument("--select", action="store_true", help="also run the settings grid and the selection rule")
    args = ap.parse_args()
    if args.anchors + args.test > 100:
        sys.exit("anchors + test must fit the 100 held-out images per class")
    t_start = time.perf_counter()
    print("command: " + shlex.join(["python", "bench/bench_real_anchored.py", *sys.argv[1:]]))

    from dtgen.nodes.common.records import ScoredItem
    from dtgen.nodes.curation.filtering import filter_run, real_bank_for
    from dtgen.nodes.curation.thresholds import method_from
    from dtgen.nodes.evaluation import metrics as M
    from dtgen.nodes.evaluation.probe import LinearProbe
    from dtgen.nodes.fewshot.realset import make_set
    from dtgen.nodes.fewshot.imageset import scan
    from dtgen.nodes.scoring.clip_model import load_clip
    from dtgen.nodes.scoring.similarity import encode_images
    from support.tiny_clip import TEXTILE, load_image, split, summary, tiny_clip

    folder, arch, weights, info = tiny_clip()
    print(summary(info))
    bundle = load_clip(arch, str(folder / weights))
    classes = list(TEXTILE)
    method = method_from(args.method, k=args.k)
    print(f"decisions: {method!r} per class over the class's candidates; real-anchored top-k = {args.top_k}, "
          f"calibrated floor slack = {args.slack:g}; per class {args.anchors} real anchors, {args.in_domain} in-domain "
          f"+ {args.off} planted off-domain candidates ({', '.join(KINDS)}), {args.test} test images")

    import tempfile

    rows = {b: {"precision": [], "recall": [], "acc": [], "kept_off": [], "kept": [], "in_rejected": []} for b in ROWS}
    added = {b: {"precision": [], "count": [], "planted": [], "recall_of_text_kept": []} for b in BASES[1:]}
    margin_rule = {"precision": [], "recall": [], "count": []}
    separation = {"text": [], "real": [], "real_margin": []}
    per_kind = {b: {k: [] for k in KINDS} for b in BASES}
    runs = []
    plan = [(seed, r) for seed in args.seed for r in range(args.repeats)]
    for seed, r in plan:
        rng = np.random.default_rng([seed, r])
        anchors, test, items, planted, kinds = {}, {}, [], [], []
        for c in classes:
            train_files, held = split(c)
            order = rng.permutation(len(held))
            anchors[c] = [held[i] for i in order[:args.anchors]]
            test[c] = [held[i] for i in order[args.anchors:args.anchors + args.test]]
            pick = rng.choice(len(train_files), args.in_domain + args.off, replace=False)
            for j, i in enumerate(pick):
                img = load_image(train_files[i])
                kind = None
                if j >= args.in_domain:
                    kind = KINDS[(j - args.in_domain) % len(KINDS)]
                    img = off_domain(kind, img, c, rng)
                items.append(ScoredItem(image=img, label=c, prompt=TEXTILE[c], metadata={"clip_text": TEXTILE[c]}))
                planted.append(kind is not None)
                kinds.append(kind)
        planted = np.array(planted)
        with tempfile.TemporaryDirectory(prefix="dtgen-bench-real-") as tmp:
            root = Path(tmp) / "real"
            for c in classes:
                (root / c).mkdir(parents=True)
                for p in anchors[c]:
                    (root / c / p.name).write_bytes(p.read_bytes())
            realset = make_set(root, scan(root), lambda label: TEXTILE[label], size=250, part="all")
            photos, _ = real_bank_for(bundle, realset)   # the filter's own bank, for --select
            decided = {}
            for basis in BASES:
                fresh = [ScoredItem(image=it.image, label=it.label, prompt=it.prompt, metadata=dict(it.metadata))
                         for it in items]
                batch, _ = filter_run(bundle, fresh, method, text_side="class_text", min_count=1, basis=basis,
                                      realset=realset, real_top_k=args.top_k, real_floor_slack=args.slack)
                decided[basis] = batch.items
        x_test = np.concatenate([encode_images(bundle, [load_image(p) for p in test[c]]) for c in classes])
        y_test = np.concatenate([[i] * len(test[c]) for i, c in enumerate(classes)])
        anchor_emb = np.concatenate([encode_images(bundle, [load_image(p) for p in anchors[c]]) for c in classes])
        anchor_y = np.concatenate([[i] * len(anchors[c]) for i, c in enumerate(classes)])
        print(f"\nseed {seed}, repeat {r}:")
        print(f"  {'basis':<15} {'rejected':>8} {'rej. precision':>15} {'rej. recall':>12} {'planted kept':>13} "
              f"{'in-domain rej.':>15} {'probe acc.':>11}   planted rejected per kind")
        kept_masks = {}
        emb = np.stack([it.embedding for it in decided["text"]])
        y = np.array([classes.index(it.label) for it in decided["text"]])
        for basis in ROWS:
            if basis == "oracle":
                rejected = ~(kept_masks["text"] & ~planted)
            else:
                rejected = np.array([not it.accepted for it in decided[basis]])
            kept_masks[basis] = keep = ~rejected
            p, rc = rejection_pr(rejected, planted)
            probe = LinearProbe(c=1.0, seed=r).fit(np.concatenate([emb[keep], anchor_emb]),
                                                    np.concatenate([y[keep], anchor_y]))
            acc = M.compute(y_test, probe.predict(x_test), classes).accuracy
            rows[basis]["precision"].append(p)
            rows[basis]["recall"].append(rc)
            rows[basis]["acc"].append(acc)
            rows[basis]["kept_off"].append(int((keep & planted).sum()))
            rows[basis]["kept"].append(int(keep.sum()))
            rows[basis]["in_rejected"].append(int((rejected & ~planted).sum()))
            kind_text = []
            for kind in KINDS:
                share = float(rejected[np.array([k == kind for k in kinds])].mean())
                if basis in per_kind:
                    per_kind[basis][kind].append(share)
                kind_text.append(f"{kind} {share:.0%}")
            print(f"  {basis:<15} {int(rejected.sum()):>8} {p:>15.3f} {rc:>12.3f} {int((keep & planted).sum()):>13} "
                  f"{int((rejected & ~planted).sum()):>15} {acc:>11.3f}   {', '.join(kind_text)}")
        its = decided["both"]
        labels = np.array([it.label for it in its])
        for name, values in (("text", [it.score for it in its]), ("real", [it.extra["real_score"] for it in its]),
                             ("real_margin", [it.extra["real_margin"] for it in its])):
            values = np.asarray(values, dtype=np.float64)
            per_class = [auroc(values[labels == c], planted[labels == c]) for c in classes]
            separation[name].append(float(np.mean(per_class)))
        print("  separation of planted from in-domain within a class (AUROC, mean over classes): "
              + ", ".join(f"{k} score {v[-1]:.3f}" for k, v in separation.items()))
        floors = {c: next(it.extra.get("real_floor") for it in decided["real_calibrated"] if it.label == c)
                  for c in classes}
        print("  calibrated floor per class: " + ", ".join(f"{c} {v:.3f}" for c, v in floors.items()))
        margins = np.array([it.extra["real_margin"] for it in its], dtype=np.float64)
        neg = margins < 0
        pm, rm = rejection_pr(neg, planted)
        margin_rule["precision"].append(pm)
        margin_rule["recall"].append(rm)
        margin_rule["count"].append(int(neg.sum()))
        print(f"  real_margin < 0 (closer to another class's photos) as a rejection rule: {int(neg.sum())} images, "
              f"precision {pm:.3f}, recall {rm:.3f}")
        text_kept_off = kept_masks["text"] & planted
        for basis in BASES[1:]:
            extra = kept_masks["text"] & ~kept_masks[basis]
            p_add = float(planted[extra].mean()) if extra.any() else float("nan")
            r_add = float((extra & planted).sum() / text_kept_off.sum()) if text_kept_off.any() else float("nan")
            added[basis]["precision"].append(p_add)
            added[basis]["count"].append(int(extra.sum()))
            added[basis]["planted"].append(int((extra & planted).sum()))
            added[basis]["recall_of_text_kept"].append(r_add)
            print(f"  rejected by {basis}, kept by text: {int(extra.sum())} images, {int((extra & planted).sum())} of "
                  f"them planted (precision {p_add:.3f}); of the planted images text kept, {basis} rejected {r_add:.1%}")
        runs.append({"emb": emb, "labels": [classes[i] for i in y], "text_kept": kept_masks["text"],
                     "planted": planted, "bank": photos})

    n_runs = len(plan)
    one_image = 100 / (len(classes) * args.test)
    print(f"\nsummary: mean ± sd over {n_runs} repeats (seeds {' '.join(map(str, args.seed))}, {args.repeats} each); "
          f"per repeat {len(classes) * (args.in_domain + args.off)} candidates, {len(classes) * args.off} planted; "
          f"one test image = {one_image:.2f} points")
    print("| basis | rejection precision | rejection recall | planted kept | in-domain rejected | kept | probe accuracy | "
          "rejected by it, kept by text: planted / images (precision, 95 % interval) |")
    print("|---|---|---|---|---|---|---|---|")
    for basis in ROWS:
        s = rows[basis]
        if basis == "text":
            add = "-"
        elif basis == "oracle":
            add = "(every planted image text keeps)"
        else:
            a = added[basis]
            pairs = list(zip(a["planted"], a["count"]))
            lo, hi = interval(pairs, pooled)
            n, tp = sum(a["count"]), sum(a["planted"])
            add = f"{tp} / {n} ({tp / n:.3f}, {lo:.2f}-{hi:.2f})" if n else "0 / 0"
        print(f"| {basis} | {mean_sd(s['precision'])} | {mean_sd(s['recall'])} | {np.mean(s['kept_off']):.1f} | "
              f"{np.mean(s['in_rejected']):.1f} | {np.mean(s['kept']):.1f} | {mean_sd(s['acc'])} | {add} |")
    print("\nplanted images rejected, per kind (mean over repeats):")
    print("| basis | " + " | ".join(KINDS) + " |")
    print("|---|" + "---|" * len(KINDS))
    for basis in BASES:
        print(f"| {basis} | " + " | ".join(f"{np.mean(per_kind[basis][k]):.0%}" for k in KINDS) + " |")
    print("\nseparation of planted from in-domain within a class, whatever the threshold (AUROC: 1 = every planted "
          "image scores below every in-domain one, 0.5 = chance): "
          + ", ".join(f"{k} score {mean_sd(v)}" for k, v in separation.items()))
    print(f"real_margin < 0 as a rejection rule: {np.mean(margin_rule['count']):.1f} images per repeat, precision "
          f"{mean_sd(margin_rule['precision'])}, recall {mean_sd(margin_rule['recall'])}")
    print("\nprobe accuracy minus text-only's, in points (paired per repeat; 95 % interval of the mean):")
    for basis in ROWS[1:]:
        diff = 100 * (np.array(rows[basis]["acc"]) - np.array(rows["text"]["acc"]))
        lo, hi = interval(list(diff), np.mean)
        print(f"  {basis:<15} {diff.mean():+.2f} ({lo:+.2f} to {hi:+.2f}); worse in {int((diff < 0).sum())} of {n_runs} "
              f"repeats, by at most {max(0.0, -diff.min()):.2f}")
    for basis in BASES[1:]:
        a = added[basis]
        pairs = list(zip(a["planted"], a["count"]))
        n, tp = sum(a["count"]), sum(a["planted"])
        lo, hi = interval(pairs, pooled)
        per = [x for x in a["precision"] if np.isfinite(x)]
        print(f"\ntarget 1 ({basis}): precision of the rejections it adds over text: {tp} planted of {n} images, pooled "
              f"{pooled(pairs):.3f} (95 % interval {lo:.3f}-{hi:.3f}) -> "
              + ("met (>= 0.8 pooled)" if n and pooled(pairs) >= 0.8 else "NOT met (>= 0.8 pooled)")
              + (f"; single repeats {min(per):.2f}-{max(per):.2f}, below 0.8 in {sum(x < 0.8 for x in per)} of "
                 f"{len(per)} that add any" if per else "")
              + (" - on fewer than 10 images: too few to conclude" if n < 10 else ""))
        diff = 100 * (np.array(rows[basis]["acc"]) - np.array(rows["text"]["acc"]))
        print(f"target 2 ({basis}): the kept set never trains a worse probe than text-only: "
              + ("met" if (diff >= 0).all() else f"NOT met in {int((diff < 0).sum())} of {n_runs} repeats")
              + f" (oracle: worse in {int((np.array(rows['oracle']['acc']) < np.array(rows['text']['acc'])).sum())})")
    if args.select:
        select(runs)
    print(f"wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
