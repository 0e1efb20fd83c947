"""How close the synthetic images of a class are to its real photos in CLIP space, and how varied
each set is (plain numpy; the embeddings are the stored ones, nothing is encoded here).

- ``precision_recall``: Kynkäänniemi et al. 2019 (k-NN manifolds). Each set's manifold is the union
  of balls around its points with radius = the distance to the point's k-th nearest neighbour in
  the same set. precision = share of synthetic points inside the real manifold (look real), recall
  = share of real points inside the synthetic manifold (real variety the synthetic set covers).
- ``density_coverage``: Naeem et al. 2020. density = mean number of real balls a synthetic point
  falls in, divided by k (1 on matching distributions, robust to real outliers); coverage = share
  of real points whose ball holds at least one synthetic point.
- ``vendi``: Friedman & Dieng 2023 with the cosine kernel: exp of the entropy of the eigenvalues
  of K / n, K_ij = cos(x_i, x_j); 1 for identical points, n for n orthogonal ones.
- ``pca_2d``: both sets projected on the first two principal axes of their union (the picture).

Distances are Euclidean on L2-normalised rows (what CLIP embeddings are). A point is inside a ball
when its distance is <= the radius (ties count as inside).
"""
from __future__ import annotations

import numpy as np

from ..common.vectors import unit_rows
from .real_anchor import effective_k

DEFAULT_K = 3


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(sq, 0.0))


def knn_radii(x, k: int) -> np.ndarray:
    """Distance of each row to its k-th nearest other row (``k`` is clipped to n - 1)."""
    x = unit_rows(x, np.float64)
    n = len(x)
    if n < 2:
        raise ValueError(f"a k-NN radius needs at least 2 points, got {n}")
    k = effective_k(k, n)
    d = _distances(x, x)
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, k - 1]


def _inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """[n_points, n_centres] bool: point within the centre's ball (with a float tolerance)."""
    return _distances(points, centres) <= radii[None, :] + 1e-9


def _in_real_balls(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """[n_fake, n_real] bool: synthetic point inside a real point's k-NN ball; and that k (clipped
    to n_real - 1). Rows already unit length."""
    k_eff = effective_k(k, len(real))
    return _inside(fake, real, knn_radii(real, k_eff)), k_eff


def _recall(real: np.ndarray, fake: np.ndarray, k: int) -> float:
    return float(_inside(real, fake, knn_radii(fake, k)).any(axis=1).mean())


def precision_recall(real, fake, k: int = DEFAULT_K) -> tuple[float, float]:
    """(precision, recall) of ``fake`` against ``real``; both sets need >= 2 points."""
    real, fake = unit_rows(real, np.float64), unit_rows(fake, np.float64)
    inside, _ = _in_real_balls(real, fake, k)
    return float(inside.any(axis=1).mean()), _recall(real, fake, k)


def _density_coverage(inside: np.ndarray, k_eff: int) -> tuple[float, float]:
    return float(inside.sum() / (k_eff * inside.shape[0])), float(inside.any(axis=0).mean())


def density_coverage(real, fake, k: int = DEFAULT_K) -> tuple[float, float]:
    """(density, coverage) of ``fake`` against ``real``; balls around the real points only
    (``real`` needs >= 2 points, ``fake`` >= 1). ``k`` is clipped to n_real - 1, as the radii are."""
    real, fake = unit_rows(real, np.float64), unit_rows(fake, np.float64)
    return _density_coverage(*_in_real_balls(real, fake, k))


def vendi(x) -> float:
    """Vendi score (cosine kernel) of the rows of ``x``: the effective number of distinct items."""
    x = unit_rows(x, np.float64)
    if len(x) == 0:
        raise ValueError("a Vendi score needs at least 1 point")
    # the nonzero eigenvalues of X X^T / n and X^T X / n are the same: take the smaller matrix
    gram = x @ x.T if len(x) <= x.shape[1] else x.T @ x
    lam = np.linalg.eigvalsh(gram / len(x))
    lam = lam[lam > 1e-12]
    return float(np.exp(-(lam * np.log(lam)).sum()))


def pca_2d(real, fake) -> tuple[np.ndarray, np.ndarray]:
    """Both sets on the first two principal axes of their union (centred on its mean)."""
    real, fake = unit_rows(real, np.float64), unit_rows(fake, np.float64)
    both = np.concatenate([real, fake])
    centre = both.mean(axis=0)
    _, _, vt = np.linalg.svd(both - centre, full_matrices=False)
    axes = vt[:2]
    if len(axes) < 2:   # one point: a second axis of zeros
        axes = np.vstack([axes, np.zeros((2 - len(axes), both.shape[1]))])
    return (real - centre) @ axes.T, (fake - centre) @ axes.T


def class_fidelity(real, fake, k: int = DEFAULT_K) -> dict:
    """The per-class figures of Finalize's report; a figure a set is too small for is None and
    ``note`` says why (k-NN balls need >= 2 points of the set they are drawn around)."""
    real = np.zeros((0, 1)) if real is None or len(real) == 0 else unit_rows(real, np.float64)
    fake = np.zeros((0, 1)) if fake is None or len(fake) == 0 else unit_rows(fake, np.float64)
    out = {"n_real": int(len(real)), "n_synthetic": int(len(fake)), "k": int(k), "precision": None,
           "recall": None, "density": None, "coverage": None,
           "vendi_real": vendi(real) if len(real) else None, "vendi_synthetic": vendi(fake) if len(fake) else None,
           "note": None}
    if len(real) < 2 or len(fake) < 1:
        out["note"] = (f"{len(real)} real photo(s) with embeddings and {len(fake)} synthetic image(s): "
                       "precision/recall and density/coverage need >= 2 real and >= 1 synthetic")
        return out
    if real.shape[1] != fake.shape[1]:
        out["note"] = f"real embeddings have {real.shape[1]} dimensions, synthetic {fake.shape[1]}: not comparable"
        return out
    inside, k_eff = _in_real_balls(real, fake, k)     # once for density, coverage and precision
    out["density"], out["coverage"] = _density_coverage(inside, k_eff)
    if len(fake) >= 2:
        out["precision"], out["recall"] = float(inside.any(axis=1).mean()), _recall(real, fake, k)
    else:
        out["note"] = "1 synthetic image: recall needs >= 2 (its k-NN ball), precision/recall left out"
    return out


def fidelity_line(label: str, fig: dict) -> str:
    """One line per class for the node's canvas text."""
    def f(v):
        return "-" if v is None else f"{v:.2f}"
    line = (f"{label}: precision {f(fig['precision'])}, recall {f(fig['recall'])}, density {f(fig['density'])}, "
            f"coverage {f(fig['coverage'])}, Vendi synthetic {f(fig['vendi_synthetic'])} / real {f(fig['vendi_real'])} "
            f"({fig['n_synthetic']} synthetic, {fig['n_real']} real)")
    return line + (f" [{fig['note']}]" if fig.get("note") else "")
