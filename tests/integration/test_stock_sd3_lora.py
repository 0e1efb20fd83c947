"""The stock SD3 + LoRA graph runs on real ComfyUI (CPU, tiny random weights) and the LoRA applies."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from support.graphs import stock_sd3_lora


def _image(client, result, node="8") -> np.ndarray:
    images = result.outputs(node)["images"]
    assert len(images) == 1
    meta = images[0]
    data = client.view(meta["filename"], meta["subfolder"], meta["type"])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def test_stock_graph_runs_and_lora_applies(client, comfy_server):
    with_lora = client.run(stock_sd3_lora(strength=1.0, prefix="lora_on"))
    assert with_lora.error is None, with_lora.error
    without = client.run(stock_sd3_lora(strength=0.0, prefix="lora_off"))
    assert without.error is None, without.error

    a, b = _image(client, with_lora), _image(client, without)
    assert a.shape == b.shape == (128, 128, 3)
    assert np.abs(a - b).mean() > 1.0, "LoRA at strength 1 left the image unchanged"

    log = comfy_server.log()
    assert "lora key not loaded" not in log, [l for l in log.splitlines() if "lora key not loaded" in l][:5]
    assert "model_type FLOW" in log or "SD3" in log, "checkpoint not detected as SD3"
    assert len(with_lora.progress_events()) > 0, "no websocket progress from KSampler"
