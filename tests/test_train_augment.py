import numpy as np
import pytest

from train.augment import augment_epoch


def test_flip_only_mirrors_some_images():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8)
    out = augment_epoch(x, np.random.default_rng(1), translate=0, flip=True)
    same = np.all(out == x, axis=(1, 2, 3))
    mirrored = np.all(out == x[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same | mirrored)
    assert 60 < mirrored.sum() < 140  # about half


def test_translate_is_a_shift_of_at_most_two_pixels():
    x = np.zeros((50, 32, 32, 3), np.uint8)
    x[:, 10, 12] = 255  # one bright pixel
    out = augment_epoch(x, np.random.default_rng(2), translate=2, flip=False)
    assert out.shape == x.shape and out.dtype == np.uint8
    shifts = set()
    for img in out:
        ys, xs, _ = np.nonzero(img)
        assert len(set(ys)) == 1 and len(set(xs)) == 1  # still one pixel: a pure shift
        shifts.add((ys[0] - 10, xs[0] - 12))
    assert all(abs(dy) <= 2 and abs(dx) <= 2 for dy, dx in shifts)
    assert len(shifts) > 5  # offsets really vary


def test_same_rng_same_augmentation():
    x = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    a = augment_epoch(x, np.random.default_rng([7, 3]))
    b = augment_epoch(x, np.random.default_rng([7, 3]))
    assert np.array_equal(a, b)
    assert not np.array_equal(x, a)  # the input is not modified in place… and output differs


def test_cutout_paints_one_square_of_the_mean_colour_per_image():
    from train.augment import CUTOUT_FILL

    x = np.full((100, 32, 32, 3), 255, np.uint8)
    out = augment_epoch(x, np.random.default_rng(4), translate=0, flip=False, cutout=12)
    painted = np.all(out == np.array(CUTOUT_FILL, np.uint8), axis=-1)  # (N, 32, 32)
    assert np.all(painted.sum(axis=(1, 2)) == 12 * 12)
    corners = set()
    for mask in painted:
        ys, xs = np.nonzero(mask)
        assert ys.max() - ys.min() == 11 and xs.max() - xs.min() == 11  # one 12x12 square
        corners.add((ys.min(), xs.min()))
    assert len(corners) > 50  # placed at random
    assert np.all(out[~painted] == 255)  # nothing else touched


def test_cutout_off_leaves_the_random_stream_unchanged():
    x = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    a = augment_epoch(x, np.random.default_rng(5), cutout=0)
    b = augment_epoch(x, np.random.default_rng(5), cutout=4)
    differs = np.any(a != b, axis=(1, 2, 3))
    assert differs.sum() > 0  # cutout changed images…
    assert np.all(np.sum(a != b, axis=(1, 2, 3)) <= 4 * 4 * 3)  # …but only inside its square


def test_cutout_larger_than_the_image_is_refused():
    x = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="larger than"):
        augment_epoch(x, np.random.default_rng(0), cutout=9)
