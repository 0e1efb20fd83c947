"""Custom socket types shared by the V3 adapters (ComfyUI only)."""
from comfy_api.latest import io

DtgenClip = io.Custom("DTGEN_CLIP")                       # DTGenClipLoader -> DTGenClipFilter
ScoredBatchType = io.Custom("DTGEN_SCORED_BATCH")         # DTGenClipFilter -> DTGenDatasetWriter
