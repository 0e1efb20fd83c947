"""Custom socket types shared by the V3 adapters (ComfyUI only)."""
from comfy_api.latest import io

from ..curation.real_anchor import BASES, DEFAULT_FLOOR_SLACK, DEFAULT_TOP_K, MIN_CALIBRATION_PHOTOS

DtgenClip = io.Custom("DTGEN_CLIP")                       # DTGenClipLoader -> DTGenClipFilter
ScoredBatchType = io.Custom("DTGEN_SCORED_BATCH")         # DTGenClipFilter -> DTGenDatasetWriter
DatasetHandle = io.Custom("DTGEN_DATASET")                # DTGenDataset / DTGenDatasetWriter -> any dataset user
RealImagesType = io.Custom("DTGEN_REAL_IMAGES")           # DTGenFewShotImages -> DTGenDatasetWriter


def dataset_input():
    """The optional dataset handle appended to every node that uses a dataset: when wired it wins
    over the node's typed ``dataset_name``, so the name is typed once (DTGen Dataset node)."""
    return DatasetHandle.Input("dataset", optional=True,
                               tooltip="Optional: the dataset from DTGen Dataset (or from the Dataset Writer's "
                                       "'dataset' output, to run after it). When wired, it replaces dataset_name.")


def dataset_name_of(dataset, dataset_name) -> str:
    """The handle's name when the handle is wired, else the typed name."""
    return dataset if isinstance(dataset, str) and dataset.strip() else (dataset_name or "")


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


def real_anchor_inputs(scored_from: str) -> list:
    """``decide_on`` and ``real_top_k``, shared by DTGen CLIP Filter and DTGen Dataset Finalize
    (same names, choices, defaults and wording; ``scored_from`` says where each node's real score
    comes from). Appended as optional inputs."""
    return [
        io.Combo.Input("decide_on", options=list(BASES), default="text", optional=True,
                       tooltip="What the per-class threshold is applied to: text (the image-text score, as before), "
                               f"real (the real-anchored score, {scored_from}) or both (each its own threshold, both "
                               "must pass). real_calibrated / both_calibrated: the real threshold is your photos' own "
                               "floor (each photo scored against the others of its class; median - "
                               f"{1 + DEFAULT_FLOOR_SLACK:g} x spread, spread = median - min, never narrower than your "
                               "classes' mean spread); classes with fewer than "
                               f"{MIN_CALIBRATION_PHOTOS} photos use the method. A class without real photos is "
                               "decided on text; each image records what it was decided on (decided_on)."),
        io.Int.Input("real_top_k", default=DEFAULT_TOP_K, min=1, max=64, optional=True,
                     tooltip="k of the real-anchored score: the mean of the k highest cosines to the class's real "
                             "photos (at most one less than the class has when it has 2 or more, as when a photo is "
                             "scored against the others)."),
    ]
