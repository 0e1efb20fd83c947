"""Custom socket types shared by the V3 adapters (ComfyUI only)."""
from comfy_api.latest import io

DtgenClip = io.Custom("DTGEN_CLIP")                       # DTGenClipLoader -> DTGenClipFilter
ScoredBatchType = io.Custom("DTGEN_SCORED_BATCH")         # DTGenClipFilter -> DTGenDatasetWriter


def threshold_inputs() -> list:
    """The per-class threshold widgets shared by DTGen CLIP Filter and DTGen Dataset Finalize
    (same names, defaults and order in both, so a setting means the same everywhere). Defaults and
    ranges come from ``WIDGET_RANGES``: a widget offers exactly the values the validator accepts."""
    from ..curation.thresholds import METHODS, WIDGET_RANGES as R

    return [
        io.Combo.Input("method", options=list(METHODS), default="mean_std",
                       tooltip="Per-class threshold: mean_std (mean - k*std, DTGen), median_mad (robust), "
                               "percentile (keep top p%), fixed, gmm (two-component mixture)."),
        io.Float.Input("k", **R["k"],
                       tooltip="k for mean_std (mean - k*std; DTGen uses 1.5) and median_mad (in scaled-MAD units; "
                               "2-2.5 is typical); gmm falls back to mean_std with this k when the mixture does not "
                               "separate."),
        io.Float.Input("keep_percent", **R["keep_percent"],
                       tooltip="percentile method: percent of each class to keep."),
        io.Float.Input("fixed_threshold", **R["fixed_threshold"],
                       tooltip="fixed method: cosine similarity an image must reach."),
        io.Int.Input("min_count", **R["min_count"],
                     tooltip="Below this many scores in a class (history + run) decisions are marked provisional."),
    ]
