"""The filter's CPU preprocessing (issue #28: per image from the caller's pixels, no stacked copy,
in-place normalisation) against the preprocessing it replaced, on real photos at VAEDecode's
sizes: model inputs and ViT-B-32 image embeddings must agree (embedding cosine >= 0.9999).

Real photos: scikit-image's bundled photos and the textile shots of ``conformal-clip-data``
(a test requirement), brought to 1024² (and one 832 x 1216 frame, SD3's portrait size, which
exercises the centre crop) with PIL's bicubic, as float32 in [0, 1] the way ComfyUI hands them.
"""
import numpy as np
import pytest
from dtgen.nodes.scoring.similarity import (
    encode_images,
    model_input,
    prepare_images,
    prepare_tensor,
    resized_size,
)

COSINE_MIN = 0.9999   # the stated tolerance against the embeddings of the replaced preprocessing


def replaced_model_input(spec, images):
    """The preprocessing before issue #28, verbatim in effect: same-size images stacked into one
    N x H x W x 3 tensor, resized as one channels-last batch (antialiased bicubic), centre-cropped,
    then clamped and normalised out of place."""
    import torch
    import torch.nn.functional as F

    th, tw = spec.image_size
    x = torch.from_numpy(np.stack(images)) if not isinstance(images, torch.Tensor) else images
    x = x.to(torch.float32).permute(0, 3, 1, 2)
    h, w = x.shape[-2:]
    rh, rw = resized_size(h, w, (th, tw), spec.resize_mode)
    if (rh, rw) != (h, w):
        x = F.interpolate(x, size=(rh, rw), mode="bicubic", antialias=True, align_corners=False)
    top, left = round((rh - th) / 2.0), round((rw - tw) / 2.0)
    out = x[..., top:top + th, left:left + tw].clamp(0.0, 1.0)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    return out.sub_(mean).div_(std).to(spec.dtype)


def _resized(rgb: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image

    if rgb.ndim == 2:
        rgb = np.stack([rgb] * 3, axis=-1)
    img = Image.fromarray(np.ascontiguousarray(rgb[..., :3])).resize((w, h), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


def _real_photos(h: int, w: int) -> list[np.ndarray]:
    from pathlib import Path

    from PIL import Image
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    try:
        import conformal_clip_data
        root = conformal_clip_data.textile_simulated_root()
        for cls in ("nominal", "local", "global"):
            first = min((Path(root) / cls).glob("*.jpg"))
            with Image.open(first) as im:
                photos.append(np.asarray(im.convert("RGB")))
    except ImportError:   # the scikit-image photos alone are still real photos
        pass
    return [_resized(p, h, w) for p in photos]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _embed(bundle, x) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return bundle.model.encode_image(x).float().numpy()


@pytest.mark.parametrize("h,w", [(1024, 1024), (1216, 832)])
def test_preprocessing_keeps_todays_embeddings_on_real_photos(bundle, h, w):
    photos = _real_photos(h, w)
    assert len(photos) >= 4 and photos[0].shape == (h, w, 3)
    ready = prepare_images(photos)
    new = model_input(bundle, ready)
    old = replaced_model_input(bundle, ready)
    assert new.shape == old.shape == (len(photos), 3, 224, 224)
    # the same resize kernel, per image instead of per batch: float rounding only
    assert float((new - old).abs().max()) < 1e-4
    cos = _cosines(_embed(bundle, new), _embed(bundle, old))
    assert cos.min() >= COSINE_MIN, cos
    # the whole image path (validation, batching, encoder, normalising) agrees too, from the
    # arrays and from ComfyUI's IMAGE tensor
    import torch

    ref = _embed(bundle, old)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    for images in (photos, torch.from_numpy(np.stack(photos))):
        got = encode_images(bundle, images, batch_size=3)
        assert _cosines(got, ref).min() >= COSINE_MIN


def test_flipped_and_strided_arrays_are_read_as_they_look(bundle):
    """A flipped view (negative strides, which torch cannot view) and a channel slice of RGBA are
    preprocessed like their contiguous copies; the caller's pixels are never written."""
    import torch

    photo = _real_photos(256, 320)[0]
    flipped = photo[::-1, ::-1]
    rgba = np.dstack([photo, np.ones(photo.shape[:2], np.float32)])
    keep = photo.copy()
    got = model_input(bundle, [flipped, rgba[..., :3]])
    want = model_input(bundle, [np.ascontiguousarray(flipped), photo])
    assert float((got - want).abs().max()) == 0.0
    assert np.array_equal(photo, keep)
    batch = prepare_tensor(torch.from_numpy(np.stack([photo, photo])))
    assert float((model_input(bundle, batch) - want[1:].expand(2, -1, -1, -1)).abs().max()) == 0.0
