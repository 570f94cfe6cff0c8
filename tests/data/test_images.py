"""read_image on every Pillow mode and failure, to_rgb_array on every input kind, list_images, is_video."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastinst.data.images import is_video, list_images, read_image, to_rgb_array
from fastinst.errors import FastInstError, ImageReadError


def _rgb(h: int = 24, w: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (xx + yy) % 256], axis=2).astype(np.uint8)


def _check(arr: np.ndarray, shape: tuple[int, int]) -> None:
    assert arr.dtype == np.uint8 and arr.shape == (*shape, 3) and arr.flags.c_contiguous


@pytest.mark.parametrize(
    "mode,ext",
    [
        ("RGB", "png"),
        ("RGB", "jpg"),
        ("RGBA", "png"),
        ("L", "png"),
        ("L", "jpg"),
        ("LA", "png"),
        ("P", "png"),
        ("P", "gif"),
        ("1", "png"),
        ("1", "bmp"),
        ("CMYK", "tiff"),
        ("YCbCr", "tiff"),
        ("RGB", "webp"),
        ("RGB", "tiff"),
        ("RGB", "bmp"),
        ("L", "pgm"),
    ],
)
def test_modes_decode_to_rgb(tmp_path: Path, mode: str, ext: str) -> None:
    src = Image.fromarray(_rgb()).convert(mode)
    f = tmp_path / f"img.{ext}"
    src.save(f)
    out = read_image(f)
    _check(out, (24, 32))
    if mode in ("RGB", "RGBA", "CMYK") and ext in ("png", "tiff", "bmp"):
        assert np.array_equal(out, _rgb())


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent red: alpha is ignored, not composited
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert np.all(read_image(tmp_path / "a.png") == [200, 0, 0])


def test_gray_and_la_replicate_channels(tmp_path: Path) -> None:
    gray = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
    Image.fromarray(gray).convert("LA").save(tmp_path / "la.png")
    out = read_image(tmp_path / "la.png")
    assert np.array_equal(out[..., 0], gray) and np.array_equal(out[..., 1], gray) and np.array_equal(out[..., 2], gray)


def test_palette_with_transparency(tmp_path: Path) -> None:
    p = Image.new("P", (10, 6), 1)
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    p.info["transparency"] = 1
    p.save(tmp_path / "p.png", transparency=1)
    assert Image.open(tmp_path / "p.png").mode == "P"
    out = read_image(tmp_path / "p.png")
    _check(out, (6, 10))
    assert np.all(out == [10, 200, 30])


def test_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    r, g, b = read_image(tmp_path / "c.jpg").reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60  # pure red


@pytest.mark.parametrize("ext,dtype", [("png", "<u2"), ("tiff", "<u2"), ("tiff", ">u2")])
def test_16_bit_full_range_shifts_to_8_bit(tmp_path: Path, ext: str, dtype: str) -> None:
    arr = np.array([[0, 0x00FF, 0x0100, 0xABCD], [0x8000, 0xFFFF, 0x1234, 0x7FFF]], dtype=dtype)
    mode = "I;16B" if dtype == ">u2" else "I;16"
    Image.frombytes(mode, (4, 2), arr.tobytes()).save(tmp_path / f"x.{ext}")
    assert Image.open(tmp_path / f"x.{ext}").mode.startswith("I;16")
    out = read_image(tmp_path / f"x.{ext}")
    assert np.array_equal(out[..., 0], (arr.astype(np.uint16) >> 8).astype(np.uint8))


@pytest.mark.parametrize("ext", ["png", "tiff"])
@pytest.mark.parametrize("top,shift", [(235, 0), (4095, 4), (1023, 2)])
def test_16_bit_camera_data_keeps_its_picture(tmp_path: Path, ext: str, top: int, shift: int) -> None:
    """16-bit files holding 8-, 10- or 12-bit data are scaled by the bits they use, not shifted to black."""
    ramp = np.linspace(0, top, 64 * 48).round().astype("<u2").reshape(48, 64)
    Image.frombytes("I;16", (64, 48), ramp.tobytes()).save(tmp_path / f"cam.{ext}")
    out = read_image(tmp_path / f"cam.{ext}")
    assert np.array_equal(out[..., 1], (ramp >> shift).astype(np.uint8))
    assert out.max() >= 127  # a picture, not black


def test_constant_image_warns_in_one_line(tmp_path: Path, capsys) -> None:
    Image.frombytes("I;16", (8, 4), np.full((4, 8), 300, "<u2").tobytes()).save(tmp_path / "flat.tiff")
    read_image(tmp_path / "flat.tiff")
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: {tmp_path / 'flat.tiff'}: decodes to a constant image (every pixel 150)"]


def test_int32_and_float_modes(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 100], [200, 255]], np.int32)).save(tmp_path / "i8.tiff")
    assert np.array_equal(read_image(tmp_path / "i8.tiff")[..., 0], [[0, 100], [200, 255]])
    Image.fromarray(np.array([[0, 256], [4096, 65535]], np.int32)).save(tmp_path / "i16.tiff")
    assert np.array_equal(read_image(tmp_path / "i16.tiff")[..., 0], [[0, 1], [16, 255]])
    Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)).save(tmp_path / "f1.tiff")
    assert np.array_equal(read_image(tmp_path / "f1.tiff")[..., 1], [[0, 128], [255, 64]])
    Image.fromarray(np.array([[-1.0, 0.0], [1.0, np.nan]], np.float32)).save(tmp_path / "fx.tiff")
    assert np.array_equal(read_image(tmp_path / "fx.tiff")[..., 2], [[0, 128], [255, 128]])


def test_exif_orientation_applied(tmp_path: Path) -> None:
    img = Image.fromarray(_rgb(20, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    img.save(tmp_path / "rot.jpg", exif=exif)
    _check(read_image(tmp_path / "rot.jpg"), (40, 20))
    _check(read_image(tmp_path / "rot.jpg", exif=False), (20, 40))
    green = read_image(tmp_path / "rot.jpg")[..., 1].astype(int)
    assert green[:, 0].mean() > 200 and green[:, -1].mean() < 55  # original bottom row (G high) is now on the left


def test_missing_empty_text_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "nope.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.png.*0 bytes"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "notes.jpg").write_text("this is not a picture\n")
    with pytest.raises(ImageReadError, match=r"notes\.jpg: not an image"):
        read_image(tmp_path / "notes.jpg")
    with pytest.raises(ImageReadError, match="not a file"):
        read_image(tmp_path)
    assert issubclass(ImageReadError, FastInstError)


@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_truncated_file(tmp_path: Path, ext: str) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    f = tmp_path / f"full.{ext}"
    Image.fromarray(noise).save(f)
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ImageReadError, match=r"cut\.(jpg|png).*(truncated|corrupt)") as e:
        read_image(cut)
    assert "\n" not in str(e.value)


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_decompression_bomb_refused(tmp_path: Path) -> None:
    f = tmp_path / "bomb.png"
    f.write_bytes(_png_header(100_000, 100_000))  # claims 10 gigapixels in ~60 bytes
    with pytest.raises(ImageReadError, match=r"bomb\.png.*100000x100000.*megapixels"):
        read_image(f)
    Image.fromarray(_rgb()).save(tmp_path / "small.png")
    with pytest.raises(ImageReadError, match="over the limit"):
        read_image(tmp_path / "small.png", max_pixels=100)
    _check(read_image(tmp_path / "small.png", max_pixels=None), (24, 32))
    assert Image.MAX_IMAGE_PIXELS is not None  # the global limit is restored


def test_to_rgb_array_numpy() -> None:
    rgb = _rgb()
    out = to_rgb_array(rgb)
    assert np.array_equal(out, rgb) and not np.shares_memory(out, rgb)
    assert np.array_equal(to_rgb_array(rgb[..., 0])[..., 2], rgb[..., 0])
    assert np.array_equal(to_rgb_array(rgb[..., :1]), np.repeat(rgb[..., :1], 3, 2))
    rgba = np.concatenate([rgb, np.zeros_like(rgb[..., :1])], axis=2)
    assert np.array_equal(to_rgb_array(rgba), rgb)
    assert np.array_equal(to_rgb_array(rgb.astype(np.float32) / 255.0), rgb)
    assert np.array_equal(to_rgb_array(rgb.astype(np.float64)), rgb)
    assert np.array_equal(to_rgb_array(rgb.astype(np.uint16) << 8), rgb)
    assert np.array_equal(to_rgb_array(rgb.astype(np.int64)), rgb)
    assert to_rgb_array(np.ones((4, 5), bool)).max() == 255
    _check(to_rgb_array(rgb[:, ::-1]), (24, 32))  # negative strides are fine


def test_to_rgb_array_pil_path_tensor(tmp_path: Path) -> None:
    rgb = _rgb()
    assert np.array_equal(to_rgb_array(Image.fromarray(rgb)), rgb)
    assert np.array_equal(to_rgb_array(Image.fromarray(rgb).convert("RGBA")), rgb)
    _check(to_rgb_array(Image.fromarray(rgb).convert("L")), (24, 32))
    Image.fromarray(rgb).save(tmp_path / "a.png")
    assert np.array_equal(to_rgb_array(tmp_path / "a.png"), rgb)
    assert np.array_equal(to_rgb_array(str(tmp_path / "a.png")), rgb)
    t = torch.from_numpy(rgb)
    assert np.array_equal(to_rgb_array(t), rgb)  # H×W×C uint8
    assert np.array_equal(to_rgb_array(t.permute(2, 0, 1)), rgb)  # C×H×W uint8
    assert np.array_equal(to_rgb_array(t.permute(2, 0, 1).float() / 255), rgb)  # C×H×W float 0..1
    assert np.array_equal(to_rgb_array(t.float()), rgb)  # H×W×C float 0..255
    assert np.array_equal(to_rgb_array(t.permute(2, 0, 1).to(torch.bfloat16) / 255)[..., 0] > 128, rgb[..., 0] > 128)
    _check(to_rgb_array(t[..., 0]), (24, 32))


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.zeros((2, 24, 32, 3), np.uint8), "shape 2x24x32x3"),
        (np.zeros((24, 32, 2), np.uint8), "shape 24x32x2"),
        (np.zeros((3, 24, 32), np.uint8), "channels-first"),
        (np.zeros((0, 5, 3), np.uint8), "empty"),
        (np.full((4, 4), -3, np.int32), "values -3"),
        (np.zeros((4, 4), complex), "dtype"),
        (torch.zeros(2, 3, 8, 8), "tensor has shape 2x3x8x8"),
        ([[1, 2], [3, 4]], "cannot use a list"),
    ],
)
def test_to_rgb_array_errors(bad: object, match: str) -> None:
    with pytest.raises(ImageReadError, match=match):
        to_rgb_array(bad)


def test_list_images_and_is_video(tmp_path: Path) -> None:
    for name in ["b.PNG", "a.jpg", "c.txt", ".hidden.jpg", "clip.mp4", "sub/d.jpeg"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert list_images(tmp_path) == [tmp_path / "a.jpg", tmp_path / "b.PNG"]
    assert list_images(tmp_path, recursive=True) == [tmp_path / "a.jpg", tmp_path / "b.PNG", tmp_path / "sub/d.jpeg"]
    assert list_images(str(tmp_path / "*.jpg")) == [tmp_path / "a.jpg"]
    assert list_images(str(tmp_path / "**" / "*"), recursive=True) == list_images(tmp_path, recursive=True)
    assert list_images(tmp_path / "c.txt") == [tmp_path / "c.txt"]  # an explicit file is taken as given
    assert list_images(str(tmp_path / "*.gif")) == []
    with pytest.raises(ImageReadError, match="no such file or folder"):
        list_images(tmp_path / "missing")
    assert is_video("a/b/clip.MP4") and is_video(Path("x.mkv")) and not is_video("x.jpg") and not is_video("mp4")


def test_unsupported_mode_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    """A mode Pillow cannot convert to RGB (simulated: Pillow's RGB conversion refuses it) names file and mode."""
    Image.new("CMYK", (8, 8)).save(tmp_path / "odd.tif")
    real = Image.Image.convert

    def refuse(self, mode=None, *a, **k):
        if mode == "RGB":
            raise ValueError("conversion not supported")
        return real(self, mode, *a, **k)

    monkeypatch.setattr(Image.Image, "convert", refuse)
    with pytest.raises(ImageReadError, match=r"odd\.tif.*unsupported image mode 'CMYK'") as e:
        read_image(tmp_path / "odd.tif")
    assert "\n" not in str(e.value)
