"""A synthetic stand-in for the competition data, in exactly its layout.

The real photos are not public, so demos and tests run on cartoon faces drawn with PIL:

* ``OUT/train/images/<id>_<gender>_Asian_<age>/{mask1..mask5,incorrect_mask,normal}.jpg``,
  ``OUT/train/train.csv`` (``id,gender,race,age,path``; ``path`` is the folder name);
* ``OUT/eval/images/<40 hex chars>.jpg`` and ``OUT/eval/info.csv`` (``ImageID,ans`` with
  ``ans=0`` placeholders, as the competition ships it);
* ``OUT/eval_truth.csv`` (``ImageID,ans,mask,gender,age``: the 18-class answer and the three task
  labels), outside ``eval/`` so inference cannot see it.

Every person keeps one identity over the seven photos (face shape, skin tone, hair colour and
style, background, clothes), drawn from the person's own random generator. The labels are
visible: a mask over mouth and nose (``mask1..5``, five different masks), a mask below the nose
or on the chin (``incorrect_mask``), no mask (``normal``); gender mostly by hair length and shape
(about 5% of people wear the other style, so it is not a lookup); age by hair greyness and
forehead lines (subtle, the hardest task, as in the real data). Each photo is jittered in
position, scale, brightness and noise. Proportions follow the real set: about 61% female, age
bins about 47% / 45% / 8% with ages 18-60 (60 is the only age in the old bin).

``quirks=True`` adds the real layout's oddities for tests of the indexer (PNG and JPEG
extensions, mixed and upper-case extensions, hidden files, an id with a suffix, an id shared by
two folders); the default output is clean.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from maskpipe import labels
from maskpipe.atomic import write_text
from maskpipe.data.corrections import KNOWN, load_corrections
from maskpipe.errors import MaskpipeError

RACE = "Asian"
FEMALE_SHARE = 0.61
AGE_BIN_SHARES = (0.47, 0.45, 0.08)
MIN_AGE, MAX_AGE = 18, 60
STYLE_SWAP_SHARE = 0.05  # people whose hair style is the other gender's
JPEG_QUALITY = 90
MARKER = ".maskpipe-synth.json"  # marks a folder this generator owns (and may regenerate)

_BACKGROUNDS = [(205, 210, 215), (170, 190, 210), (225, 215, 195), (190, 205, 180), (150, 150, 160),
                (235, 235, 230), (200, 180, 185), (120, 140, 160)]  # fmt: skip
_MASK_COLOURS = [(245, 245, 245), (150, 195, 235), (40, 40, 45), (175, 175, 180), (240, 190, 200),
                 (90, 120, 170), (230, 225, 200), (60, 90, 70)]  # fmt: skip
_SHIRTS = [(60, 70, 110), (150, 40, 50), (40, 110, 80), (220, 220, 220), (30, 30, 30), (200, 150, 60)]
_GREY_HAIR = np.array([215.0, 215.0, 218.0])


@dataclass
class Person:
    """One synthetic person: labels and the traits that fix how every photo looks."""

    id: str
    gender: str
    age: int
    traits: dict = field(repr=False)

    @property
    def folder(self) -> str:
        return f"{self.id}_{self.gender}_{RACE}_{self.age}"


@dataclass
class SynthSummary:
    """What ``generate`` wrote; ``str()`` is the printed summary."""

    out_dir: Path
    people: int
    train_images: int
    eval_people: int
    eval_images: int
    size: tuple[int, int]
    female_share: float
    age_bin_counts: tuple[int, int, int]
    seconds: float
    quirks: list[str]

    def __str__(self) -> str:
        rate = (self.train_images + self.eval_images) / max(self.seconds, 1e-9)
        bins = ", ".join(f"{n} {name}" for n, name in zip(self.age_bin_counts, labels.AGE_NAMES))
        text = (
            f"wrote a synthetic data set to {self.out_dir}: {self.people} people / {self.train_images} "
            f"training images, {self.eval_people} people / {self.eval_images} eval images "
            f"({self.size[0]}x{self.size[1]}) in {self.seconds:.1f} s ({rate:.0f} images/s)\n"
            f"training people: {self.female_share:.0%} female; age bins {bins}"
        )
        if self.eval_images:
            text += f"\neval answers: {self.out_dir / 'eval_truth.csv'}"
        if self.quirks:
            text += "\nlayout quirks: " + "; ".join(self.quirks)
        return text


def generate(
    out_dir: str | os.PathLike[str],
    people: int = 60,
    eval_people: int = 20,
    seed: int = 0,
    size: tuple[int, int] = (384, 512),
    *,
    quirks: bool = False,
) -> SynthSummary:
    """Write a synthetic data set in the competition layout to ``out_dir``.

    Args:
        out_dir: target folder; created. A folder that already holds ``train/`` or ``eval/``
            is only overwritten when this generator wrote it (it leaves a marker file).
        people: training people (7 photos each).
        eval_people: eval people (7 photos each), listed in shuffled order in info.csv;
            0 writes no eval/ folder and no eval_truth.csv.
        seed: everything is a function of the seed.
        size: (width, height) of the photos; the competition's are 384x512.
        quirks: add the real layout's quirks (see the module docstring) for indexer tests.
    """
    started = time.perf_counter()
    width, height = _check_args(people, eval_people, size)
    out = Path(out_dir)
    _prepare_out(out)
    # Claim the folder before writing into it: a run killed half-way leaves a folder that the
    # next run may regenerate, not one it refuses as someone else's data.
    marker = {"people": people, "eval_people": eval_people, "seed": seed}
    write_text(out / MARKER, json.dumps({**marker, "complete": False}) + "\n")
    seeds = np.random.SeedSequence(seed).spawn(4)
    ids = _ids(np.random.default_rng(seeds[0]), people + eval_people)
    person_seeds = seeds[1].spawn(people + eval_people)
    train_people = [_person(ids[i], np.random.default_rng(person_seeds[i])) for i in range(people)]
    eval_set = [_person(ids[people + i], np.random.default_rng(person_seeds[people + i])) for i in range(eval_people)]
    extensions, quirk_notes = _apply_quirks(train_people) if quirks else ({}, [])

    painter = _Painter(width, height, np.random.default_rng(seeds[2]))
    _write_train(out, train_people, painter, extensions)
    if quirks:
        _write_hidden_files(out, train_people)
    eval_count = _write_eval(out, eval_set, painter, np.random.default_rng(seeds[3])) if eval_set else 0
    write_text(out / MARKER, json.dumps({**marker, "complete": True}) + "\n")

    ages = [labels.age_label(p.age) for p in train_people]
    return SynthSummary(
        out_dir=out,
        people=people,
        train_images=people * len(labels.MASK_STEMS),
        eval_people=eval_people,
        eval_images=eval_count,
        size=(width, height),
        female_share=sum(p.gender == "female" for p in train_people) / max(people, 1),
        age_bin_counts=tuple(ages.count(b) for b in range(3)),  # type: ignore[arg-type]
        seconds=time.perf_counter() - started,
        quirks=quirk_notes,
    )


def _check_args(people: int, eval_people: int, size: tuple[int, int]) -> tuple[int, int]:
    if people < 1 or eval_people < 0:
        raise MaskpipeError(f"need at least 1 training person and 0 or more eval people, got {people} and {eval_people}")
    width, height = (int(v) for v in size)
    if not (16 <= width <= 4096 and 16 <= height <= 4096):
        raise MaskpipeError(f"image size must be between 16x16 and 4096x4096, got {width}x{height}")
    return width, height


def _prepare_out(out: Path) -> None:
    """Refuse to mix with data we did not write; regenerate our own output from scratch."""
    ours = (out / MARKER).is_file()
    taken = [name for name in ("train", "eval", "eval_truth.csv") if (out / name).exists()]
    if taken and not ours:
        raise MaskpipeError(
            f"{out} already holds {', '.join(taken)} that maskpipe synth did not write; "
            "choose an empty folder or remove them"
        )
    for name in taken:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    (out / MARKER).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------------------- people


def _ids(rng: np.random.Generator, count: int) -> list[str]:
    """Distinct zero-padded 6-digit ids, scattered like the real ones, in increasing order."""
    space = max(10_000, count * 3)
    if space > 999_999:
        raise MaskpipeError(f"at most 333,333 people fit in 6-digit ids, asked for {count}")
    # Ids with a shipped label correction are left out, so `--corrections known` never
    # "fixes" a synthetic person.
    reserved = {int(c.id) for c in load_corrections(KNOWN)[1] if c.id.isdigit()}
    pool = np.array([i for i in range(1, space) if i not in reserved])
    picks = np.sort(rng.choice(pool, size=count, replace=False))
    return [f"{int(i):06d}" for i in picks]


def _person(pid: str, rng: np.random.Generator) -> Person:
    gender = "female" if rng.random() < FEMALE_SHARE else "male"
    age_bin = int(rng.choice(3, p=AGE_BIN_SHARES))
    age = int(rng.integers(MIN_AGE, 30)) if age_bin == 0 else int(rng.integers(30, 60)) if age_bin == 1 else 60
    return Person(pid, gender, age, _traits(gender, age, rng))


def _traits(gender: str, age: int, rng: np.random.Generator) -> dict:
    long_hair = (gender == "female") != (rng.random() < STYLE_SWAP_SHARE)
    # Greyness rises with age: ~0 below 25, ~0.5 at 45, ~0.9+ at 60, with personal spread.
    greyness = float(np.clip(max(0.0, (age - 25) / 35) ** 1.3 + rng.normal(0, 0.07), 0, 1))
    base_hair = np.array([35.0, 28.0, 24.0]) + rng.uniform(0, 45) * np.array([1.0, 0.75, 0.5])
    skin = np.array([228.0, 188.0, 160.0]) * rng.uniform(0.78, 1.05) + rng.normal(0, 6, 3)
    return {
        "long_hair": long_hair,
        "hair_length": float(rng.uniform(0.55, 0.95)) if long_hair else float(rng.uniform(0.0, 0.12)),
        "hair": tuple(int(v) for v in np.clip(base_hair * (1 - greyness) + _GREY_HAIR * greyness, 0, 255)),
        "skin": tuple(int(v) for v in np.clip(skin, 60, 255)),
        "lines": max(0, min(4, (age - 28) // 8 + int(rng.integers(-1, 2)))) if age >= 30 else 0,
        "face_w": float(rng.uniform(0.34, 0.42)),
        "face_ratio": float(rng.uniform(1.22, 1.42)),
        "eye_gap": float(rng.uniform(0.36, 0.46)),
        "background": _jitter_colour(_BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))], rng, 18),
        "shirt": _jitter_colour(_SHIRTS[int(rng.integers(len(_SHIRTS)))], rng, 20),
        "masks": [_MASK_COLOURS[int(i)] for i in rng.permutation(len(_MASK_COLOURS))[:5]],
        "chin_mask": bool(rng.random() < 0.3),  # incorrect mask on the chin instead of under the nose
    }


def _jitter_colour(colour: tuple[int, int, int], rng: np.random.Generator, spread: float) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.array(colour) + rng.normal(0, spread, 3), 0, 255))  # type: ignore[return-value]


# ---------------------------------------------------------------------------- quirks


def _apply_quirks(people: list[Person]) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Change ids and extensions of the first few people; returns folder -> {stem: ext}."""
    notes: list[str] = []
    if len(people) >= 8:
        people[5].id = f"{people[5].id}-1"
        notes.append(f"id with a suffix ({people[5].folder})")
        people[7].id = people[6].id
        if people[7].age == people[6].age:
            people[7].age = people[7].age + 1 if people[7].age < 59 else people[7].age - 1
        notes.append(f"id {people[6].id} in two folders ({people[6].folder}, {people[7].folder})")
    stems = list(labels.MASK_STEMS)
    plans = [
        ("all .png", {s: ".png" for s in stems}),
        ("all .jpeg", {s: ".jpeg" for s in stems}),
        (".jpg and .jpeg mixed", {s: ".jpg" if i % 2 else ".jpeg" for i, s in enumerate(stems)}),
        ("upper-case extensions", {s: ".JPG" if i < 3 else ".Jpeg" for i, s in enumerate(stems)}),
    ]
    extensions: dict[str, dict[str, str]] = {}
    for person, (note, plan) in zip(people, plans):
        extensions[person.folder] = plan
        notes.append(f"{note} ({person.folder})")
    return extensions, notes


def _write_hidden_files(out: Path, people: list[Person]) -> None:
    images = out / "train" / "images"
    (images / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    folder = images / people[-1].folder
    # An AppleDouble file and a notebook checkpoint copy: both must be ignored by the indexer.
    (folder / "._mask1.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    checkpoints = folder / ".ipynb_checkpoints"
    checkpoints.mkdir(exist_ok=True)
    shutil.copyfile(folder / "mask1.jpg", checkpoints / "mask1-checkpoint.jpg")


# ---------------------------------------------------------------------------- writing


def _write_train(out: Path, people: list[Person], painter: "_Painter", extensions: dict[str, dict[str, str]]) -> None:
    images = out / "train" / "images"
    rows = []
    for person in people:
        folder = images / person.folder
        folder.mkdir(parents=True, exist_ok=True)
        for stem in labels.MASK_STEMS:
            ext = extensions.get(person.folder, {}).get(stem, ".jpg")
            painter.paint(person, stem).save(folder / f"{stem}{ext}", **_save_args(ext))
        rows.append([person.id, person.gender, RACE, person.age, person.folder])
    write_text(out / "train" / "train.csv", _csv(["id", "gender", "race", "age", "path"], rows))


def _write_eval(out: Path, people: list[Person], painter: "_Painter", rng: np.random.Generator) -> int:
    images = out / "eval" / "images"
    images.mkdir(parents=True, exist_ok=True)
    truth = []
    for person in people:
        g, a = labels.gender_label(person.gender), labels.age_label(person.age)
        for stem in labels.MASK_STEMS:
            name = f"{rng.bytes(20).hex()}.jpg"
            painter.paint(person, stem).save(images / name, **_save_args(".jpg"))
            m = labels.mask_label(stem)
            truth.append([name, labels.encode_class(m, g, a), m, g, a])
    order = rng.permutation(len(truth))
    truth = [truth[i] for i in order]
    write_text(out / "eval" / "info.csv", _csv(["ImageID", "ans"], [[row[0], 0] for row in truth]))
    write_text(out / "eval_truth.csv", _csv(["ImageID", "ans", "mask", "gender", "age"], truth))
    return len(truth)


def _save_args(ext: str) -> dict:
    if ext.lower() == ".png":
        return {"format": "PNG", "compress_level": 1}
    return {"format": "JPEG", "quality": JPEG_QUALITY}


def _csv(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


# ---------------------------------------------------------------------------- drawing


class _Painter:
    """Draws photos of people; per-photo jitter comes from one generator, in call order."""

    def __init__(self, width: int, height: int, rng: np.random.Generator) -> None:
        self.width, self.height, self.rng = width, height, rng
        pad = max(8, width // 16)
        # A few noise fields, cropped at random offsets, are much cheaper than fresh noise
        # per photo. Stored around 128 so ImageChops.add(..., offset=-128) adds zero-mean noise.
        self._pad = pad
        self._noise = [
            Image.fromarray(
                np.clip(rng.normal(128, 6, (height + pad, width + pad, 3)), 0, 255).astype(np.uint8), "RGB"
            )
            for _ in range(4)
        ]

    def paint(self, person: Person, stem: str) -> Image.Image:
        rng, t = self.rng, person.traits
        w, h = self.width, self.height
        scale = rng.uniform(0.9, 1.1)
        cx = w * (0.5 + rng.uniform(-0.05, 0.05))
        cy = h * (0.45 + rng.uniform(-0.04, 0.04))
        fw = w * t["face_w"] * scale
        fh = fw * t["face_ratio"]
        image = Image.new("RGB", (w, h), t["background"])
        draw = ImageDraw.Draw(image)
        _draw_body(draw, t, cx, cy, fw, fh, h)
        _draw_hair_back(draw, t, cx, cy, fw, fh)
        draw.ellipse(_box(cx, cy, fw / 2, fh / 2), fill=t["skin"])
        _draw_features(draw, t, cx, cy, fw, fh)
        _draw_hair_front(draw, t, cx, cy, fw, fh)
        _draw_mask(draw, t, stem, cx, cy, fw, fh)
        return self._finish(image)

    def _finish(self, image: Image.Image) -> Image.Image:
        rng = self.rng
        gain, offset = rng.uniform(0.85, 1.15), rng.uniform(-12, 12)
        lut = [int(min(255, max(0, v * gain + offset))) for v in range(256)] * 3
        image = image.point(lut)
        noise = self._noise[int(rng.integers(len(self._noise)))]
        x, y = int(rng.integers(self._pad)), int(rng.integers(self._pad))
        crop = noise.crop((x, y, x + self.width, y + self.height))
        return ImageChops.add(image, crop, scale=1.0, offset=-128)


def _box(cx: float, cy: float, rx: float, ry: float) -> tuple[float, float, float, float]:
    return (cx - rx, cy - ry, cx + rx, cy + ry)


def _darker(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(v * factor) for v in colour)  # type: ignore[return-value]


def _draw_body(draw: ImageDraw.ImageDraw, t: dict, cx: float, cy: float, fw: float, fh: float, h: int) -> None:
    neck_top = cy + fh * 0.35
    draw.rectangle((cx - fw * 0.18, neck_top, cx + fw * 0.18, cy + fh * 0.7), fill=_darker(t["skin"], 0.92))
    draw.ellipse((cx - fw * 1.25, cy + fh * 0.62, cx + fw * 1.25, h + fh * 0.9), fill=t["shirt"])


def _draw_hair_back(draw: ImageDraw.ImageDraw, t: dict, cx: float, cy: float, fw: float, fh: float) -> None:
    top = cy - fh * 0.62
    if t["long_hair"]:
        # Long hair falls behind the face down to the shoulders or below.
        bottom = cy + fh * (0.2 + t["hair_length"])
        draw.rounded_rectangle((cx - fw * 0.66, cy - fh * 0.3, cx + fw * 0.66, bottom), radius=fw * 0.3, fill=t["hair"])
        draw.ellipse(_box(cx, cy - fh * 0.12, fw * 0.66, fh * 0.52), fill=t["hair"])
    else:
        draw.ellipse((cx - fw * 0.55, top, cx + fw * 0.55, cy + fh * (0.05 + t["hair_length"])), fill=t["hair"])


def _draw_hair_front(draw: ImageDraw.ImageDraw, t: dict, cx: float, cy: float, fw: float, fh: float) -> None:
    # The top of the head: a fringe for long hair, a short crop otherwise.
    depth = 0.3 if t["long_hair"] else 0.2
    draw.chord((cx - fw * 0.53, cy - fh * 0.6, cx + fw * 0.53, cy - fh * (0.6 - 2 * depth)), 180, 360, fill=t["hair"])


def _draw_features(draw: ImageDraw.ImageDraw, t: dict, cx: float, cy: float, fw: float, fh: float) -> None:
    eye_y = cy - fh * 0.06
    gap = fw * t["eye_gap"] / 2
    er = fw * 0.06
    for side in (-1, 1):
        ex = cx + side * gap
        draw.ellipse(_box(ex, eye_y, er * 1.5, er), fill=(250, 250, 250))
        draw.ellipse(_box(ex, eye_y, er * 0.75, er * 0.75), fill=(35, 30, 30))
        draw.line((ex - er * 1.6, eye_y - er * 2.2, ex + er * 1.6, eye_y - er * 2.4), fill=_darker(t["hair"], 0.8), width=max(2, int(er * 0.5)))
    line_colour = _darker(t["skin"], 0.72)
    for i in range(t["lines"]):  # forehead lines: age
        y = cy - fh * (0.22 + 0.045 * i)
        draw.arc((cx - fw * 0.25, y - fh * 0.03, cx + fw * 0.25, y + fh * 0.03), 200, 340, fill=line_colour, width=max(2, int(fw * 0.018)))
    nose_y = cy + fh * 0.12
    draw.polygon([(cx, eye_y + er), (cx - fw * 0.07, nose_y), (cx + fw * 0.07, nose_y)], fill=_darker(t["skin"], 0.85))
    for side in (-1, 1):
        draw.ellipse(_box(cx + side * fw * 0.035, nose_y - fh * 0.01, fw * 0.02, fh * 0.012), fill=_darker(t["skin"], 0.55))
    mouth_y = cy + fh * 0.27
    draw.ellipse(_box(cx, mouth_y, fw * 0.15, fh * 0.035), fill=(170, 60, 70))
    draw.line((cx - fw * 0.14, mouth_y, cx + fw * 0.14, mouth_y), fill=(110, 35, 45), width=max(1, int(fw * 0.012)))


def _draw_mask(draw: ImageDraw.ImageDraw, t: dict, stem: str, cx: float, cy: float, fw: float, fh: float) -> None:
    label = labels.mask_label(stem)
    if label == 2:
        return
    if label == 0:
        colour = t["masks"][int(stem[-1]) - 1]
        top, bottom = cy + fh * 0.0, cy + fh * 0.5
    elif t["chin_mask"]:
        colour = t["masks"][0]
        top, bottom = cy + fh * 0.34, cy + fh * 0.56
    else:
        colour = t["masks"][0]
        top, bottom = cy + fh * 0.17, cy + fh * 0.53
    half = fw * 0.5
    draw.rounded_rectangle((cx - half, top, cx + half, bottom), radius=fw * 0.12, fill=colour, outline=_darker(colour, 0.7), width=max(1, int(fw * 0.015)))
    pleat = _darker(colour, 0.82)
    for k in (1, 2, 3):
        y = top + (bottom - top) * k / 4
        draw.line((cx - half * 0.85, y, cx + half * 0.85, y), fill=pleat, width=max(1, int(fw * 0.012)))
    strap = _darker(colour, 0.9)
    for side in (-1, 1):
        draw.line((cx + side * half, top + (bottom - top) * 0.2, cx + side * fw * 0.56, cy - fh * 0.05), fill=strap, width=max(1, int(fw * 0.02)))
