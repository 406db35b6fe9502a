"""The label rules of the competition and the 18-class encoding, in one place.

class = mask * 6 + gender * 3 + age, with
  mask:   wear 0 (mask1..mask5), incorrect 1 (incorrect_mask), not wear 2 (normal)
  gender: male 0, female 1
  age:    <30 0, 30-59 1, >=60 2 (the official bins; training may move the upper boundary)
"""

from __future__ import annotations

TASKS: tuple[str, ...] = ("mask", "gender", "age")

MASK_STEMS: dict[str, int] = {
    "mask1": 0,
    "mask2": 0,
    "mask3": 0,
    "mask4": 0,
    "mask5": 0,
    "incorrect_mask": 1,
    "normal": 2,
}
GENDERS: dict[str, int] = {"male": 0, "female": 1}

MASK_NAMES: tuple[str, ...] = ("wear", "incorrect", "not_wear")
GENDER_NAMES: tuple[str, ...] = ("male", "female")
AGE_NAMES: tuple[str, ...] = ("<30", "30-59", ">=60")
TASK_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "mask": MASK_NAMES,
    "gender": GENDER_NAMES,
    "age": AGE_NAMES,
}
NUM_CLASSES: dict[str, int] = {task: len(names) for task, names in TASK_CLASS_NAMES.items()}
NUM_COMBINED_CLASSES = 18

OFFICIAL_AGE_YOUNG_MAX = 30  # ages below this are bin 0
OFFICIAL_AGE_OLD_MIN = 60  # ages at or above this are bin 2


def mask_label(stem: str) -> int:
    """Mask label of an image from its file stem (``mask3`` -> 0)."""
    try:
        return MASK_STEMS[stem]
    except KeyError:
        raise ValueError(
            f"unknown image stem {stem!r}; expected one of {sorted(MASK_STEMS)}"
        ) from None


def gender_label(gender: str) -> int:
    """Gender label from the folder-name word (``female`` -> 1), any letter case."""
    try:
        return GENDERS[gender.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown gender {gender!r}; expected 'male' or 'female'") from None


def age_label(age: int, old_min: int = OFFICIAL_AGE_OLD_MIN) -> int:
    """Age bin of an age in years. ``old_min`` moves the upper boundary for training
    (several strong teams trained with 58); evaluation always uses the official 60."""
    age = int(age)
    if age < 0:
        raise ValueError(f"age must be non-negative, got {age}")
    if not OFFICIAL_AGE_YOUNG_MAX < old_min:
        raise ValueError(f"old-age boundary must be above {OFFICIAL_AGE_YOUNG_MAX}, got {old_min}")
    if age < OFFICIAL_AGE_YOUNG_MAX:
        return 0
    if age < old_min:
        return 1
    return 2


def encode_class(mask: int, gender: int, age: int) -> int:
    """Combine the three task labels into the competition's 18-class id."""
    for name, value, n in (("mask", mask, 3), ("gender", gender, 2), ("age", age, 3)):
        if not 0 <= int(value) < n:
            raise ValueError(f"{name} label must be in 0..{n - 1}, got {value}")
    return int(mask) * 6 + int(gender) * 3 + int(age)


def decode_class(cls: int) -> tuple[int, int, int]:
    """Split an 18-class id into (mask, gender, age)."""
    cls = int(cls)
    if not 0 <= cls < NUM_COMBINED_CLASSES:
        raise ValueError(f"class must be in 0..17, got {cls}")
    return cls // 6, (cls // 3) % 2, cls % 3


def class_name(cls: int) -> str:
    """Human-readable name of an 18-class id, e.g. ``wear/female/30-59``."""
    mask, gender, age = decode_class(cls)
    return f"{MASK_NAMES[mask]}/{GENDER_NAMES[gender]}/{AGE_NAMES[age]}"


CLASS_NAMES: tuple[str, ...] = tuple(class_name(c) for c in range(NUM_COMBINED_CLASSES))


def task_of_class(cls: int, task: str) -> int:
    """The label of one task inside an 18-class id."""
    return decode_class(cls)[TASKS.index(check_task(task))]


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    return task
