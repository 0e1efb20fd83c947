"""A linear probe: multinomial logistic regression with an L2 penalty on standardised features,
fitted full-batch with torch's L-BFGS (strong Wolfe line search) in float64 on the CPU, the loss
and its gradient computed in numpy.

Objective, as scikit-learn's ``LogisticRegression(C=c)``: ``sum_i CE_i + ||W||^2 / (2 c)``
(the intercept is not penalised), divided by n for scale. Weights start at zero and the problem is
convex, so a fit is deterministic: the same features give the same model in every run (no random
state; ``seed`` is accepted for a uniform API and only recorded). Bounded by ``max_iter`` L-BFGS
iterations and ``max_seconds`` of wall time (checked every ``_CHUNK`` iterations); ``info`` says
whether it converged. Thousands of 512-d features fit in about a second.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

_CHUNK = 25


@dataclass
class LinearProbe:
    c: float = 1.0                 # inverse L2 strength (scikit-learn's C)
    max_iter: int = 1000
    max_seconds: float = 120.0
    tol: float = 1e-6              # stop when the largest gradient entry is below this
    seed: int = 0
    info: dict = field(default_factory=dict, init=False)

    def __post_init__(self):
        if not (isinstance(self.c, (int, float)) and np.isfinite(self.c) and self.c > 0):
            raise ValueError(f"c must be a number > 0, got {self.c!r}")
        if int(self.max_iter) < 1 or not self.max_seconds > 0:
            raise ValueError("max_iter must be >= 1 and max_seconds > 0")
        self.classes_ = None

    # -- fit ---------------------------------------------------------------------------------
    def fit(self, features, labels) -> LinearProbe:
        """``features`` [n, D] (finite), ``labels`` [n] integer class ids (any values; the classes
        are the distinct ones). One class only: the probe predicts it for everything."""
        import torch

        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(labels)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"features must be a non-empty [n, D] array, got shape {x.shape}")
        if y.shape != (x.shape[0],):
            raise ValueError(f"labels must be [n] = [{x.shape[0]}], got shape {y.shape}")
        if not np.isfinite(x).all():
            raise ValueError("features contain NaN or Inf")
        self.classes_, yi = np.unique(y, return_inverse=True)
        self.mean_ = x.mean(axis=0)
        std = x.std(axis=0)
        self.scale_ = np.where(std > 1e-12, std, 1.0)
        k, d, n = len(self.classes_), x.shape[1], x.shape[0]
        start = time.perf_counter()
        if k == 1:
            self.coef_, self.intercept_ = np.zeros((1, d)), np.zeros(1)
            self.info = {"n_iter": 0, "converged": True, "seconds": 0.0, "loss": 0.0, "note": "one class"}
            return self
        xs = (x - self.mean_) / self.scale_
        rows = np.arange(n)
        w = torch.zeros((d, k), dtype=torch.float64, requires_grad=True)
        b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
        penalty = 0.5 / (float(self.c) * n)
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=_CHUNK, max_eval=_CHUNK * 10, history_size=20,
                                tolerance_grad=self.tol, tolerance_change=1e-12, line_search_fn="strong_wolfe")
        last = [float("nan")]

        def closure():
            # loss and gradient in numpy: exact, and free of torch's per-op thread overhead, which
            # dominates on small problems (a softmax of 30 x 4 costs milliseconds with 2 threads)
            wn, bn = w.detach().numpy(), b.detach().numpy()
            z = xs @ wn + bn
            z -= z.max(axis=1, keepdims=True)
            lse = np.log(np.exp(z).sum(axis=1))
            loss = float((lse - z[rows, yi]).mean() + penalty * (wn * wn).sum())
            p = np.exp(z - lse[:, None])
            p[rows, yi] -= 1.0
            p /= n
            w.grad = torch.from_numpy(xs.T @ p + 2.0 * penalty * wn)
            b.grad = torch.from_numpy(p.sum(axis=0))
            last[0] = loss
            return torch.tensor(loss, dtype=torch.float64)

        done, converged = 0, False
        while done < int(self.max_iter):
            chunk = min(_CHUNK, int(self.max_iter) - done)
            opt.param_groups[0].update(max_iter=chunk, max_eval=chunk * 10)
            before = opt.state[w].get("n_iter", 0)
            opt.step(closure)
            ran = opt.state[w].get("n_iter", 0) - before
            done += max(ran, 1)
            grad = max(float(w.grad.abs().max()), float(b.grad.abs().max()))
            if grad <= self.tol or ran < chunk:      # L-BFGS stopped early: gradient or change tolerance
                converged = True
                break
            if time.perf_counter() - start > self.max_seconds:
                break
        loss = last[0]
        self.coef_ = w.detach().numpy().T.copy()          # [k, d] on standardised features
        self.intercept_ = b.detach().numpy().copy()
        self.info = {"n_iter": int(done), "converged": converged, "seconds": round(time.perf_counter() - start, 3),
                     "loss": loss}
        return self

    # -- predict -----------------------------------------------------------------------------
    def decision_function(self, features) -> np.ndarray:
        if self.classes_ is None:
            raise RuntimeError("fit the probe first")
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.mean_.shape[0]:
            raise ValueError(f"features must be [n, {self.mean_.shape[0]}], got shape {x.shape}")
        return ((x - self.mean_) / self.scale_) @ self.coef_.T + self.intercept_

    def predict_proba(self, features) -> np.ndarray:
        z = self.decision_function(features)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, features) -> np.ndarray:
        """The class (one of the fitted label values) with the highest score; ties: the lower one."""
        return self.classes_[np.argmax(self.decision_function(features), axis=1)]
