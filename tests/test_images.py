"""The digits data module: splits, sequence views, captions, video frames, the optional extra."""

import builtins

import numpy as np
import pytest

from rnn_jax.data import images as imagedata
from rnn_jax.errors import UserError


def _toy(n_per_class=10, seed=0) -> imagedata.DigitSplit:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(imagedata.NUM_CLASSES, dtype=np.int32), n_per_class)
    return imagedata.DigitSplit(rng.random((labels.size, 8, 8), dtype=np.float32), labels)


def test_load_digits_scaled_and_complete():
    pytest.importorskip("sklearn")
    data = imagedata.load_digits()
    assert data.images.shape == (1797, 8, 8) and data.images.dtype == np.float32
    assert data.labels.shape == (1797,) and data.labels.dtype == np.int32
    assert data.images.min() == 0.0 and data.images.max() == 1.0
    assert set(np.unique(data.labels)) == set(range(10))


def test_missing_scikit_learn_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(UserError, match=r"rnn-jax\[digits\]"):
        imagedata.load_digits()


def test_split_is_disjoint_stratified_and_seeded():
    data = _toy(n_per_class=20)
    splits = imagedata.split_digits(data, seed=3, val_fraction=0.1, test_fraction=0.25)
    sizes = [len(s.labels) for s in splits]
    assert sizes == [130, 20, 50]
    for s in splits:  # each class in the same proportion
        counts = np.bincount(s.labels, minlength=10)
        assert (counts == counts[0]).all()
    # Disjoint and complete: every toy image is unique, so compare the images themselves.
    keys = [img.tobytes() for s in splits for img in s.images]
    assert len(set(keys)) == len(keys) == len(data.labels)
    # The label of each image travels with it.
    lookup = {img.tobytes(): lab for img, lab in zip(data.images, data.labels, strict=True)}
    for s in splits:
        assert all(lookup[img.tobytes()] == lab for img, lab in zip(s.images, s.labels, strict=True))
    again = imagedata.split_digits(data, seed=3, val_fraction=0.1, test_fraction=0.25)
    other = imagedata.split_digits(data, seed=4, val_fraction=0.1, test_fraction=0.25)
    np.testing.assert_array_equal(splits.test.images, again.test.images)
    assert not np.array_equal(splits.test.images, other.test.images)


@pytest.mark.parametrize("val, test", [(0.5, 0.5), (-0.1, 0.2), (0.1, 0.0)])
def test_split_rejects_bad_fractions(val, test):
    with pytest.raises(UserError, match="fraction"):
        imagedata.split_digits(_toy(), val_fraction=val, test_fraction=test)


def test_rows_and_pixels_views():
    x = np.arange(3 * 64, dtype=np.float32).reshape(3, 8, 8)
    np.testing.assert_array_equal(imagedata.as_rows(x)[1, 2], x[1, 2])
    pixels = imagedata.as_pixels(x)
    assert pixels.shape == (3, 64, 1)
    np.testing.assert_array_equal(pixels[1, 8 * 2 + 5, 0], x[1, 2, 5])  # raster order
    with pytest.raises(ValueError, match=r"\[\.\.\., 8, 8\]"):
        imagedata.as_rows(np.zeros((3, 7, 8)))


def test_quantize():
    x = np.array([0.0, 0.1, 0.49, 0.51, 1.0, 1.3])
    np.testing.assert_array_equal(imagedata.quantize(x, 3), [0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="levels"):
        imagedata.quantize(x, 1)


def test_caption_tokens_round_trip():
    labels = np.array([7, 1, 3, 0])
    inputs, targets, lengths = imagedata.caption_tokens(labels)
    assert inputs.shape == targets.shape == (4, 6)
    np.testing.assert_array_equal(lengths, [6, 4, 6, 5])
    assert (inputs[:, 0] == imagedata.START).all()
    np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])  # shifted by one step
    for lab, tgt, n in zip(labels, targets, lengths, strict=True):
        assert imagedata.decode_caption(tgt) == imagedata.CLASS_NAMES[lab]
        assert tgt[n - 1] == imagedata.END
    assert imagedata.decode_caption(inputs[0]) == "seven"  # the start token is skipped
    with pytest.raises(ValueError, match="labels"):
        imagedata.caption_tokens(np.array([10]))


def test_video_frames_noise_and_occlusion():
    images = _toy(n_per_class=1).images[:3]
    clean = imagedata.video_frames(images, n_frames=5, noise=0.0, occlusion=0)
    assert clean.shape == (3, 5, 8, 8) and clean.dtype == np.float32
    np.testing.assert_array_equal(clean, np.broadcast_to(images[:, None], clean.shape))

    occluded = imagedata.video_frames(np.ones((2, 8, 8)), n_frames=4, noise=0.0, occlusion=3, seed=1)
    zeros = (occluded == 0).reshape(2, 4, 64).sum(-1)
    assert (zeros == 9).all()  # exactly one 3x3 square per frame
    assert len({f.tobytes() for f in occluded.reshape(8, 8, 8)}) > 1  # the occluder moves

    noisy = imagedata.video_frames(images, n_frames=6, noise=0.3, occlusion=2, seed=2)
    assert noisy.min() >= 0 and noisy.max() <= 1
    assert not np.array_equal(noisy[:, 0], noisy[:, 1])  # fresh noise each frame
    np.testing.assert_array_equal(noisy, imagedata.video_frames(images, n_frames=6, noise=0.3, occlusion=2, seed=2))


@pytest.mark.parametrize("kwargs", [{"n_frames": 0}, {"noise": -1.0}, {"occlusion": 9}])
def test_video_frames_rejects_bad_arguments(kwargs):
    args = {"n_frames": 3, "noise": 0.1, "occlusion": 2} | kwargs
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        imagedata.video_frames(np.zeros((1, 8, 8)), **args)


def test_sliding_patches():
    x = np.arange(2 * 64, dtype=np.float32).reshape(2, 8, 8)
    patches, corners = imagedata.sliding_patches(x, 3)
    assert patches.shape == (2, 36, 9) and corners.shape == (36, 2)
    for n in (0, 7, 35):
        r, c = corners[n]
        np.testing.assert_array_equal(patches[1, n], x[1, r : r + 3, c : c + 3].ravel())
    np.testing.assert_array_equal(corners[[0, 5, 6, 35]], [[0, 0], [0, 5], [1, 0], [5, 5]])
    whole, _ = imagedata.sliding_patches(x, 8)
    np.testing.assert_array_equal(whole[:, 0], x.reshape(2, 64))
    with pytest.raises(ValueError, match="patch size"):
        imagedata.sliding_patches(x, 9)
