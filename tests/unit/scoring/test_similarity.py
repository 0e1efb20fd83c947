"""Batched image/text encoding, preprocessing fidelity, score_items and input validation."""
import numpy as np
import pytest
from dtgen.nodes.common.records import ScoredItem
from dtgen.nodes.scoring.errors import ClipFilterError
from dtgen.nodes.scoring.similarity import (
    TextEmbeddingCache,
    TextMemo,
    encode_images,
    encode_text_tokens,
    prepare_images,
    preprocess_batch,
    resized_size,
    score_items,
    shared_text_memo,
    similarities,
)


def _photo(h, w, seed):
    """A smooth colour image (gradients + blobs), more photo-like than white noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    chans = [0.5 + 0.5 * np.sin(rng.uniform(2, 9) * xx + rng.uniform(2, 9) * yy + rng.uniform(0, 6))
             for _ in range(3)]
    return np.clip(np.stack(chans, -1), 0, 1).astype(np.float32)


def test_batched_scores_equal_one_by_one(bundle):
    images = [_photo(96, 96, 0), _photo(80, 120, 1), _photo(96, 96, 2),
              _photo(64, 64, 3)[:, :, 0], np.dstack([_photo(70, 50, 4), np.ones((70, 50))])]
    batched = encode_images(bundle, images, batch_size=4)
    single = np.concatenate([encode_images(bundle, [img]) for img in images])
    assert batched.shape == (5, bundle.model.visual.output_dim)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    assert np.abs(batched - single).max() <= 1e-4
    assert np.abs(batched[0] - batched[2]).max() > 1e-3   # different images, different embeddings


def test_gray_and_rgba_convert_to_rgb(bundle):
    gray = _photo(48, 48, 5)[:, :, 0]
    as_rgb = np.repeat(gray[:, :, None], 3, axis=2)
    rgba = np.dstack([as_rgb, np.zeros((48, 48), np.float32)])
    embs = encode_images(bundle, [gray, gray[:, :, None], as_rgb, rgba])
    assert np.abs(embs - embs[2]).max() <= 1e-5


def test_preprocessing_matches_open_clip_transform(bundle):
    import open_clip
    import torch
    from PIL import Image

    img = _photo(150, 260, 6)
    u8 = (img * 255).round().astype(np.uint8)
    ref = open_clip.image_transform(224, is_train=False)(Image.fromarray(u8))
    ours = preprocess_batch(bundle, prepare_images([u8]))[0]
    assert ours.shape == ref.shape == (3, 224, 224)
    # 8-bit rounding of PIL's output is the only difference: ~1/255 / std on average
    assert float((ours - ref).abs().mean()) < 0.01
    with torch.inference_mode():
        a, b = bundle.model.encode_image(torch.stack([ref, ours])).unbind(0)
    assert float(torch.nn.functional.cosine_similarity(a, b, dim=0)) > 0.9999


@pytest.mark.parametrize("h,w,expected", [(512, 512, (224, 224)), (300, 451, (224, 336)),
                                          (451, 300, (336, 224)), (100, 50, (448, 224))])
def test_resized_size_follows_torchvision(h, w, expected):
    assert resized_size(h, w, (224, 224), "shortest") == expected


def test_text_cache_encodes_each_distinct_text_once(bundle):
    cache = TextEmbeddingCache(bundle)
    texts = ["a photo of a cup", "a photo of a plate", "a photo of a cup", "a photo of a cup"]
    emb = cache.encode(texts)
    assert cache.encoded_count == 2
    assert emb.shape[0] == 4 and np.array_equal(emb[0], emb[2])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    again = cache.encode(["a photo of a plate", "a bowl"])
    assert cache.encoded_count == 3
    np.testing.assert_allclose(again[0], emb[1], atol=1e-6)
    fresh = TextEmbeddingCache(bundle).encode(["a bowl"])
    np.testing.assert_allclose(again[1], fresh[0], atol=1e-5)


def test_text_memo_reuses_the_same_batches_bit_for_bit(bundle):
    memo = TextMemo(size=2)
    texts = ["a photo of a cup", "a photo of a plate"]
    first = TextEmbeddingCache(bundle, memo=memo)
    a = first.encode(texts)
    assert first.encoded_count == 2
    second = TextEmbeddingCache(bundle, memo=memo)   # a later run: same batch, nothing encoded
    b = second.encode(texts)
    assert second.encoded_count == 0 and np.array_equal(a, b)
    assert np.array_equal(b, TextEmbeddingCache(bundle).encode(texts))   # what no memo gives
    other = TextEmbeddingCache(bundle, memo=memo)     # another grouping of the texts: encoded anew
    other.encode(texts[:1])
    assert other.encoded_count == 1
    TextEmbeddingCache(bundle, memo=memo).encode(["a bowl"])   # size 2: the oldest batch goes
    last = TextEmbeddingCache(bundle, memo=memo)
    last.encode(texts)
    assert last.encoded_count == 2


def test_shared_text_memo_per_model_device_and_precision(bundle):
    import dataclasses

    memo = shared_text_memo(bundle)
    assert shared_text_memo(dataclasses.replace(bundle)) is memo   # a fresh bundle of the same model
    assert shared_text_memo(dataclasses.replace(bundle, device="meta")) is not memo


def test_trimmed_text_encoding_equals_full_context(bundle):
    import torch

    model = bundle.model
    texts = ["a cup", "a photo of a large white porcelain cup on a wooden table, soft light",
             "word " * 100]   # the last one fills all 77 positions (truncated)
    tokens = bundle.tokenizer(texts)
    with torch.inference_mode():
        full = model.encode_text(tokens)
        trimmed = encode_text_tokens(model, tokens)
        short = encode_text_tokens(model, tokens[:2])   # runs 15-odd positions instead of 77
    assert int(tokens[:2].argmax(-1).max()) < 20
    assert (full - trimmed).abs().max() <= 1e-5
    assert (full[:2] - short).abs().max() <= 1e-4
    assert (full[0] - full[1]).abs().max() > 1e-3


def test_text_encoding_without_causal_mask_uses_full_context(bundle):
    import copy

    import torch

    model = copy.copy(bundle.model)   # shallow: shares the weights, own buffer dict
    model._buffers = dict(model._buffers, attn_mask=torch.zeros_like(model.attn_mask))
    tokens = bundle.tokenizer(["a cup", "a plate on a table"])
    with torch.inference_mode():
        expected = model.encode_text(tokens)   # padding now influences the result
        got = encode_text_tokens(model, tokens)
        causal = bundle.model.encode_text(tokens)
    assert (got - expected).abs().max() <= 1e-6
    assert (expected - causal).abs().max() > 1e-3


def _items():
    meta = [{"clip_text": "a cup"}, {"clip_text": "a plate"}, {"clip_text": "a cup"}]
    return [ScoredItem(image=_photo(64, 64, 10 + i), label=m["clip_text"][2:], prompt=f"prompt {i}",
                       index=i, metadata=m) for i, m in enumerate(meta)]


def test_score_items_text_sides(bundle):
    cache = TextEmbeddingCache(bundle)
    by_side = {}
    for side in ("prompt", "class_text", "both"):
        items = _items()
        score_items(bundle, items, side, batch_size=2, text_cache=cache,
                    class_texts={"cup": "a cup", "plate": "a plate", "bowl": "a bowl"})
        by_side[side] = items
    img = np.stack([it.embedding for it in by_side["prompt"]])
    prompts = cache.encode([f"prompt {i}" for i in range(3)])
    np.testing.assert_allclose([it.score for it in by_side["prompt"]],
                               np.sum(img * prompts, axis=1), atol=1e-5)
    class_txt = cache.encode(["a cup", "a plate", "a cup"])
    np.testing.assert_allclose([it.score for it in by_side["class_text"]],
                               np.sum(img * class_txt, axis=1), atol=1e-5)
    for p, c, b in zip(*by_side.values()):
        assert b.score == pytest.approx((p.score + c.score) / 2, abs=1e-6)
        assert b.extra["score_prompt"] == pytest.approx(p.score, abs=1e-6)
        assert c.extra["class_scores"][c.label] == pytest.approx(c.score, abs=1e-5)
        assert set(c.extra["class_scores"]) == {"cup", "plate", "bowl"}
    # 3 prompts + 3 class texts, each encoded once across three calls
    assert cache.encoded_count == 6


def test_score_items_reports_progress(bundle):
    calls = []
    score_items(bundle, _items(), "prompt", batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(2, 3), (3, 3)]


def test_similarities_matrix():
    a = np.eye(3, 4, dtype=np.float32)
    assert similarities(a, a[:2]).tolist() == [[1, 0], [0, 1], [0, 0]]


def test_empty_image_list(bundle):
    with pytest.raises(ClipFilterError, match="empty"):
        encode_images(bundle, [])


def test_nan_pixel_names_the_image(bundle):
    bad = _photo(32, 32, 1)
    bad[3, 4, 1] = np.nan
    with pytest.raises(ClipFilterError, match=r"image 1: 1 pixel values are NaN or Inf"):
        encode_images(bundle, [_photo(32, 32, 0), bad])
    bad[3, 4, 1] = np.inf
    with pytest.raises(ClipFilterError, match="image 0"):
        prepare_images([bad])


@pytest.mark.parametrize("img,match", [
    (np.zeros((8, 8, 2), np.float32), r"image 0: expected H x W x 3"),
    (np.zeros((0, 8, 3), np.float32), "no pixels"),
    (np.full((8, 8, 3), 255.0, np.float32), r"span \[255, 255\]; expected \[0, 1\]"),
    (np.zeros((8, 8, 3), np.int64), "pixel type int64"),
])
def test_bad_image_inputs(img, match):
    with pytest.raises(ClipFilterError, match=match):
        prepare_images([img])


def test_missing_label_names_the_item(bundle):
    items = _items()
    items[1].label = ""
    with pytest.raises(ClipFilterError, match=r"item 1 \(sampler index 1\): label is missing"):
        score_items(bundle, items, "prompt")
    items[1].label = None
    with pytest.raises(ClipFilterError, match="item 1"):
        score_items(bundle, items, "prompt")


def test_missing_class_text_and_bad_side(bundle):
    items = _items()
    items[2].metadata = {}
    with pytest.raises(ClipFilterError, match=r"item 2 .*no class text for label 'cup'"):
        score_items(bundle, items, "class_text")
    cache = TextEmbeddingCache(bundle)
    score_items(bundle, items, "class_text", class_texts={"cup": "a cup!", "plate": "a plate"},
                text_cache=cache)
    # item 2 falls back to class_texts["cup"]; items 0 and 1 keep their metadata clip_text
    expected = cache.encode(["a cup", "a plate", "a cup!"])
    got = [float(it.embedding @ e) for it, e in zip(items, expected)]
    assert [it.score for it in items] == pytest.approx(got, abs=1e-5)
    with pytest.raises(ClipFilterError, match="unknown text side 'caption'"):
        score_items(bundle, items, "caption")
    with pytest.raises(ClipFilterError, match="text 1"):
        TextEmbeddingCache(bundle).encode(["ok", "  "])


def test_torch_image_batch_is_encoded_as_the_arrays(bundle):
    """ComfyUI's IMAGE (N x H x W x 3 tensor) goes to the device as it is; same embeddings."""
    import torch

    images = [_photo(90, 130, 20 + i) for i in range(3)]
    batch = torch.from_numpy(np.stack(images))
    np.testing.assert_allclose(encode_images(bundle, batch, batch_size=2), encode_images(bundle, images),
                               atol=1e-5)
    u8 = (batch * 255).round().to(torch.uint8)
    np.testing.assert_allclose(encode_images(bundle, u8), encode_images(bundle, [np.asarray(u8[i]) for i in range(3)]),
                               atol=1e-5)
    bad = batch.clone()
    bad[1, 2, 3, 0] = float("nan")
    with pytest.raises(ClipFilterError, match=r"image 1: 1 pixel values are NaN or Inf"):
        encode_images(bundle, bad)
    with pytest.raises(ClipFilterError, match=r"images: pixel values span \[.*, 2\]; expected \[0, 1\]"):
        encode_images(bundle, batch * 2)
    with pytest.raises(ClipFilterError, match="expected N x H x W x 3"):
        encode_images(bundle, batch.permute(0, 3, 1, 2)[:, :2])


def test_inputs_at_model_size_are_not_modified(bundle):
    """Without a resize the model input starts as a view of the caller's pixels: normalising
    must not write into them."""
    import torch

    img = _photo(224, 224, 30)
    keep = img.copy()
    encode_images(bundle, [img])
    batch = torch.from_numpy(np.stack([img, img]))
    encode_images(bundle, batch)
    assert np.array_equal(img, keep) and np.array_equal(batch[0].numpy(), keep)
