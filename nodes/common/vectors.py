"""The one row normalisation of embeddings (cosines are dot products of unit rows)."""
from __future__ import annotations

import numpy as np


def unit_rows(m, dtype=np.float32) -> np.ndarray:
    """``m`` ([n, D]) as ``dtype`` with each row scaled to length 1; a zero row stays zero.
    ValueError naming the shape when ``m`` is not 2-D."""
    m = np.asarray(m, dtype=dtype)
    if m.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array [n, D], got shape {m.shape}")
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return m / np.where(norms > 0, norms, 1.0).astype(dtype)
