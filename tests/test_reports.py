"""The HTML step reports, written by ``maskpipe index|train|infer`` on a small synthetic set and
looked at in headless Chromium: nothing blank, every chart and thumbnail decoded, nothing
loaded from elsewhere, labels that match the data, and the size cap held on a large set.

``MASKPIPE_UPDATE_SCREENSHOTS=1`` also saves each screenshot, small, under ``docs/img/`` for
docs/pipeline.md.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from browser import check_images, chromium, embedded_svg_texts, external_references, is_blank, screenshot
from maskpipe.cli import main
from maskpipe.data.index import read_index
from maskpipe.evaluate import read_answers, score_classes
from maskpipe.labels import CLASS_NAMES, MASK_NAMES
from maskpipe.reports import PredictionSet, write_index_report, write_infer_report, write_run_index, write_train_report
from maskpipe.reports.page import MAX_REPORT_BYTES, MAX_TABLE_ROWS, esc
from tiny import TINY_OVERRIDES

REPO = Path(__file__).resolve().parent.parent
SCREENSHOTS = REPO / "docs" / "img"
# Skipped on a machine without Chromium, except in CI (.ci/run installs it and sets this).
needs_chromium = pytest.mark.skipif(
    chromium() is None and os.environ.get("MASKPIPE_REQUIRE_CHROMIUM") != "1",
    reason="chromium is not installed (apt-get install -y chromium; .ci/run installs it)",
)
# window size per report, tall enough to show the whole page
WINDOWS = {"index": (1280, 2500), "train-age": (1280, 2000), "infer": (1280, 3100), "run": (800, 900)}
# Screenshots for the docs come from models that learned something (the smoke recipe on more
# people, about 3 minutes); the checks themselves need only a tiny run.
UPDATE_SCREENSHOTS = os.environ.get("MASKPIPE_UPDATE_SCREENSHOTS") == "1"
PEOPLE, TRAINING = (60, ["train.epochs=4"]) if UPDATE_SCREENSHOTS else (24, [*TINY_OVERRIDES, "train.epochs=2"])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    """Index, three one-epoch models and a submission, through the CLI; the report paths."""
    from maskpipe.data.synth import generate

    root = tmp_path_factory.mktemp("reports")
    generate(root / "data", people=PEOPLE, eval_people=4, seed=5, size=(96, 128))
    out = root / "out"
    assert main(["index", str(root / "data"), "-o", str(out / "index.parquet"), "--report", str(out / "report.json"), "--val-fraction", "0.3"]) == 0
    sets = [f"--set={o}" for o in [*TRAINING, "model.arch=resnet10t"]]
    for task in ("mask", "gender", "age"):
        assert main(["train", "--task", task, "--index", str(out / "index.parquet"), "--out", str(out / task), "--preset", "smoke", *sets]) == 0
    assert main(["infer", "--mask", str(out / "mask"), "--gender", str(out / "gender"), "--age", str(out / "age"),
                 "--data", str(root / "data"), "-o", str(out / "submission.csv"), "--device", "cpu", "--workers", "0"]) == 0  # fmt: skip
    reports = {
        "index": out / "index.report.html",
        "train-age": out / "age" / "report.html",
        "infer": out / "submission.report.html",
    }
    reports["run"] = write_run_index({"index-data": reports["index"], "train-age": reports["train-age"], "ensemble-infer": reports["infer"]}, out / "report.html")
    return {**reports, "root": root, "out": out}


# ---------------------------------------------------------------------------------------------
# as a person sees them


@needs_chromium
@pytest.mark.parametrize("name", list(WINDOWS))
def test_report_renders_with_every_chart_and_thumbnail_loaded(run, name, tmp_path):
    images = check_images(run[name], tmp_path)
    expected = len(re.findall(r"<img\b", run[name].read_text()))
    assert len(images) == expected
    broken = [image["alt"] for image in images if not image["ok"]]
    assert not broken, f"{name}: images that did not load: {broken}"
    png = screenshot(run[name], tmp_path / f"{name}.png", WINDOWS[name])
    assert not is_blank(png), f"{name}: the screenshot is blank"
    if UPDATE_SCREENSHOTS:
        _save_small(png, SCREENSHOTS / f"report-{name}.png")


def _save_small(png: Path, target: Path) -> None:
    """A docs-sized copy: 900 px wide, 256 colours."""
    from PIL import Image

    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(png) as image:
        image = image.convert("RGB")
        image = image.resize((900, round(image.height * 900 / image.width)), Image.LANCZOS)
        image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)


@needs_chromium
def test_the_image_check_fails_on_a_broken_image_and_a_blank_page(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><img alt="broken" src="data:image/png;base64,AAAA"></body></html>')
    assert check_images(page, tmp_path) == [{"alt": "broken", "ok": False, "width": 0}]
    assert is_blank(screenshot(page, tmp_path / "blank.png", (400, 300)))


# ---------------------------------------------------------------------------------------------
# structure


@pytest.mark.parametrize("name", list(WINDOWS))
def test_report_loads_nothing_from_elsewhere(run, name):
    text = run[name].read_text()
    assert external_references(text) == []
    assert len(text.encode()) < MAX_REPORT_BYTES


def test_the_resource_check_finds_urls_scripts_and_fonts():
    page = (
        '<img src="http://example.com/a.png"><link rel="stylesheet" href="//cdn/x.css">'
        "<style>@font-face{src:url(https://f/x.woff)}</style><script>1</script>"
    )
    assert len(external_references(page)) >= 5


def test_index_report_labels_match_the_index(run):
    frame, _ = read_index(run["out"] / "index.parquet")
    text = run["index"].read_text()
    assert f"<td>people</td><td>{frame['profile'].nunique()}</td>" in text
    assert f"<td>training images</td><td>{len(frame)}</td>" in text
    charts = embedded_svg_texts(text)
    for c, name in enumerate(CLASS_NAMES):
        assert f"{c:>2} {name}".strip() in charts
    totals = frame["class"].value_counts()
    class_bar_labels = [t for t in charts if t.isdigit()]
    for count in totals:
        assert str(count) in class_bar_labels
    for label, name in enumerate(MASK_NAMES):
        assert f"<h3>{name} ({int((frame['mask_label'] == label).sum())} images)</h3>" in text


def test_train_report_shows_each_epoch_and_the_recorded_mistakes(run):
    text = run["train-age"].read_text()
    history = json.loads((run["out"] / "age" / "history.json").read_text())
    mistakes = json.loads((run["out"] / "age" / "mistakes.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, len(history) + 1)) and len(history) >= 2
    assert f"<td>epochs done</td><td>{len(history)}</td>" in text
    charts = embedded_svg_texts(text)
    assert {"Loss", "Accuracy", "Macro-F1", "Learning rate per optimizer step"} <= set(charts)
    for item in mistakes["mistakes"]:
        names = mistakes["class_names"]
        assert f"true: {names[item['true']]}".replace(">", "&gt;").replace("<", "&lt;") in text
    assert text.count('class="card wrong"') == len(mistakes["mistakes"])


def test_infer_report_scores_the_eval_images_against_their_truth(run):
    text = run["infer"].read_text()
    truth = read_answers(run["root"] / "data" / "eval_truth.csv", "truth")
    submission = read_answers(run["out"] / "submission.csv", "submission")
    merged = truth.merge(submission, on="ImageID", suffixes=("_t", "_p"))
    scores = score_classes(merged["ans_t"].to_numpy(), merged["ans_p"].to_numpy())
    assert f"Scores on eval images ({len(truth)} images)" in text
    assert f"<td>18-class macro-F1</td><td>{scores['macro_f1']:.4f}</td>" in text
    wrong = int((merged["ans_t"] != merged["ans_p"]).sum())
    assert f"{wrong} wrong, {len(merged) - wrong} right" in text


def test_run_index_links_the_step_reports_relatively(run):
    text = run["run"].read_text()
    links = re.findall(r'href="([^"]+)"', text)
    assert links == ["reports/index-data.html", "reports/train-age.html", "reports/ensemble-infer.html"]
    for link in links:
        assert (run["run"].parent / link).read_bytes()[:15] == b"<!DOCTYPE html>"


def test_run_index_lists_a_missing_step_report_instead_of_failing(tmp_path):
    out = write_run_index({"train-mask": tmp_path / "nowhere.html"}, tmp_path / "report.html")
    assert "no report" in out.read_text() and "nowhere.html" in out.read_text()


# ---------------------------------------------------------------------------------------------
# size cap on a large set


def test_reports_stay_under_the_size_cap_on_a_large_set(run, tmp_path):
    frame, _ = read_index(run["out"] / "index.parquet")
    big = pd.concat([frame] * 300, ignore_index=True)  # 30k+ rows, the photos reused
    report = json.loads((run["out"] / "report.json").read_text())
    report["skipped_files"] = [{"path": f"train/images/{i:06d}_x/mask1.jpg", "reason": "cannot be decoded"} for i in range(20000)]
    html = write_index_report(big, report, tmp_path / "index.html").read_text()
    assert len(html.encode()) < MAX_REPORT_BYTES
    assert f"... and {20000 - MAX_TABLE_ROWS} more rows; all of them are in report.json" in html

    folder = tmp_path / "train"
    folder.mkdir()
    for name in ("metrics.json", "checkpoint.json", "mistakes.json"):
        (folder / name).write_text((run["out"] / "age" / name).read_text())
    row = json.loads((run["out"] / "age" / "history.json").read_text())[0]
    (folder / "history.json").write_text(json.dumps([{**row, "epoch": e, "lr_steps": [0.001] * 2000} for e in range(1, 101)]))
    assert write_train_report(folder, tmp_path / "train.html").stat().st_size < MAX_REPORT_BYTES

    rng = np.random.default_rng(0)
    n = 50000
    probs = {task: rng.dirichlet(np.ones(k), size=n).astype(np.float32) for task, k in (("mask", 3), ("gender", 2), ("age", 3))}
    paths = (frame["path"].tolist() * (n // len(frame) + 1))[:n]
    sets = [PredictionSet("eval images", str(run["root"] / "data"), paths, [f"{i}.jpg" for i in range(n)], probs, rng.integers(0, 18, n))]
    assert write_infer_report(sets, tmp_path / "infer.html").stat().st_size < MAX_REPORT_BYTES


def test_infer_refuses_a_truth_file_of_another_eval_set(run, tmp_path, capsys):
    from cli_helpers import cli_error

    wrong = tmp_path / "truth.csv"
    wrong.write_text("ImageID,ans\nnot-in-this-set.jpg,3\n")
    out = run["out"]
    line = cli_error(
        capsys, "infer", "--mask", str(out / "mask"), "--gender", str(out / "gender"), "--age", str(out / "age"),
        "--data", str(run["root"] / "data"), "-o", str(tmp_path / "submission.csv"), "--device", "cpu",
        "--workers", "0", "--truth", str(wrong),
    )  # fmt: skip
    assert str(wrong) in line and "lacks 28 of the 28 eval images" in line


def test_index_report_lists_skipped_files_and_label_corrections_with_their_reasons(tmp_path):
    from datafactory import make_dataset, truncate
    from maskpipe.data.index import build_index

    data = make_dataset(tmp_path / "data", eval_images=0)
    broken = truncate(data.image("000004_male_Asian_33", "mask3"))
    fixes = tmp_path / "fixes.yaml"
    fixes.write_text("corrections:\n  - {id: '000002', gender: female, note: reported as mislabelled}\n")
    result = build_index(str(data.root), tmp_path / "index.parquet", corrections=str(fixes))
    text = write_index_report(result.train, result.report, tmp_path / "index.html").read_text()
    (skipped,) = result.report["skipped_files"]
    assert f"<tr><td>{broken.relative_to(data.root).as_posix()}</td><td>{esc(skipped['reason'])}</td></tr>" in text
    assert "<tr><td>000002_male_Asian_20</td><td>gender</td><td>male</td><td>female</td><td>reported as mislabelled</td></tr>" in text
