"""maskpipe.labels: the 18-class encoding both ways and the label rules."""

from __future__ import annotations

import itertools

import pytest

from maskpipe import labels


@pytest.mark.parametrize(("mask", "gender", "age"), list(itertools.product(range(3), range(2), range(3))))
def test_encode_then_decode_returns_the_three_labels(mask, gender, age):
    cls = labels.encode_class(mask, gender, age)
    assert cls == mask * 6 + gender * 3 + age
    assert labels.decode_class(cls) == (mask, gender, age)
    assert [labels.task_of_class(cls, t) for t in labels.TASKS] == [mask, gender, age]


def test_all_eighteen_classes_are_distinct_and_named():
    classes = {labels.encode_class(*combo) for combo in itertools.product(range(3), range(2), range(3))}
    assert classes == set(range(18))
    assert len(set(labels.CLASS_NAMES)) == 18
    assert labels.class_name(0) == "wear/male/<30"
    assert labels.class_name(17) == "not_wear/female/>=60"


@pytest.mark.parametrize(
    ("stem", "expected"),
    [("mask1", 0), ("mask2", 0), ("mask3", 0), ("mask4", 0), ("mask5", 0), ("incorrect_mask", 1), ("normal", 2)],
)
def test_mask_label_of_each_stem(stem, expected):
    assert labels.mask_label(stem) == expected


def test_unknown_stem_names_the_valid_ones():
    with pytest.raises(ValueError, match="mask6.*expected one of"):
        labels.mask_label("mask6")


@pytest.mark.parametrize(("text", "expected"), [("male", 0), ("female", 1), ("Female", 1), (" MALE ", 0)])
def test_gender_label_ignores_case_and_spaces(text, expected):
    assert labels.gender_label(text) == expected


def test_unknown_gender_is_rejected():
    with pytest.raises(ValueError, match="expected 'male' or 'female'"):
        labels.gender_label("other")


@pytest.mark.parametrize(("age", "expected"), [(18, 0), (29, 0), (30, 1), (59, 1), (60, 2), (75, 2)])
def test_official_age_bins(age, expected):
    assert labels.age_label(age) == expected


def test_training_age_boundary_moves_the_old_bin():
    assert labels.age_label(58, old_min=58) == 2
    assert labels.age_label(57, old_min=58) == 1


@pytest.mark.parametrize(("mask", "gender", "age"), [(3, 0, 0), (0, 2, 0), (0, 0, 3), (-1, 0, 0)])
def test_encode_rejects_out_of_range_labels(mask, gender, age):
    with pytest.raises(ValueError, match="label must be in"):
        labels.encode_class(mask, gender, age)


@pytest.mark.parametrize("cls", [-1, 18])
def test_decode_rejects_out_of_range_classes(cls):
    with pytest.raises(ValueError, match="0..17"):
        labels.decode_class(cls)
