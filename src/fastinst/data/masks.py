"""Every mask conversion of the readers: bool masks <-> compressed COCO RLE (`masks_to_rles`, `mask_to_rle`,
`rle_annotation`), polygons -> RLE (`json_rle`, `to_rle`, `merge_rles`), the polygon clipping rule (`clip_polygon`),
the check of one annotation's segmentation (`clean_segmentation`) and of compressed RLE strings before pycocotools
decodes them (`check_rle_strings`, `rle_string_total(s)`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from pycocotools import mask as mask_util

from ..errors import DatasetError
from .core import is_int, is_number, shown


def masks_to_rles(masks: np.ndarray) -> list[dict]:
    """bool (N, H, W) masks -> N compressed COCO RLEs with int `size` and str `counts` (JSON-ready)."""
    if len(masks) == 0:
        return []
    rles = mask_util.encode(np.asfortranarray(np.asarray(masks, dtype=bool).transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]


def mask_to_rle(mask: np.ndarray) -> dict:
    """A bool (H, W) mask as compressed COCO RLE with a str `counts` (JSON-ready)."""
    return masks_to_rles(np.asarray(mask)[None])[0]


def rle_annotation(mask: np.ndarray, ann_id: int, image_id: int, category_id: int, iscrowd: int) -> dict:
    """A COCO annotation for a bool (H, W) instance mask: its compressed RLE (str `counts`), area and xywh box."""
    rle = mask_to_rle(mask)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": rle,
        "area": float(mask_util.area(rle)),
        "bbox": [float(v) for v in mask_util.toBbox(rle)],
        "iscrowd": iscrowd,
    }


def json_rle(seg: list | dict, h: int, w: int) -> dict:
    """Polygons (merged into one mask) or an RLE dict as compressed COCO RLE with str `counts` (JSON-ready); an RLE
    dict is returned as it is."""
    if isinstance(seg, dict):
        return seg
    merged = mask_util.merge(mask_util.frPyObjects(seg, h, w))
    return {"size": [h, w], "counts": merged["counts"].decode("ascii")}


def to_rle(seg: list | dict, h: int, w: int) -> dict:
    """Polygons (merged into one mask) or an RLE dict as a pycocotools RLE (for `area`, `toBbox`); an RLE dict is
    returned as it is."""
    if isinstance(seg, dict):
        return seg
    return mask_util.merge(mask_util.frPyObjects(seg, h, w))


def merge_rles(rles: list[dict], h: int, w: int) -> dict:
    """The union of RLEs of one h x w image (a single one as it is) as compressed COCO RLE with str `counts`."""
    merged = mask_util.merge(rles) if len(rles) > 1 else rles[0]
    counts = merged["counts"]
    return {"size": [h, w], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def clip_polygon(poly: list[float], h: int, w: int, issues: Counter) -> list[float]:
    """A flat polygon (finite x, y coordinates) with its coordinates clipped to the h x w image (counted as
    "clipped" in `issues`), or as it is when inside: a vertex far outside never sizes what rasterising it allocates."""
    xs, ys = poly[0::2], poly[1::2]  # plain min/max: ~10x faster than numpy on COCO's many short polygons
    if min(xs) >= 0 and min(ys) >= 0 and max(xs) <= w and max(ys) <= h:
        return poly
    issues["clipped"] += 1
    arr = np.asarray(poly, dtype=np.float64)
    arr[0::2], arr[1::2] = np.clip(arr[0::2], 0, w), np.clip(arr[1::2], 0, h)
    return arr.tolist()


def clean_segmentation(
    seg: Any, h: int, w: int, label: str, issues: Counter, strings: list | None = None
) -> list | dict | None:
    """Valid polygons (clipped to the image) or compressed RLE; None (counted) when nothing usable is left.

    Nothing is allocated from what the entry claims: an RLE must have its image's size and run lengths that cover
    exactly its pixels (checked before pycocotools decodes anything: its decoder trusts them), and polygon
    coordinates are finite numbers, clipped to the image before they are rasterised. Compressed RLE strings are
    appended to `strings` as (label, counts, h, w) for `check_rle_strings` (None: not checked, for our own)."""
    if not seg:
        issues["bbox_only"] += 1
        return None
    if isinstance(seg, dict):
        return _clean_rle(seg, h, w, label, strings)
    if not isinstance(seg, list):
        raise DatasetError(f"{label}: segmentation is neither polygons nor RLE")
    parts = []
    for k, part in enumerate(seg):
        if not isinstance(part, list):
            raise DatasetError(
                f"{label}: segmentation[{k}] is {shown(part)}, not a polygon (a list of x, y coordinates)"
            )
        if len(part) < 6 or len(part) % 2:
            issues["bad_parts"] += 1
            continue
        try:  # the sum is NaN / inf / overflows when any coordinate is: one C-speed pass over COCO's many polygons
            finite = is_number(sum(part))
        except (TypeError, OverflowError):
            finite = False
        if not finite:
            raise DatasetError(f"{label}: polygon coordinates are not finite numbers")
        parts.append(clip_polygon(part, h, w, issues))
    if not parts:
        issues["no_polygon"] += 1
        return None
    return parts


def _clean_rle(seg: dict, h: int, w: int, label: str, strings: list | None) -> dict:
    """A COCO RLE entry checked against its (h, w) image, as compressed RLE with a str `counts` (a string is
    appended to `strings` for `check_rle_strings`, when not None)."""
    if "counts" not in seg or "size" not in seg:
        raise DatasetError(f"{label}: RLE segmentation needs 'counts' and 'size'")
    size, counts = seg["size"], seg["counts"]
    if not (isinstance(size, list) and len(size) == 2 and all(is_int(v) for v in size)):
        raise DatasetError(f"{label}: RLE 'size' must be [height, width] (two integers), got {shown(size)}")
    if size != [h, w]:
        raise DatasetError(f"{label}: RLE size {size} does not match its image ({h}x{w})")
    if isinstance(counts, str):
        if strings is not None:
            strings.append((label, counts, h, w))
        return {"size": [h, w], "counts": counts}
    if not isinstance(counts, list) or not all(is_int(c) for c in counts):
        raise DatasetError(
            f"{label}: RLE 'counts' must be a compressed string or a list of run lengths (integers), "
            f"got {shown(counts)}"
        )
    if any(c < 0 for c in counts):
        raise DatasetError(f"{label}: RLE has a negative run length")
    if sum(counts) != h * w:
        raise DatasetError(f"{label}: RLE run lengths add up to {sum(counts)} pixels, its image has {h}x{w}")
    try:
        rle = mask_util.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    except (TypeError, ValueError, OverflowError) as e:
        raise DatasetError(f"{label}: bad RLE ({e})") from None
    return {"size": [h, w], "counts": rle["counts"].decode("ascii")}


# ---------------------------------------------------------------------------------------------------------------------
# Compressed RLE strings, checked before pycocotools decodes them
# ---------------------------------------------------------------------------------------------------------------------


def rle_string_total(counts: str, label: str) -> int:
    """Sum of the run lengths in a compressed COCO RLE string. The format: each run length is stored as a signed
    number in 5-bit groups (least significant first), one character `48 + group` each, bit 0x20 = more groups follow;
    from the third run on, the stored number is the difference to the run two places before."""
    runs: list[int] = []
    pos, n = 0, len(counts)
    while pos < n:
        value, shift, more = 0, 0, True
        while more:
            if pos >= n:
                raise DatasetError(f"{label}: compressed RLE string ends in the middle of a run length")
            if shift >= 35:  # 7 characters hold 35 bits, more than any image's pixel count (pycocotools: 64 bits)
                raise DatasetError(f"{label}: compressed RLE string has a run length of more than 7 characters")
            c = ord(counts[pos]) - 48
            if not 0 <= c < 64:
                raise DatasetError(f"{label}: compressed RLE string has a character {counts[pos]!r} outside the format")
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:
                value -= 1 << shift  # sign-extend
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise DatasetError(f"{label}: compressed RLE string decodes to a negative run length")
        runs.append(value)
    return sum(runs)


def check_rle_strings(items: list[tuple[str, str, int, int]]) -> None:
    """`DatasetError` for the first (label, compressed RLE string, h, w) whose string breaks the format or whose run
    lengths do not cover exactly h x w pixels: pycocotools' decoder writes as many pixels as the runs say into an
    h x w buffer, so a string is never decoded before it passed here."""
    totals, problems = rle_string_totals([counts for _, counts, _, _ in items])
    bad = np.flatnonzero((problems != 0) | (totals != np.array([h * w for _, _, h, w in items], np.int64)))
    if len(bad):
        label, _, h, w = items[bad[0]]
        code = int(problems[bad[0]])
        if code:
            raise DatasetError(f"{label}: {RLE_PROBLEMS[code]}")
        raise DatasetError(f"{label}: RLE run lengths add up to {totals[bad[0]]} pixels, its image has {h}x{w}")


# Why `rle_string_totals` refuses a string (its codes).
RLE_PROBLEMS = {
    1: "compressed RLE string has a character outside the format",
    2: "compressed RLE string ends in the middle of a run length",
    3: "compressed RLE string has a run length of more than 7 characters",
    4: "compressed RLE string decodes to a negative run length",
}
_RLE_CHUNK = 1 << 22  # characters decoded at once (~10 int64 arrays of this length)


def rle_string_totals(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """`rle_string_total` of many strings at numpy speed -> (int64 totals, int8 problem codes: 0 = fine, else a key
    of `RLE_PROBLEMS`, in which case the total means nothing). A results file holds hundreds of thousands of masks:
    ~100x faster than the character loop."""
    totals = np.zeros(len(strings), np.int64)
    problems = np.zeros(len(strings), np.int8)
    start = 0
    while start < len(strings):
        stop, size = start, 0
        while stop < len(strings) and (size == 0 or size + len(strings[stop]) <= _RLE_CHUNK):
            size += len(strings[stop])
            stop += 1
        totals[start:stop], problems[start:stop] = _rle_chunk(strings[start:stop])
        start = stop
    return totals, problems


def _rle_chunk(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    n = len(strings)
    totals = np.zeros(n, np.int64)
    problems = np.zeros(n, np.int8)
    usable = np.fromiter((s.isascii() for s in strings), bool, n)
    problems[~usable] = 1
    lens = np.where(usable, np.fromiter((len(s) for s in strings), np.int64, n), 0)
    if not lens.any():
        return totals, problems
    text = "".join(s for s, ok in zip(strings, usable, strict=True) if ok).encode("ascii")
    c = np.frombuffer(text, np.uint8) - np.uint8(48)  # a character's 6 bits (wraps around below '0')
    bounds = np.cumsum(lens)
    bad = c >= 64
    if bad.any():
        problems[np.unique(np.searchsorted(bounds, np.flatnonzero(bad), side="right"))] = 1
        c = np.where(bad, np.uint8(0), c)
    end = (c & 0x20) == 0  # the last character of a number
    last = bounds[lens > 0] - 1
    unfinished = np.zeros(n, bool)
    unfinished[lens > 0] = ~end[last]
    problems[unfinished & (problems == 0)] = 2
    end[last] = True  # numbers never run on into the next string
    ends = np.flatnonzero(end)
    starts = np.concatenate([[0], ends[:-1] + 1])
    length = ends - starts + 1
    gsid = np.searchsorted(bounds, ends, side="right")  # the string of each number
    too_long = np.unique(gsid[length > 7])
    problems[too_long[problems[too_long] == 0]] = 3
    value = np.zeros(len(ends), np.int64)
    for j in range(min(int(length.max()), 7)):  # character j of every number at once
        here = length > j
        value[here] += (c[starts[here] + j] & 0x1F).astype(np.int64) << (5 * j)
    shift = 5 * np.minimum(length, 7)
    negative = (c[ends] & 0x10) != 0
    value[negative] -= np.left_shift(np.int64(1), shift[negative])  # sign extension
    first = np.searchsorted(gsid, np.arange(n))  # each string's first number
    m = np.arange(len(value)) - first[gsid]  # the number's place in its string
    runs = np.where(m == 0, value, 0)
    for chain in ((m % 2 == 1), (m % 2 == 0) & (m >= 2)):  # from the third run on, run m adds run m - 2
        csum = np.cumsum(np.where(chain, value, 0))
        before = np.concatenate([[0], csum])[first]  # the chain's sum before each string's first number
        runs += np.where(chain, csum - before[gsid], 0)
    negative_run = np.unique(gsid[runs < 0])
    problems[negative_run[problems[negative_run] == 0]] = 4
    has = np.flatnonzero(np.bincount(gsid, minlength=n) > 0)
    totals[has] = np.add.reduceat(runs, first[has])
    return totals, problems
