"""The one tokenizer wrapper (jointembed_pg.model.text) and the single-item encode API, on the
real bundle tokenizer and ONNX encoders."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jointembed_pg.model.bundle import Bundle
from jointembed_pg.errors import InputError, ItemError
from jointembed_pg.model.text import UNKNOWN_WARN_FRACTION, Coverage, TextTokenizer

CAPTIONS = ["a dog", "A black and white dog is running through the tall green grass .",
            "Two people sit on a bench beside a lake while ducks swim past them in the sun"]


def _hand_padded(path: Path, texts, max_tokens: int):
    """The former implementation: untruncated-then-truncated encodings, padded by hand."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.enable_truncation(max_tokens, strategy="longest_first")
    encs = tok.encode_batch(list(texts))
    length = max(len(e.ids) for e in encs)
    ids = np.zeros((len(encs), length), np.int64)
    mask = np.zeros((len(encs), length), np.int64)
    for i, e in enumerate(encs):
        ids[i, :len(e.ids)] = e.ids
        mask[i, :len(e.ids)] = 1
    return ids, mask


@pytest.mark.parametrize("max_tokens", [128, 8])
def test_library_padding_and_truncation_match_hand_padding(bundle_dir: Path, max_tokens):
    tok = TextTokenizer(bundle_dir / "tokenizer.json", max_tokens)
    with pytest.warns() if max_tokens == 8 else _nothing():
        ids, mask = tok.encode(CAPTIONS)
    want_ids, want_mask = _hand_padded(bundle_dir / "tokenizer.json", CAPTIONS, max_tokens)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(mask, want_mask)
    assert ids.dtype == mask.dtype == np.int64 and ids.shape[1] <= max_tokens


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_training_tokenize_is_the_runtime_wrapper(bundle_dir: Path):
    torch = pytest.importorskip("torch")
    from jointembed_train.features import tokenize

    ids, mask = tokenize(CAPTIONS, 128)
    want_ids, want_mask = _hand_padded(bundle_dir / "tokenizer.json", CAPTIONS, 128)
    assert ids.dtype == torch.int64
    np.testing.assert_array_equal(ids.numpy(), want_ids)
    np.testing.assert_array_equal(mask.numpy(), want_mask)


def test_coverage_counts_unknown_word_pieces(bundle: Bundle):
    tok = bundle.tokenizer
    assert tok.coverage("a dog runs") == Coverage(3, 0)
    assert tok.coverage("🐶") == Coverage(1, 1) and tok.coverage("🐶").unreadable
    mixed = tok.coverage("a dog 🐶 🚀 🎉")
    assert mixed == Coverage(5, 3) and mixed.mostly_unknown and not mixed.unreadable
    assert not tok.coverage("a dog 🐶").mostly_unknown  # 1 of 3 <= 0.5
    assert tok.coverage("a 🐶").unknown_fraction == 0.5 == UNKNOWN_WARN_FRACTION  # the threshold is exclusive
    assert not tok.coverage("a 🐶").mostly_unknown
    assert tok.coverage("\u200b") == Coverage(0, 0) and tok.coverage("\u200b").unreadable


def test_unreadable_texts_refused_with_reason(bundle: Bundle):
    with pytest.raises(ItemError) as e:
        bundle.encode_texts(["a dog on the grass", "🐶"])
    assert e.value.index == 1 and e.value.label == "texts[1]"
    assert e.value.for_item("caps.csv:3") == "caps.csv:3: cannot embed '🐶': 1 of 1 word pieces are unknown " \
                                              "to the tokenizer ([UNK])"
    # "🐶" and "🚀" would embed identically: that is why they are refused
    ids1, _ = bundle.tokenizer.encode(["🐶"])
    ids2, _ = bundle.tokenizer.encode(["🚀"])
    np.testing.assert_array_equal(ids1, ids2)


def test_one_string_gives_one_vector(bundle: Bundle):
    one = bundle.encode_texts("a dog runs on the beach")
    many = bundle.encode_texts(["a dog runs on the beach"])
    assert one.shape == (bundle.dim,) and many.shape == (1, bundle.dim) and one.dtype == np.float32
    np.testing.assert_array_equal(one, many[0])
    with pytest.raises(ItemError, match=r"^text: empty"):
        bundle.encode_texts("  ")


def test_one_image_gives_one_vector(bundle: Bundle, flickr8k_dir: Path):
    path = sorted((flickr8k_dir / "images").glob("*.jpg"))[0]
    for single in (path, str(path), path.read_bytes()):
        v = bundle.encode_images(single)
        assert v.shape == (bundle.dim,) and v.dtype == np.float32
    np.testing.assert_allclose(bundle.encode_images(path), bundle.encode_images([path])[0], atol=1e-6)
    assert bundle.encode_images([path, path]).shape == (2, bundle.dim)
    with pytest.raises(InputError) as e:
        bundle.encode_images(path.parent / "nope.jpg")
    assert not isinstance(e.value, ItemError) and "images[" not in str(e.value) and "nope.jpg" in str(e.value)
