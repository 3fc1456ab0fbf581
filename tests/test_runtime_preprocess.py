"""runtime.image.preprocess: every image mode, EXIF, resize policies, draft decoding, bad files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from runtime.errors import ImageError
from runtime.image.preprocess import MAX_PIXELS, load_image, prepare, prepare_array, resize_to_input, to_batch
from runtime.model.contract import InputContract

RED = (255, 0, 0)


def _save(image: Image.Image, path, **kw):
    image.save(path, **kw)
    return path


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "LA", "CMYK", "1", "I;16", "I", "F"])
def test_every_mode_becomes_rgb(mode):
    image = Image.new("RGB", (48, 40), (200, 100, 50)).convert(mode)
    out = prepare(image)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


@pytest.mark.parametrize("suffix,mode", [(".png", "L"), (".png", "P"), (".png", "RGBA"),
                                         (".jpg", "CMYK"), (".png", "I;16"), (".gif", "P"),
                                         (".bmp", "RGB"), (".webp", "RGB"), (".tiff", "RGB")])
def test_files_in_every_mode(tmp_path, suffix, mode):
    if mode == "I;16":
        image = Image.fromarray(np.full((40, 40), 65535, np.uint16))  # 16-bit white
    else:
        image = Image.new("RGB", (40, 40), (255, 255, 255)).convert(mode)
    path = _save(image, tmp_path / f"img{suffix}")
    out = prepare(path)
    assert out.shape == (32, 32, 3)
    assert out.mean() > 240  # white stays white: 16-bit scaled down, not clipped or wrapped


def test_transparency_composited_on_white():
    image = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    assert prepare(image).min() == 255


def test_exif_orientation_is_applied(tmp_path):
    # Stored landscape: left half red, right half blue; EXIF 6 = rotate 90 CW to display.
    arr = np.zeros((32, 64, 3), np.uint8)
    arr[:, :32] = RED
    arr[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=95)
    image = load_image(path)
    assert image.size == (32, 64)  # upright: portrait
    top, bottom = np.asarray(image)[5, 16], np.asarray(image)[58, 16]
    assert top[0] > 200 and top[2] < 60  # red on top after the rotation
    assert bottom[2] > 200 and bottom[0] < 60


def test_center_crop_and_stretch():
    # 96x32: red | green | blue thirds. A centre crop sees only green; a stretch sees all three.
    arr = np.zeros((32, 96, 3), np.uint8)
    arr[:, :32, 0] = arr[:, 32:64, 1] = arr[:, 64:, 2] = 255
    crop = prepare_array(arr, InputContract(resize="center-crop"))
    stretch = prepare_array(arr, InputContract(resize="stretch"))
    assert crop[:, :, 1].min() > 200 and crop[:, :, 0].max() < 60
    assert stretch[:, 0, 0].mean() > 200 and stretch[:, -1, 2].mean() > 200


def test_resize_policy_unknown_is_an_error():
    with pytest.raises(ImageError, match="resize policy"):
        resize_to_input(Image.new("RGB", (40, 40)), InputContract(resize="letterbox"))


def test_non_square_contract_and_identity():
    contract = InputContract(height=24, width=48)
    assert prepare(Image.new("RGB", (100, 100)), contract).shape == (24, 48, 3)
    arr = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert np.array_equal(prepare_array(arr), arr)  # already the right size: untouched


def test_large_jpeg_is_decoded_in_draft_mode(tmp_path):
    path = _save(Image.new("RGB", (2000, 1600), (10, 200, 30)), tmp_path / "big.jpg", quality=80)
    assert load_image(path).size == (2000, 1600)
    drafted = load_image(path, draft_size=(64, 64))
    assert drafted.size[0] < 2000 and min(drafted.size) >= 64  # reduced, never below the target
    assert prepare(path).shape == (32, 32, 3)


def test_prepare_array_validates_and_clips():
    with pytest.raises(ImageError, match="RGB array"):
        prepare_array(np.zeros((32, 32), np.uint8))
    out = prepare_array(np.full((32, 32, 3), 300.0))
    assert out.dtype == np.uint8 and out.max() == 255


def test_to_batch_is_raw_float32_nhwc():
    hwc = np.full((32, 32, 3), 200, np.uint8)
    batch = to_batch([hwc, hwc])
    assert batch.shape == (2, 32, 32, 3) and batch.dtype == np.float32 and batch.max() == 200.0
    assert to_batch(hwc).shape == (1, 32, 32, 3)
    assert to_batch([hwc], InputContract(layout="NCHW")).shape == (1, 3, 32, 32)


# -- bad inputs: each a clear ImageError naming the file --------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        prepare(tmp_path / "nope.jpg")


def test_directory(tmp_path):
    with pytest.raises(ImageError, match="directory"):
        prepare(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        prepare(tmp_path / "empty.jpg")


def test_not_an_image(tmp_path):
    (tmp_path / "notes.jpg").write_text("hello, I am text")
    with pytest.raises(ImageError, match="not an image"):
        prepare(tmp_path / "notes.jpg")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(tmp_path, fmt):
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, format=fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match=str(path.name)):
        prepare(path)


def test_decompression_bomb(tmp_path):
    # A 1-bit PNG claiming ~64 Mpx compresses to a few kB: refused before decoding.
    side = int(MAX_PIXELS ** 0.5) + 1000
    path = _save(Image.new("1", (side, side)), tmp_path / "bomb.png")
    assert path.stat().st_size < 200_000
    with pytest.raises(ImageError, match="decompression bomb"):
        prepare(path)


def test_bytes_decode_as_the_file_does_with_a_reason_for_each_refusal(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(path)
    from_file, from_bytes = load_image(path, (64, 64)), load_image(path.read_bytes(), (64, 64), name="photo.jpg")
    assert from_file.size == from_bytes.size and np.array_equal(np.asarray(from_file), np.asarray(from_bytes))
    for data, reason in ((b"", "empty"), (b"%PDF-1.4", "not_image"), (path.read_bytes()[:200], "corrupt")):
        with pytest.raises(ImageError) as caught:
            load_image(data, name="upload.bin")
        assert caught.value.reason == reason and str(caught.value).startswith("upload.bin: ")
    with pytest.raises(ImageError) as caught:
        load_image(tmp_path / "nowhere.jpg")
    assert caught.value.reason == "missing"


def _encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def test_decode_budget_refuses_from_the_header(monkeypatch):
    """With max_bytes, a file whose decoding would hold more memory is refused before a pixel
    is decoded; the estimate counts Pillow's bytes per pixel and the conversion to RGB."""
    from PIL import ImageFile

    from runtime.image.preprocess import decode_bytes

    assert decode_bytes("L", (100, 100)) == 100 * 100 * (1 + 4)  # L, then an RGB copy (4 bytes stored)
    assert decode_bytes("RGB", (100, 100)) == 100 * 100 * 4
    assert decode_bytes("RGB", (100, 100), upright=False) == 100 * 100 * 8  # and its turned copy
    assert decode_bytes("RGBA", (100, 100)) == 100 * 100 * 12  # itself, a white background, the composite
    png = _encoded(Image.new("RGBA", (1000, 1000), (255, 0, 0, 128)), "PNG")  # 11 MB to decode, 4 kB to send
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded before the budget check"))
    with pytest.raises(ImageError) as caught:
        load_image(png, name="big.png", max_bytes=2 * 2**20)
    assert caught.value.reason == "too_large" and "1000x1000 RGBA takes about 11 MB" in str(caught.value)


def test_a_large_jpeg_fits_the_budget_decoded_reduced():
    jpeg = _encoded(Image.new("RGB", (3000, 2000), RED), "JPEG")  # 23 MB to decode whole, 1/64 drafted
    with pytest.raises(ImageError, match="over this server's 2 MB"):
        load_image(jpeg, max_bytes=2 * 2**20)
    assert load_image(jpeg, (64, 64), max_bytes=2 * 2**20).size == (375, 250)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA"])
def test_transparency_composites_onto_white_as_before(mode):
    """RGBA is composited without a copy of itself now: the pixels are those of the copy."""
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (20, 30, 4), dtype=np.uint8), "RGBA").convert(mode)
    rgba = image.convert("RGBA")
    before = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    assert np.array_equal(np.asarray(load_image(image)), np.asarray(before))
