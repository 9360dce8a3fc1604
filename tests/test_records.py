"""The record protocol shared by every reader."""

import pytest

from csdn.data.records import INFRARED, VISIBLE, Record, by_modality, count_summary, label_map


def _records() -> list[Record]:
    return [
        Record("/a/1.jpg", 7, 1, VISIBLE),
        Record("/a/2.jpg", 3, 3, INFRARED),
        Record("/a/3.jpg", 7, 6, INFRARED),
        Record("/a/4.jpg", 12, 2, VISIBLE),
    ]


def test_label_map_is_contiguous_in_pid_order() -> None:
    assert label_map(_records()) == {3: 0, 7: 1, 12: 2}


def test_by_modality_keeps_order() -> None:
    assert [r.path for r in by_modality(_records(), INFRARED)] == ["/a/2.jpg", "/a/3.jpg"]
    with pytest.raises(ValueError, match="modality"):
        by_modality(_records(), "thermal")


def test_bad_modality_rejected() -> None:
    with pytest.raises(ValueError, match="/x.jpg"):
        Record("/x.jpg", 1, 1, "rgb")


def test_count_summary() -> None:
    s = count_summary(_records())
    assert s["images"] == 4 and s["ids"] == 3
    assert s["visible_images"] == 2 and s["visible_ids"] == 2 and s["visible_cams"] == 2
    assert s["infrared_images"] == 2 and s["infrared_cams"] == 2
