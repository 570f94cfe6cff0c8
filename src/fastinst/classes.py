"""The one rule by which a model's classes meet a dataset's (eval, predict `--data`/`--classes`, eval `--results`,
train `--weights`, the app).

Tools number the same classes differently (labelme in order of appearance, Roboflow alphabetically, YOLO from 0,
COCO 1..90 with gaps), so ids alone silently pair a class with another one. The rule:

* **by name** when both sides name their classes: names compare case-, space- and punctuation-insensitively
  (`tv/monitor` = `TV Monitor` = `tvmonitor`, `traffic_light` = `traffic light`);
* **by id** when a side has no names (classes called `class0`, `class1`, ... or categories without a `name`): the
  model's own category ids when one side's ids hold the other's, else class k = the dataset's k-th category when the
  counts agree;
* classes of one side that the other lacks are left out (no prediction of the model's extra classes is kept; the
  dataset's extra classes are not scored), and `ClassMatch.notes` names them in one line; a class whose name maps to
  another id than the model stored is named too.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import DatasetError

SHOWN = 8  # names listed in a note before "... and N more"


def name_key(name: object) -> str:
    """The form names are compared in: Unicode-normalised, case-folded, letters and digits only."""
    text = unicodedata.normalize("NFKC", str(name)).casefold()
    return "".join(ch for ch in text if ch.isalnum())


def has_names(names: Sequence[object], ids: Sequence[int] | None = None) -> bool:
    """Whether `names` are real class names: not empty, and not only placeholders (`class0`, `class1`, ..., which a
    model without names gets, or a category's own id, which a category without a `name` gets)."""
    if not names:
        return False
    placeholders = {f"class{i}" for i in range(len(names))} | {str(i) for i in ids or ()}
    return any(n is not None and str(n).strip() and str(n) not in placeholders for n in names)


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


@dataclass
class ClassMatch:
    """How a model's classes map to a dataset's categories.

    ids: per model class (contiguous index), the dataset category id it is scored / written as, or None when the
    dataset lacks that class. by: "name", "id" or "order". model_only / data_only: names of the classes only one side
    has. renumbered: (name, the model's id, the dataset's id) for classes matched by name under another id.
    """

    ids: list[int | None]
    by: str
    model_only: list[str] = field(default_factory=list)
    data_only: list[str] = field(default_factory=list)
    renumbered: list[tuple[str, int, int]] = field(default_factory=list)

    @property
    def shared(self) -> list[int]:
        """The dataset category ids some model class maps to, in the dataset's id order (what is scored)."""
        return sorted({i for i in self.ids if i is not None})

    def notes(self, data_label: str, model_label: str = "the model") -> list[str]:
        """One line per thing the user should know: classes left out on either side, classes renumbered."""
        lines = []
        if self.model_only:
            lines.append(
                f"{len(self.model_only)} of {model_label}'s {len(self.ids)} classes are not in {data_label} "
                f"({_listed(self.model_only)}): their predictions are left out"
            )
        if self.data_only:
            lines.append(
                f"{len(self.data_only)} of {data_label}'s classes are not among {model_label}'s "
                f"({_listed(self.data_only)}): they are left out of the score"
            )
        if self.renumbered:
            pairs = [f"{name} {old}->{new}" for name, old, new in self.renumbered]
            lines.append(
                f"{len(self.renumbered)} classes matched by name have other ids in {data_label} than in "
                f"{model_label} ({_listed(pairs)}): {data_label}'s ids are used"
            )
        return lines


def match_classes(
    model_names: Sequence[str],
    model_ids: Sequence[int],
    data_names: Sequence[str],
    data_ids: Sequence[int],
    data_label: str = "the dataset",
    model_label: str = "the model",
) -> ClassMatch:
    """Map each model class to a dataset category id (see the module docstring for the rule); a `DatasetError`
    naming both sides when they share no class."""
    model_names, data_names = [str(n) for n in model_names], [str(n) for n in data_names]
    model_ids, data_ids = [int(i) for i in model_ids], [int(i) for i in data_ids]
    if has_names(model_names, model_ids) and has_names(data_names, data_ids):
        ids, by = _ids_by_name(model_names, data_names, data_ids), "name"
        if all(i is None for i in ids):
            raise DatasetError(
                f"{data_label}: none of its {len(data_names)} classes ({_listed(data_names)}) is among "
                f"{model_label}'s {len(model_names)} ({_listed(model_names)}); classes are matched by name"
            )
    else:
        found, by = _ids_by_id(model_names, model_ids, data_ids)
        if found is None:
            raise DatasetError(
                f"{model_label}: the model has {len(model_names)} classes (category ids {model_ids[:5]}...), "
                f"{data_label} has {len(data_ids)} ({data_ids[:5]}...), and one side has no class names to match "
                "them by"
            )
        ids = found
    used = set(ids)
    # a model's stored ids: one per class, or none to compare with
    own: list[int | None] = list(model_ids) if len(model_ids) == len(model_names) else [None] * len(model_names)
    return ClassMatch(
        ids=ids,
        by=by,
        model_only=[n for n, i in zip(model_names, ids, strict=True) if i is None],
        data_only=[n for n, c in zip(data_names, data_ids, strict=True) if c not in used],
        renumbered=[
            (n, old, new)
            for n, old, new in zip(model_names, own, ids, strict=True)
            if by == "name" and new is not None and old is not None and old != new
        ],
    )


def _ids_by_name(model_names: list[str], data_names: list[str], data_ids: list[int]) -> list[int | None]:
    """Per model class, the id of the dataset category with the same `name_key` (a name listed twice: its first)."""
    by_key: dict[str, int] = {}
    for name, cid in zip(data_names, data_ids, strict=True):
        by_key.setdefault(name_key(name), cid)
    return [by_key.get(name_key(n)) for n in model_names]


def _ids_by_id(
    model_names: list[str], model_ids: list[int], data_ids: list[int]
) -> tuple[list[int | None] | None, str]:
    """Per model class, its stored id when one side's ids hold the other's ("id"), else the dataset's k-th id when the
    counts agree ("order"); (None, "") when neither applies."""
    own, known = set(model_ids), set(data_ids)
    if len(model_ids) == len(model_names) and own and (own <= known or known <= own):
        return [c if c in known else None for c in model_ids], "id"
    if len(model_names) == len(data_ids):
        return list(data_ids), "order"
    return None, ""


def match_model(model: Any, dataset: Any, source: str | None = None) -> ClassMatch:
    """`match_classes` of a model (`names`, `category_ids`; a model without them has `num_classes` unnamed classes)
    and an `InstanceDataset` (`names`, `category_ids`, `name`); messages call the model `source` (its weights file)
    when given."""
    names = [str(n) for n in getattr(model, "names", None) or []]
    if not names:
        names = [f"class{i}" for i in range(int(getattr(model, "num_classes", len(dataset.category_ids))))]
    return match_classes(
        names,
        list(getattr(model, "category_ids", None) or []),
        list(dataset.names),
        list(dataset.category_ids),
        data_label=str(getattr(dataset, "name", "the dataset")),
        model_label=str(source) if source else "the model",
    )
