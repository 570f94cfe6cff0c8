"""COCO results files: reading, checking and matching them to a ground truth's images, for every scorer.

`load_results` reads a results list or json file (the entries `fastinst predict --save-json` and `fastinst eval`
write, or anyone's COCO segm results) and checks each entry's types; `match_image_ids` gives the entries the ground
truth's image ids (by `file_name` through `ImageIndex`, the rule `fastinst predict --data` uses too) and checks a
file's masks against their images, so that pycocotools never decodes a run it should not trust. COCO mask AP
(`fastinst.engine.evaluator`) and Cityscapes AP (`fastinst.engine.cityscapes_eval`) both read results through here.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from ..errors import DatasetError, note


class _FileResults(list):
    """The entries of a results file, each checked by `_check_entry`; `match_image_ids` also checks their masks
    against the ground truth (`_checked_masks`) once their image ids are the ground truth's."""


def load_results(results: list[dict] | str | os.PathLike) -> tuple[list[dict], str]:
    """The entries of a results list or json file, and the label naming it in messages. Every entry of a file is
    checked (`_check_entry`): `image_id` and `category_id` integers, `score` a finite number, `segmentation` an RLE
    dict; a list built in memory (by `COCOEvaluator`) only needs the four keys."""
    from_file = False
    if isinstance(results, (str, os.PathLike)):
        from ..data.jsonfiles import read_json

        data, label, from_file = read_json(Path(results)), str(results), True
    else:
        data, label = results, "results"
    if not isinstance(data, list):
        raise DatasetError(f"{label}: expected a list of COCO result objects")
    for n, r in enumerate(data):
        if not isinstance(r, dict) or not {"image_id", "category_id", "segmentation", "score"} <= r.keys():
            raise DatasetError(f"{label}: entry {n} needs image_id, category_id, segmentation and score")
        if from_file:
            _check_entry(r, f"{label}: entry {n}")
    return (_FileResults(data) if from_file else data), label


def _check_entry(r: dict, where: str) -> None:
    """One results entry's types, before anything reads it (`DatasetError` naming `where`)."""
    from ..data.core import is_int, is_number
    from ..errors import shown

    for key in ("image_id", "category_id"):
        if not is_int(r[key]):
            raise DatasetError(f"{where}: '{key}' must be an integer, got {shown(r[key])}")
    if not is_number(r["score"]):
        raise DatasetError(f"{where}: 'score' must be a finite number, got {shown(r['score'])}")
    for key in ("file_name", "category_name"):
        if r.get(key) is not None and not isinstance(r[key], str):
            raise DatasetError(f"{where}: '{key}' must be a string, got {shown(r[key])}")
    box = r.get("bbox")
    if box not in (None, []) and not (isinstance(box, list) and len(box) == 4 and all(is_number(v) for v in box)):
        raise DatasetError(f"{where}: 'bbox' must be 4 numbers [x, y, width, height], got {shown(box)}")
    seg = r["segmentation"]
    if isinstance(seg, list) and seg and all(isinstance(part, list) for part in seg):
        return  # polygons: checked and made RLE at their image's size by `_checked_masks`
    size = seg.get("size") if isinstance(seg, dict) else None
    counts = seg.get("counts") if isinstance(seg, dict) else None
    if not (
        isinstance(size, list)
        and len(size) == 2
        and all(is_int(v) and v > 0 for v in size)
        and (isinstance(counts, str) or (isinstance(counts, list) and all(is_int(c) for c in counts)))
    ):
        raise DatasetError(
            f"{where}: 'segmentation' must be an RLE {{'size': [height, width], 'counts': ...}} or polygons (lists "
            f"of x, y coordinates), got {shown(seg)}"
        )


def _checked_masks(dets: list[dict], gt: COCO, label: str) -> list[dict]:
    """Results entries (image ids already the ground truth's) whose RLE has its image's size and run lengths that
    cover exactly its pixels, with list `counts` compressed and polygons (clipped to the image, as ground truth
    polygons are) made compressed RLE: what pycocotools' `loadRes` reads; else a `DatasetError` naming the entry.
    Nothing is decoded before this passed: pycocotools' decoder trusts the runs."""
    from collections import Counter

    from ..data.masks import check_rle_strings, clean_segmentation, json_rle

    out: list[dict] = []
    strings: list[tuple[str, str, int, int]] = []
    for n, r in enumerate(dets):
        seg, image = r["segmentation"], gt.imgs[r["image_id"]]
        h, w = int(image["height"]), int(image["width"])
        where = f"{label}: entry {n} (image id {r['image_id']})"
        if isinstance(seg, list):
            parts = clean_segmentation(seg, h, w, where, Counter())
            if not parts:
                raise DatasetError(f"{where}: no polygon with 3 points or more (an even number of coordinates)")
            out.append(dict(r, segmentation=json_rle(parts, h, w)))
            continue
        if seg["size"] != [h, w]:
            raise DatasetError(f"{where}: RLE size {seg['size']} does not match its image ({h}x{w})")
        counts = seg["counts"]
        if isinstance(counts, list):
            if any(c < 0 for c in counts) or sum(counts) != h * w:
                raise DatasetError(f"{where}: RLE run lengths must be non-negative and add up to {h}x{w} pixels")
            rle = mask_util.frPyObjects({"size": [h, w], "counts": counts}, h, w)
            counts = rle["counts"].decode("ascii")
            r = dict(r, segmentation={"size": [h, w], "counts": counts})
        else:
            strings.append((where, counts, h, w))
        out.append(r)
    if strings:
        check_rle_strings(strings)
    if any(r.get("bbox") for r in out):
        # pycocotools' loadRes reads every entry as the first: one with a box makes it read every entry's box
        for k, r in enumerate(out):
            if not r.get("bbox"):
                seg = r["segmentation"]
                box = mask_util.toBbox({"size": seg["size"], "counts": seg["counts"].encode("ascii")})
                out[k] = dict(r, bbox=[float(v) for v in box])
    return out


class ImageIndex:
    """A dataset's images by file name: the one rule by which `fastinst predict --data` gives predictions the
    dataset's image ids and `fastinst eval --results` checks them.

    A path names the image whose file it is (`image_root / file_name`, compared as absolute normalised paths);
    else the image whose `file_name` (relative to the image root) is the longest trailing part of the path, when that
    part has two or more components (`val2017/a.jpg` in `/elsewhere/val2017/a.jpg`); else the image with the same
    base name when exactly one image has it. `find` -> the image id, or None. `max_id`: the largest image id.
    """

    def __init__(self, images: list[dict], image_root: str | os.PathLike | None = None):
        self.by_parts: dict[tuple[str, ...], int] = {}
        self.by_path: dict[str, int] = {}
        bases: dict[str, list[int]] = {}
        for im in images:
            image_id, name = int(im["id"]), str(im["file_name"])
            parts = _name_parts(name)
            self.by_parts.setdefault(parts, image_id)
            bases.setdefault(parts[-1] if parts else "", []).append(image_id)
            if image_root is not None:
                self.by_path.setdefault(_abs_name(Path(image_root) / name), image_id)
        self.by_base = {base: ids[0] for base, ids in bases.items() if len(ids) == 1 and base}
        self.max_id = max((int(im["id"]) for im in images), default=0)
        self._found: dict[str, int | None] = {}

    def find(self, path: str | os.PathLike) -> int | None:
        key = str(path)
        if key not in self._found:
            self._found[key] = self._find(key)
        return self._found[key]

    def _find(self, path: str) -> int | None:
        if self.by_path and path:
            hit = self.by_path.get(_abs_name(Path(path)))
            if hit is not None:
                return hit
        parts = _name_parts(path)
        for start in range(len(parts) - 1):  # longest trailing part first, two components at least
            hit = self.by_parts.get(parts[start:])
            if hit is not None:
                return hit
        return self.by_base.get(parts[-1]) if parts else None


def _name_parts(name: str) -> tuple[str, ...]:
    """`a/./b\\c.jpg` -> ("a", "b", "c.jpg"): a file name's components, whichever separator it was written with."""
    return tuple(p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", "."))


def _abs_name(path: Path) -> str:
    return os.path.normcase(os.path.normpath(os.path.abspath(path)))


def match_image_ids(
    dets: list[dict],
    gt: COCO,
    label: str = "results",
    image_root: str | os.PathLike | None = None,
    quiet: bool = False,
) -> list[dict]:
    """Results entries with the ground truth's image ids, or a one-line `DatasetError`; never a silent mismatch.

    Entries that carry a `file_name` (what `fastinst predict --save-json` writes) are matched to the GT images by it
    (`ImageIndex`) and get that image's id, whatever `image_id` they had (one note says how many changed, unless
    `quiet`: a second scorer of the same entries); a file name that matches no image is refused. Entries without one
    must already use GT image ids. The entries of a results file (`load_results`) also have their masks checked
    against their images (`_checked_masks`).
    """
    from_file = isinstance(dets, _FileResults)
    named = [r for r in dets if _has_file_name(r)]
    if named:
        index = ImageIndex(gt.dataset.get("images") or [], image_root)
        ids = {name: index.find(name) for name in dict.fromkeys(r["file_name"] for r in named)}
        missing = [name for name, image_id in ids.items() if image_id is None]
        if missing:
            raise DatasetError(
                f"{label}: {len(missing)} file name(s) match no ground-truth image, e.g. {missing[0]!r} "
                "(matched by path under the image root, then by unique base name)"
            )
        first: dict[int | None, str] = {}
        for name, image_id in ids.items():
            other = first.setdefault(image_id, name)
            if other != name:
                raise DatasetError(
                    f"{label}: file names {other!r} and {name!r} both match ground-truth image {image_id}; "
                    "predict each image once"
                )
        changed = sum(ids[r["file_name"]] != r["image_id"] for r in named)
        if changed and not quiet:
            note(
                f"matched {len(named)} predictions to ground-truth images by file_name ({changed} had another image_id)"
            )
        if changed:
            dets = [dict(r, image_id=ids[r["file_name"]]) if _has_file_name(r) else r for r in dets]
    unknown_images = sorted({r["image_id"] for r in dets if not _has_file_name(r)} - set(gt.imgs), key=str)
    if unknown_images:
        raise DatasetError(
            f"{label}: {len(unknown_images)} image id(s) not in the ground truth, e.g. {unknown_images[:5]}, and "
            "the entries carry no file_name to match them by; write the predictions with `fastinst predict "
            "--save-json --data DATA` so they carry the dataset's image ids and file names"
        )
    return _checked_masks(dets, gt, label) if from_file else dets


def _has_file_name(entry: dict) -> bool:
    return isinstance(entry.get("file_name"), str) and bool(entry["file_name"])
