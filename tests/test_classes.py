"""The one class rule (`fastinst.classes`): by name when both sides have names, else by id; leftovers named."""

from __future__ import annotations

import pytest

from fastinst.classes import has_names, match_classes, name_key
from fastinst.errors import DatasetError


def test_names_compare_without_case_spaces_or_punctuation():
    assert name_key("tv/monitor") == name_key("TV Monitor") == name_key("tvmonitor")
    assert name_key("traffic_light") == name_key("Traffic-Light") == "trafficlight"
    assert name_key("potted plant") != name_key("plant")


def test_placeholders_are_not_names():
    assert not has_names(["class0", "class1", "class2"])  # a model built without names
    assert not has_names(["3", "7"], [3, 7])  # categories without a `name`
    assert not has_names([])
    assert has_names(["class0", "dog"]) and has_names(["3", "7"])  # digits as real names (no ids to compare)


def test_same_names_other_ids_match_by_name_and_say_so():
    model = ["bottle", "chair", "sofa"]
    m = match_classes(model, [1, 2, 3], ["Sofa", "bottle", "CHAIR"], [1, 2, 3], "voc.json")
    assert m.by == "name" and m.ids == [2, 3, 1]
    assert m.renumbered == [("bottle", 1, 2), ("chair", 2, 3), ("sofa", 3, 1)]
    assert not m.model_only and not m.data_only and m.shared == [1, 2, 3]
    (line,) = m.notes("voc.json")
    assert "3 classes matched by name have other ids in voc.json" in line and "bottle 1->2" in line


def test_classes_of_one_side_only_are_left_out_with_a_note():
    m = match_classes(["person", "car", "dog", "cat"], [1, 3, 18, 17], ["dog", "person", "zebra"], [18, 1, 24])
    assert m.ids == [1, None, 18, None] and m.shared == [1, 18]
    assert m.model_only == ["car", "cat"] and m.data_only == ["zebra"] and not m.renumbered
    lines = m.notes("subset.json")
    assert len(lines) == 2
    assert "2 of the model's 4 classes are not in subset.json (car, cat): their predictions are left out" in lines[0]
    assert "subset.json's classes are not among the model's (zebra): they are left out of the score" in lines[1]


def test_long_lists_are_cut_in_notes():
    model = [f"thing{i}" for i in range(30)]
    m = match_classes(model, list(range(1, 31)), ["thing0"], [1])
    assert "thing8 and 21 more" in m.notes("d")[0]


def test_no_shared_name_is_refused_in_one_line():
    with pytest.raises(DatasetError, match="none of its 2 classes") as e:
        match_classes(["circle", "square"], [1, 2], ["cat", "dog"], [1, 2], "pets.json")
    assert "pets.json" in str(e.value) and "\n" not in str(e.value)


def test_without_names_ids_then_order():
    unnamed = ["class0", "class1", "class2"]
    by_id = match_classes(unnamed, [2, 5, 9], ["a", "b", "c", "d"], [2, 5, 9, 11])
    assert by_id.by == "id" and by_id.ids == [2, 5, 9] and by_id.data_only == ["d"]
    subset = match_classes(unnamed, [2, 5, 9], ["5", "9"], [5, 9])  # a dataset without names holding some ids
    assert subset.ids == [None, 5, 9] and subset.model_only == ["class0"]
    by_order = match_classes(unnamed, [1, 2, 3], ["x", "y", "z"], [10, 20, 30])
    assert by_order.by == "order" and by_order.ids == [10, 20, 30]
    with pytest.raises(DatasetError, match="no class names to match them by"):
        match_classes(unnamed, [1, 2, 3], ["x", "y"], [10, 20], "two.json")
