"""Reading images into the package's one image format: a numpy ``uint8`` H×W×3 RGB array.

`read_image` decodes a file fully (so truncated files fail here, not deep inside training), applies the EXIF
orientation, and converts every Pillow mode to 8-bit RGB:

* RGBA / LA / PA / RGBa: the alpha channel is dropped (no compositing), as most viewers show the colour data.
* P (palette, with or without transparency), 1-bit, L, CMYK (Adobe-inverted CMYK JPEGs are handled by Pillow),
  YCbCr, LAB, HSV: Pillow's conversion to RGB.
* 16-bit integer (``I;16``, ``I;16B``, ``I;16L``...) and 32-bit integer ``I`` within 0..65535: by the bit depth the
  data really uses (`used_bits_to_uint8`): when the largest value needs b > 8 bits, values are shifted right by b - 8
  (12-bit camera data 0..4095 → >> 4; values up to 255 are kept; the full 16-bit range → >> 8), so the picture is
  kept and images of one sensor share one scale; other ``I`` values are min-max scaled.
* colour with 16 bits a channel (RGB / RGBA / LA TIFF or PNG, which Pillow decodes to each value's high byte, so
  12-bit data would come out as 0..15): the file is decoded twice to get all 16 bits back, and the values of all
  channels together are mapped as 16-bit gray is (`used_bits_to_uint8`), alpha dropped.
* an image that decodes to a single value prints a one-line warning naming the file.
* 32-bit float ``F``: values within [0, 1] are scaled by 255, within [0, 255] are kept, anything else is min-max
  scaled; NaN becomes 0.

Every failure raises `fastinst.errors.ImageReadError` with a one-line message naming the file.
"""

from __future__ import annotations

import contextlib
import glob
import struct
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps

from ..errors import ImageReadError, note

#: What Pillow raises for a damaged, hostile or unsupported file (its errors share no base class): OSError (also
#: `UnidentifiedImageError`, "image file is truncated" and codec errors), SyntaxError ("broken PNG file"), ValueError,
#: EOFError, struct.error, IndexError / KeyError / TypeError (malformed headers), RuntimeError (also
#: NotImplementedError: unsupported variants of a format) and `DecompressionBombError`.
PIL_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    RuntimeError,
    Image.DecompressionBombError,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "is_image_file",
    "is_video",
    "list_images",
    "read_image",
    "resize_image",
    "resize_shape",
    "to_rgb_array",
]

IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".png",
        ".bmp",
        ".dib",
        ".gif",
        ".tif",
        ".tiff",
        ".webp",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
    }
)
VIDEO_EXTENSIONS = frozenset(
    {
        ".mp4",
        ".m4v",
        ".mov",
        ".avi",
        ".mkv",
        ".webm",
        ".mpg",
        ".mpeg",
        ".wmv",
        ".flv",
        ".3gp",
        ".ts",
        ".mts",
    }
)
DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own hard limit (2 × Image.MAX_IMAGE_PIXELS) at its default
_GLOB_CHARS = set("*?[")
_PIL_LIMIT_LOCK = threading.Lock()


def is_image_file(path: str | Path) -> bool:
    """Whether `path` has an image file extension (case-insensitive); the file is not opened."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def is_video(path: str | Path) -> bool:
    """Whether `path` has a video file extension (case-insensitive); the file is not opened."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _open(path: Path, max_pixels: int | None) -> Image.Image:
    """`Image.open` with our own pixel limit replacing Pillow's global decompression-bomb check."""
    with _PIL_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # we check the size ourselves below, before any pixel is decoded
        try:
            img = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        img.close()
        raise ImageReadError(
            f"{path}: image is {w}x{h} = {w * h / 1e6:.0f} megapixels, over the limit of "
            f"{max_pixels / 1e6:.0f} megapixels (possible decompression bomb; raise max_pixels)"
        )
    if w <= 0 or h <= 0:
        img.close()
        raise ImageReadError(f"{path}: image has an empty size {w}x{h}")
    return img


def read_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS, exif: bool = True) -> np.ndarray:
    """Decode the image file at `path` into a ``uint8`` H×W×3 RGB array.

    The whole file is decoded (truncated files raise), the EXIF orientation tag is applied when `exif` is true,
    and images with more than `max_pixels` pixels are refused from their header alone (``None``: no limit).
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{p}: no such file")
    if not p.is_file():
        raise ImageReadError(f"{p}: not a file")
    try:
        size = p.stat().st_size
    except OSError as e:
        raise ImageReadError(f"{p}: cannot read file ({e.strerror or e})") from None
    if size == 0:
        raise ImageReadError(f"{p}: file is empty (0 bytes)")
    try:
        img = _open(p, max_pixels)
    except ImageReadError:
        raise
    except Image.UnidentifiedImageError:
        kind = " (a video file; read it frame by frame)" if is_video(p) else ""
        raise ImageReadError(f"{p}: not an image file or an unsupported format{kind}") from None
    except PermissionError:
        raise ImageReadError(f"{p}: permission denied") from None
    except PIL_ERRORS as e:  # any other decoder failure is a bad file for the user
        raise ImageReadError(f"{p}: cannot open image ({_one_line(e)})") from None
    with img:
        wide = _sixteen_bit_colour(img)  # read before load(), which empties the tiles
        out = _decoded(p, img, exif)
        if wide is not None:  # 16 bits a channel: Pillow gave the high bytes; a second decode gives the low ones
            with _decoding(p):
                low = _low_bytes(p, max_pixels, wide)
            with low:
                out = used_bits_to_uint8((out.astype(np.uint16) << 8) | _decoded(p, low, exif))
    if out.size and out.min() == out.max():  # e.g. a 16-bit file whose data is all at one value
        note(f"{p}: decodes to a constant image (every pixel {int(out.flat[0])})", level="warning")
    return out


@contextlib.contextmanager
def _decoding(p: Path) -> Iterator[None]:
    """Decoder failures of `p` as one-line `ImageReadError`s."""
    try:
        yield
    except MemoryError:
        raise ImageReadError(f"{p}: image too large to decode in memory") from None
    except PIL_ERRORS as e:  # OSError "truncated", SyntaxError "broken PNG", ...
        raise ImageReadError(f"{p}: image data is truncated or corrupt ({_one_line(e)})") from None


def _decoded(p: Path, img: Image.Image, exif: bool) -> np.ndarray:
    """An opened image decoded, turned upright by its EXIF orientation (when `exif`), as 8-bit RGB."""
    with _decoding(p):
        img.load()
    if exif:
        try:
            img = ImageOps.exif_transpose(img) or img
        except PIL_ERRORS:  # a broken EXIF block should not lose the picture
            pass
    try:
        return _pil_to_rgb(img)
    except ValueError as e:
        raise ImageReadError(f"{p}: {e}") from None


# Pillow decodes colour images with 16 bits a channel (TIFF, PNG) to 8-bit RGB/RGBA by keeping each value's high
# byte: 12-bit camera data (0..4095) becomes 0..15, a near-black picture. Decoding the same data again with the byte
# order swapped keeps the low bytes instead; both together give the 16-bit values back.
_SWAPPED = {";16L": ";16B", ";16B": ";16L", ";16N": ";16B" if sys.byteorder == "little" else ";16L"}


def _sixteen_bit_colour(img: Image.Image) -> list[str] | None:
    """The raw mode of each tile of a not yet loaded RGB/RGBA/LA image stored with 16 bits a channel, else None."""
    if img.mode not in ("RGB", "RGBA", "LA") or not isinstance(img, ImageFile.ImageFile) or not img.tile:
        return None
    modes = []
    for tile in img.tile:
        args = tile[3]
        raw = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args else None)
        if not isinstance(raw, str) or raw[-4:] not in _SWAPPED:
            return None
        modes.append(raw)
    return modes


def _low_bytes(path: Path, max_pixels: int | None, modes: list[str]) -> Image.Image:
    """The image at `path` decoded a second time keeping the low byte of each 16-bit value (`_SWAPPED`), loaded
    (the caller closes it)."""
    img = _open(path, max_pixels)
    try:
        if not isinstance(img, ImageFile.ImageFile) or len(img.tile) != len(modes):
            raise ValueError("the file changed between two reads")
        tiles = []
        for tile, raw in zip(img.tile, modes, strict=True):
            swapped = raw[:-4] + _SWAPPED[raw[-4:]]
            args = tile[3]
            tiles.append(tile._replace(args=swapped if isinstance(args, str) else (swapped, *(args or ())[1:])))
        img.tile = tiles
        img.load()
        return img
    except BaseException:
        img.close()
        raise


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow mode → uint8 H×W×3 RGB (see the module docstring for the rules)."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img)
        return _gray_to_rgb(_scale_to_uint8(arr, sixteen_bit=mode.startswith("I;16")))
    if mode == "P":
        # A palette with transparency: go through RGBA (avoids Pillow's warning), then drop alpha.
        img = img.convert("RGBA") if "transparency" in img.info else img
    elif mode in ("LA", "La", "PA"):
        img = img.convert("RGBA")
    try:
        out = img.convert("RGB")
    except (ValueError, OSError) as e:
        raise ValueError(f"unsupported image mode {mode!r} ({_one_line(e)})") from None
    return np.asarray(out, dtype=np.uint8).copy()


def used_bits_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Non-negative integers of up to 16 bits → uint8 by the bit depth the data really uses: with the largest value
    needing b bits (at least 8), shift right by b - 8. Camera data in 16-bit files keeps its picture (12-bit values
    0..4095 → >> 4, values up to 255 unchanged, full 16-bit → >> 8), and images of one sensor keep one scale."""
    top = int(arr.max(initial=0))
    shift = max(0, top.bit_length() - 8)
    return (arr.astype(np.uint32) >> shift).astype(np.uint8)


def _scale_to_uint8(arr: np.ndarray, sixteen_bit: bool = False) -> np.ndarray:
    """High bit-depth or float gray values → uint8 (integers up to 16 bits: `used_bits_to_uint8`; float 0..1: ×255;
    otherwise min-max)."""
    if sixteen_bit or arr.dtype == np.uint16:
        return used_bits_to_uint8(arr.astype(np.uint16))
    if arr.dtype.kind in "iu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi <= 65535:
            return used_bits_to_uint8(arr)
        return _minmax(arr.astype(np.float64))
    x = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    xlo, xhi = float(x.min()), float(x.max())
    if xlo >= 0.0 and xhi <= 1.0:
        return np.round(x * 255.0).astype(np.uint8)
    if xlo >= 0.0 and xhi <= 255.0:
        return np.round(x).astype(np.uint8)
    return _minmax(x)


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros(x.shape, np.uint8)
    return np.round((x - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def to_rgb_array(x: Any, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Any single image → ``uint8`` H×W×3 RGB numpy array (always a new array, C-contiguous).

    Accepts a path (`str` / `Path`, read with `read_image`), a PIL image (no EXIF rotation: it is taken as
    shown), a numpy array (H×W gray, H×W×1/3/4 — RGBA drops alpha; uint8, bool, uint16 (>> 8), or float in
    0..1 or 0..255), or a torch tensor (C×H×W or H×W×C, judged by which axis has 1, 3 or 4 entries, C×H×W
    preferred; same dtypes). Raises `ImageReadError` for anything else.
    """
    if isinstance(x, (str, Path)):
        return read_image(x, max_pixels=max_pixels)
    if isinstance(x, Image.Image):
        try:
            return _pil_to_rgb(x)
        except (ValueError, OSError) as e:
            raise ImageReadError(f"PIL image: {e}") from None
    if _is_tensor(x):
        import torch

        t = x.detach().cpu()
        arr = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4):
            arr = arr.transpose(1, 2, 0)  # C×H×W (torch's convention wins when both axes could be channels)
        return _array_to_rgb(arr, "tensor")
    if isinstance(x, np.ndarray):
        return _array_to_rgb(x, "array")
    raise ImageReadError(
        f"cannot use a {type(x).__name__} as an image (expected a path, PIL image, numpy array or torch tensor)"
    )


def _is_tensor(x: Any) -> bool:
    mod = type(x).__module__
    if not mod.startswith("torch"):
        return False
    import torch

    return isinstance(x, torch.Tensor)


def _array_to_rgb(arr: np.ndarray, what: str) -> np.ndarray:
    shape = "x".join(map(str, arr.shape))
    if arr.ndim == 3 and arr.shape[2] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4) and what == "array":
        raise ImageReadError(
            f"image {what} of shape {shape} looks channels-first; numpy images must be H×W×C "
            "(use arr.transpose(1, 2, 0))"
        )
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ImageReadError(
            f"image {what} has shape {shape}; expected H×W, H×W×3 (RGB), H×W×4 (RGBA) or "
            "H×W×1" + (" (or C×H×W)" if what == "tensor" else "")
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageReadError(f"image {what} of shape {shape} is empty")
    arr = arr[:, :, :3]
    kind = arr.dtype.kind
    if arr.dtype == np.uint8:
        out = arr
    elif kind == "b":
        out = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        out = used_bits_to_uint8(arr)
    elif kind in "iu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ImageReadError(f"image {what} of dtype {arr.dtype} has values {lo}..{hi}; expected 0..255")
        out = arr.astype(np.uint8)
    elif kind == "f":
        x = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        scale = 255.0 if float(x.max(initial=0.0)) <= 1.0 else 1.0
        out = np.round(np.clip(x * scale, 0.0, 255.0)).astype(np.uint8)
    else:
        raise ImageReadError(f"image {what} has unsupported dtype {arr.dtype}")
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return np.array(out, dtype=np.uint8, order="C")  # always a fresh array the caller may modify


# -- the official test resize (detectron2 ResizeShortestEdge, PIL bilinear on uint8); also the training resize --


def resize_shape(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """(new_h, new_w): shorter side -> `short`, longer side capped at `max_size`, each rounded with int(v + 0.5).

    A side is never rounded to 0: past an aspect ratio of about 2 * max_size : 1 (a 30000x1 strip) the cap would
    make the short side under half a pixel, so it is kept at 1 (the long side stays `max_size`, so the padded input
    stays small). Below that ratio this is detectron2's ResizeShortestEdge rule exactly."""
    if h < 1 or w < 1:
        raise ValueError(f"resize_shape: image size {h}x{w} has an empty side")
    scale = short / min(h, w)
    nh, nw = (short, scale * w) if h < w else (scale * h, short)
    if max(nh, nw) > max_size:
        s = max_size / max(nh, nw)
        nh, nw = nh * s, nw * s
    return max(1, int(nh + 0.5)), max(1, int(nw + 0.5))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (size[0], size[1], 3) with PIL's fixed-point bilinear filter (antialiased downscale)."""
    if image.shape[:2] == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def list_images(source: str | Path, recursive: bool = False, kinds: frozenset[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """The image files named by `source`: a file (returned as is, whatever its extension), a folder (its image
    files, sorted, subfolders too when `recursive`), or a glob pattern (matching image files, sorted; ``**``
    honoured when `recursive`). Hidden files (``.name``) are skipped. An empty folder or a glob that matches
    nothing gives ``[]``; a path that does not exist raises `ImageReadError`."""
    text = str(source)
    p = Path(source).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        files = p.rglob("*") if recursive else p.iterdir()
        return sorted(f for f in files if f.is_file() and f.suffix.lower() in kinds and not f.name.startswith("."))
    if _GLOB_CHARS & set(text):
        hits = glob.glob(str(Path(text).expanduser()), recursive=recursive)
        return sorted(
            Path(h)
            for h in hits
            if Path(h).is_file() and Path(h).suffix.lower() in kinds and not Path(h).name.startswith(".")
        )
    raise ImageReadError(f"{source}: no such file or folder")
