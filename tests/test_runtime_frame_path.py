"""runtime.image.preprocess on arrays (the camera's frame path): close to the full resize it replaced,
the same in RGB and BGR, exact where nothing is resized, and fine with odd shapes and views.
Timings are in scripts/bench_frame_path.py, not here."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from runtime.errors import ImageError
from runtime.image.preprocess import crop_box, prepare, prepare_array, resize_to_input
from runtime.model.contract import InputContract

SIZES = [(640, 480), (480, 640), (1920, 1080), (1080, 1920), (100, 300), (3000, 40), (40, 3000)]
POLICIES = ["center-crop", "stretch"]


def scene(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A made-up camera frame: shapes on a background, upscaled, with sensor noise.
    (height, width, 3) uint8 RGB."""
    rng = np.random.default_rng(seed)
    colour = lambda: tuple(int(v) for v in rng.integers(0, 256, 3))  # noqa: E731
    small = Image.new("RGB", (64, 48), colour())
    draw = ImageDraw.Draw(small)
    for _ in range(6):
        x0, y0 = rng.integers(0, 56), rng.integers(0, 40)
        draw.ellipse((x0, y0, x0 + rng.integers(4, 30), y0 + rng.integers(4, 30)), fill=colour())
    pixels = np.asarray(small.resize((width, height), Image.Resampling.BICUBIC)).astype(np.int16)
    pixels += np.rint(rng.normal(0.0, 3.0, pixels.shape)).astype(np.int16)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def full_resize(image_rgb: np.ndarray, contract: InputContract) -> np.ndarray:
    """The path before the speed-up: Pillow's bicubic resize of the policy's box, all pixels read."""
    height, width = image_rgb.shape[:2]
    box = crop_box(width, height, contract)
    return np.asarray(Image.fromarray(image_rgb).resize((contract.width, contract.height),
                                                        Image.Resampling.BICUBIC, box=box))


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("size", SIZES)
def test_close_to_the_full_resize(size, policy):
    contract = InputContract(resize=policy)
    frame = scene(*size)
    diff = np.abs(prepare_array(frame, contract).astype(int) - full_resize(frame, contract))
    # Box reduction and reading every n-th row of a large frame move a pixel by about one grey
    # level on average; only sharp edges move by more.
    assert diff.mean() < 1.5 and diff.max() <= 20


@pytest.mark.parametrize("size", [(33, 32), (64, 48), (200, 150), (150, 200)])
def test_small_arrays_equal_the_pil_path(size):
    # Below the row-skipping threshold an array and the same pixels as a PIL image (the file
    # path) are resized identically: one preprocessing function.
    frame = scene(*size)
    for policy in POLICIES:
        contract = InputContract(resize=policy)
        by_array = prepare_array(frame, contract)
        assert np.array_equal(by_array, np.asarray(resize_to_input(Image.fromarray(frame), contract)))
        assert np.array_equal(by_array, prepare(Image.fromarray(frame), contract))


@pytest.mark.parametrize("size", [(32, 32), (640, 480), (1920, 1080), (7, 300)])
def test_bgr_and_rgb_give_the_same_result(size):
    rgb = scene(*size)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    expected = prepare_array(rgb)
    assert np.array_equal(prepare_array(bgr, color_order="BGR"), expected)
    assert np.array_equal(prepare_array(rgb[:, :, ::-1], color_order="BGR"), expected)  # a view


def test_views_read_like_copies():
    frame = scene(1280, 720)
    for view in (frame[100:600, 300:1000], frame[:, ::-1], frame[::-1], frame[::2, ::3]):
        assert np.array_equal(prepare_array(view), prepare_array(np.ascontiguousarray(view)))


def test_32x32_input_is_returned_unchanged():
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for policy in POLICIES:
        contract = InputContract(resize=policy)
        assert np.array_equal(prepare_array(rgb, contract), rgb)
        assert np.array_equal(prepare_array(np.ascontiguousarray(rgb[:, :, ::-1]), contract, "BGR"), rgb)


def test_32x32_file_is_returned_unchanged(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    assert np.array_equal(prepare(tmp_path / "x.png"), rgb)


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (1, 500), (500, 1), (4000, 2), (2, 4000), (31, 33)])
@pytest.mark.parametrize("policy", POLICIES)
def test_odd_sizes(size, policy):
    frame = scene(*size)
    out = prepare_array(frame, InputContract(resize=policy), color_order="BGR")
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_non_square_contract():
    contract = InputContract(height=24, width=48)
    for size in [(1, 1), (640, 480), (1920, 1080), (50, 2000)]:
        assert prepare_array(scene(*size), contract).shape == (24, 48, 3)


def test_flat_colour_stays_flat():
    frame = np.empty((1080, 1920, 3), np.uint8)
    frame[:] = (10, 120, 250)  # BGR
    assert (prepare_array(frame, color_order="BGR") == (250, 120, 10)).all()


def test_bad_arrays():
    with pytest.raises(ImageError, match="empty BGR frame"):
        prepare_array(np.zeros((0, 10, 3), np.uint8), color_order="BGR")
    with pytest.raises(ImageError, match="color_order"):
        prepare_array(np.zeros((8, 8, 3), np.uint8), color_order="RGBA")
