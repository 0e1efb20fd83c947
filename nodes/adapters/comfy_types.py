"""Custom socket types shared by the V3 adapters (ComfyUI only)."""
from comfy_api.latest import io

DtgenClip = io.Custom("DTGEN_CLIP")                       # DTGenClipLoader -> DTGenClipFilter
ScoredBatchType = io.Custom("DTGEN_SCORED_BATCH")         # DTGenClipFilter -> DTGenDatasetWriter


def threshold_inputs() -> list:
    """The per-class threshold widgets shared by DTGen CLIP Filter and DTGen Dataset Finalize
    (same names, defaults and order in both, so a setting means the same everywhere)."""
    from ..curation.thresholds import METHODS

    return [
        io.Combo.Input("method", options=list(METHODS), default="mean_std",
                       tooltip="Per-class threshold: mean_std (mean - k*std, DTGen), median_mad (robust), "
                               "percentile (keep top p%), fixed, gmm (two-component mixture)."),
        io.Float.Input("k", default=1.5, min=0.0, max=10.0, step=0.05,
                       tooltip="k for mean_std (mean - k*std; DTGen uses 1.5) and median_mad (in scaled-MAD units; "
                               "2-2.5 is typical); gmm falls back to mean_std with this k when the mixture does not "
                               "separate."),
        io.Float.Input("keep_percent", default=90.0, min=0.0, max=100.0, step=1.0,
                       tooltip="percentile method: percent of each class to keep."),
        io.Float.Input("fixed_threshold", default=0.25, min=-1.0, max=1.0, step=0.005,
                       tooltip="fixed method: cosine similarity an image must reach."),
        io.Int.Input("min_count", default=8, min=1, max=100000,
                     tooltip="Below this many scores in a class (history + run) decisions are marked provisional."),
    ]
