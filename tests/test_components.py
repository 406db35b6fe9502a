"""Each component's Python function called directly with artifact objects, as
kubeflow/pipelines-components tests them: ``component.python_func(...)`` with ``dsl.Dataset``,
``dsl.Model``, ... whose ``.uri`` (hence ``.path``) points into a temporary folder.

The data are tiny (24x32 photos, 12 people) and the models train one epoch at 32x24 pixels,
so the whole module runs in well under a minute on two cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from kfp import dsl

from components import IMAGE, ensemble_infer, index_data, train_model
from components.image import FALLBACK_IMAGE, read_default_image
from datafactory import make_dataset, truncate
from tiny import TINY_OVERRIDES
from maskpipe.errors import DataLayoutError, MaskpipeError
from maskpipe.labels import CLASS_NAMES, TASK_CLASS_NAMES, TASKS



def artifact(cls, folder: Path, name: str):
    """An output/input artifact whose local path is ``folder/name`` (as the launcher makes)."""
    return cls(name=name, uri=str(folder / name), metadata={})


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_dataset(root, eval_images=5)
    return root


@pytest.fixture(scope="module")
def indexed(data_root, tmp_path_factory) -> dsl.Dataset:
    out = tmp_path_factory.mktemp("index-step")
    index = artifact(dsl.Dataset, out, "index")
    index_data.python_func(
        data_root=str(data_root), index=index, report=artifact(dsl.Markdown, out, "report"),
        html_report=artifact(dsl.HTML, out, "html_report"), val_fraction=0.34,
    )  # fmt: skip
    return index


@pytest.fixture(scope="module")
def trained(indexed, tmp_path_factory) -> dict[str, tuple[dsl.Model, dsl.Metrics, dsl.ClassificationMetrics]]:
    """One epoch of each task model, trained through the component."""
    results = {}
    for task in TASKS:
        out = tmp_path_factory.mktemp(f"train-{task}")
        model = artifact(dsl.Model, out, "model")
        metrics = artifact(dsl.Metrics, out, "metrics")
        confusion = artifact(dsl.ClassificationMetrics, out, "confusion_matrix")
        train_model.python_func(
            task=task,
            index=indexed,
            model=model,
            metrics=metrics,
            confusion_matrix=confusion,
            html_report=artifact(dsl.HTML, out, "html_report"),
            preset="smoke",
            epochs=1,
            architecture="resnet10t",
            overrides=TINY_OVERRIDES,
        )
        results[task] = (model, metrics, confusion)
    return results


# ---------------------------------------------------------------------------------------------
# index_data


def test_index_data_writes_the_index_folder(indexed, data_root):
    folder = Path(indexed.path)
    assert sorted(p.name for p in folder.iterdir()) == ["index.eval.parquet", "index.parquet", "report.json"]
    frame = pd.read_parquet(folder / "index.parquet")
    assert len(frame) == 12 * 7
    assert set(frame["split"]) == {"train", "val"}
    assert indexed.metadata["images"] == 84
    assert indexed.metadata["people"] == 12
    assert indexed.metadata["eval_images"] == 5
    assert indexed.metadata["data_root"] == str(data_root)


def test_index_data_report_counts_classes_per_split(indexed):
    report = (Path(indexed.path).parent / "report").read_text()
    frame = pd.read_parquet(Path(indexed.path) / "index.parquet")
    assert "# Index" in report and "**84**" in report
    for cls in (0, 4, 17):
        n_train = int(((frame["class"] == cls) & (frame["split"] == "train")).sum())
        n_val = int(((frame["class"] == cls) & (frame["split"] == "val")).sum())
        assert f"| {cls} | {CLASS_NAMES[cls]} | {n_train} | {n_val} |" in report


def test_index_data_writes_an_html_report_beside_the_index(indexed):
    html = (Path(indexed.path).parent / "html_report").read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert "Images per class" in html and "People per gender and age bin" in html


def test_index_data_lists_skipped_files_in_the_report(tmp_path):
    data = make_dataset(tmp_path / "data", eval_images=2)
    broken = truncate(data.image("000003_female_Asian_22", "mask2"))
    out = tmp_path / "out"
    index, report = artifact(dsl.Dataset, out, "index"), artifact(dsl.Markdown, out, "report")
    html_report = artifact(dsl.HTML, out, "html_report")
    index_data.python_func(data_root=str(data.root), index=index, report=report, html_report=html_report)
    text = Path(report.path).read_text()
    assert "## Skipped files" in text
    assert broken.relative_to(data.root).as_posix() in text
    assert broken.relative_to(data.root).as_posix() in Path(html_report.path).read_text()
    assert index.metadata["skipped_files"] == 1
    assert index.metadata["images"] == 12 * 7 - 1


def test_index_data_fails_naming_a_missing_data_root(tmp_path):
    missing = tmp_path / "no-such-data"
    out = tmp_path / "out"
    with pytest.raises(DataLayoutError, match="no-such-data"):
        index_data.python_func(
            data_root=str(missing), index=artifact(dsl.Dataset, out, "index"),
            report=artifact(dsl.Markdown, out, "report"), html_report=artifact(dsl.HTML, out, "html_report"),
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# train_model


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_train_model_writes_a_checkpoint_folder(trained, task):
    model, _, _ = trained[task]
    folder = Path(model.path)
    for name in ("model.safetensors", "checkpoint.json", "config.yaml", "history.json", "metrics.json", "mistakes.json"):
        assert (folder / name).is_file(), name
    # the resume state is for restarting the step, not part of the artifact
    assert not (folder / "state").exists()
    assert json.loads((folder / "checkpoint.json").read_text())["task"] == task


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_train_model_metadata_tells_what_the_model_is(trained, task):
    model, _, _ = trained[task]
    meta = model.metadata
    assert meta["task"] == task
    assert meta["architecture"] == "resnet10t"
    assert meta["input_size"] == "32x24"
    assert meta["epochs"] == 1 and meta["best_epoch"] == 1
    assert meta["class_names"] == list(TASK_CLASS_NAMES[task])
    saved = json.loads((Path(model.path) / "metrics.json").read_text())
    assert meta["best_val_f1"] == pytest.approx(saved["macro_f1"])


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_train_model_logs_metrics_and_confusion_matrix(trained, task):
    model, metrics, confusion = trained[task]
    saved = json.loads((Path(model.path) / "metrics.json").read_text())
    assert metrics.metadata["val_macro_f1"] == pytest.approx(saved["macro_f1"])
    assert metrics.metadata["val_accuracy"] == pytest.approx(saved["accuracy"])
    assert "train_loss" in metrics.metadata
    matrix = confusion.metadata["confusionMatrix"]
    names = list(TASK_CLASS_NAMES[task])
    assert [s["displayName"] for s in matrix["annotationSpecs"]] == names
    rows = [row["row"] for row in matrix["rows"]]
    assert rows == saved["confusion_matrix"]
    assert sum(map(sum, rows)) == saved["count"]


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_train_model_writes_an_html_report_of_its_task(trained, task):
    model, _, _ = trained[task]
    html = (Path(model.path).parent / "html_report").read_text()
    assert f"Training: {task}" in html and "Learning rate per optimizer step" in html
    assert "Most confidently wrong" in html


@pytest.mark.slow
def test_train_model_named_parameters_reach_the_saved_config(trained):
    import yaml

    model, _, _ = trained["age"]
    config = yaml.safe_load((Path(model.path) / "config.yaml").read_text())
    assert config["preset"] == "smoke"
    assert config["train"]["epochs"] == 1
    assert config["train"]["batch_size"] == 8  # from the overrides list, applied last
    assert config["data"]["input_size"] == [32, 24]


def test_train_model_rejects_a_bad_override_before_training(indexed, tmp_path):
    from maskpipe.config import ConfigError

    with pytest.raises(ConfigError, match="train.nope"):
        train_model.python_func(
            task="mask", index=indexed, model=artifact(dsl.Model, tmp_path, "model"),
            metrics=artifact(dsl.Metrics, tmp_path, "metrics"),
            confusion_matrix=artifact(dsl.ClassificationMetrics, tmp_path, "cm"),
            html_report=artifact(dsl.HTML, tmp_path, "html_report"),
            preset="smoke", overrides=["train.nope=1"],
        )  # fmt: skip
    assert not (tmp_path / "model").exists()


def test_train_model_needs_a_run_id_for_the_resume_mirror(indexed, tmp_path):
    from maskpipe.errors import MaskpipeError

    with pytest.raises(MaskpipeError, match="run_id"):
        train_model.python_func(
            task="mask", index=indexed, model=artifact(dsl.Model, tmp_path, "model"),
            metrics=artifact(dsl.Metrics, tmp_path, "metrics"),
            confusion_matrix=artifact(dsl.ClassificationMetrics, tmp_path, "cm"),
            html_report=artifact(dsl.HTML, tmp_path, "html_report"),
            preset="smoke", resume_bucket="some-bucket", run_id="",
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# ensemble_infer


def run_ensemble(indexed, trained, out: Path, **kwargs):
    outputs = {
        "submission": artifact(dsl.Dataset, out, "submission"),
        "metrics": artifact(dsl.Metrics, out, "metrics"),
        "confusion_matrix": artifact(dsl.ClassificationMetrics, out, "confusion_matrix"),
        "report": artifact(dsl.Markdown, out, "report"),
        "html_report": artifact(dsl.HTML, out, "html_report"),
    }
    ensemble_infer.python_func(
        index=indexed,
        mask_model=trained["mask"][0],
        gender_model=trained["gender"][0],
        age_model=trained["age"][0],
        preset="smoke",
        overrides=TINY_OVERRIDES,
        **outputs,
        **kwargs,
    )
    return outputs


@pytest.fixture(scope="module")
def ensembled(indexed, trained, tmp_path_factory):
    return run_ensemble(indexed, trained, tmp_path_factory.mktemp("infer"))


@pytest.mark.slow
def test_ensemble_infer_writes_one_row_per_info_csv_row(ensembled, data_root):
    submission = pd.read_csv(ensembled["submission"].path)
    info = pd.read_csv(data_root / "eval" / "info.csv")
    assert list(submission.columns) == ["ImageID", "ans"]
    assert submission["ImageID"].tolist() == info["ImageID"].tolist()
    assert submission["ans"].between(0, 17).all()
    assert ensembled["submission"].metadata["rows"] == len(info)


@pytest.mark.slow
def test_ensemble_infer_scores_the_validation_people(ensembled, indexed):
    frame = pd.read_parquet(Path(indexed.path) / "index.parquet")
    n_val = int((frame["split"] == "val").sum())
    metrics = ensembled["metrics"].metadata
    assert metrics["val_images"] == n_val
    assert 0.0 <= metrics["val_macro_f1"] <= 1.0
    matrix = ensembled["confusion_matrix"].metadata["confusionMatrix"]
    assert [s["displayName"] for s in matrix["annotationSpecs"]] == list(CLASS_NAMES)
    assert sum(sum(r["row"]) for r in matrix["rows"]) == n_val
    report = Path(ensembled["report"].path).read_text()
    assert f"{metrics['val_macro_f1']:.4f}" in report
    html = Path(ensembled["html_report"].path).read_text()
    assert f"Scores on validation people ({n_val} images)" in html
    assert f"{metrics['val_macro_f1']:.4f}" in html


@pytest.mark.slow
def test_ensemble_infer_with_tta_gives_a_valid_submission(indexed, trained, tmp_path):
    outputs = run_ensemble(indexed, trained, tmp_path, tta=True)
    assert outputs["submission"].metadata["tta"] is True
    assert len(pd.read_csv(outputs["submission"].path)) == 5


@pytest.mark.slow
def test_ensemble_infer_without_eval_data_says_what_is_missing(indexed, trained, tmp_path):
    import shutil

    no_eval = artifact(dsl.Dataset, tmp_path, "index")
    shutil.copytree(indexed.path, no_eval.path)
    (Path(no_eval.path) / "index.eval.parquet").unlink()
    with pytest.raises(DataLayoutError, match="eval/info.csv"):
        run_ensemble(no_eval, trained, tmp_path / "out")


def export_trained(trained, out: Path, *, tta: bool, **kwargs) -> dsl.Model:
    """What the pipeline's export-model step writes for the ``trained`` checkpoints."""
    from components.export_model import export_model

    model = dsl.Model(name="model", uri=str(out / "model"), metadata={})
    export_model.python_func(**{f"{t}_model": trained[t][0] for t in TASKS}, model=model, tta=tta, **kwargs)
    return model


@pytest.mark.slow
def test_int8_export_calibrates_on_training_people_and_the_ensemble_scores_it(indexed, trained, tmp_path):
    from maskpipe.model_card import read_model_dir

    exported = export_trained(trained, tmp_path, tta=False, index=indexed, precision="int8")
    card = read_model_dir(exported.path)
    assert card.precision == "int8" and exported.metadata["precision"] == "int8"
    measured = card.data["quantization"]
    assert exported.metadata["int8_agreement_with_fp32"] == measured["agreement"]["class"]
    assert "training photos of" in measured["calibration_source"]
    outputs = run_ensemble(indexed, trained, tmp_path / "out", exported_model=exported)
    assert outputs["submission"].metadata["model"] == "exported model, onnx int8 backend"


def test_int8_export_needs_the_index_and_a_known_precision(trained, tmp_path):
    with pytest.raises(MaskpipeError, match="pass index"):
        export_trained(trained, tmp_path, tta=False, precision="int8")
    with pytest.raises(MaskpipeError, match="fp32 or int8"):
        export_trained(trained, tmp_path, tta=False, precision="fp16")
    assert not (tmp_path / "model").exists()  # refused before exporting anything


@pytest.mark.slow
def test_ensemble_infer_scores_the_exported_model_and_agrees_with_the_checkpoints(
    ensembled, indexed, trained, tmp_path
):
    exported = export_trained(trained, tmp_path, tta=False)
    outputs = run_ensemble(indexed, trained, tmp_path / "out", exported_model=exported)
    assert outputs["submission"].metadata["model"] == "exported model, onnx backend"  # auto on a CPU
    assert ensembled["submission"].metadata["model"] == "three checkpoints, torch backend"
    # The graph and the checkpoints give the same classes (probabilities within 1e-4: test_export).
    ours, theirs = (pd.read_csv(o["submission"].path) for o in (outputs, ensembled))
    assert ours.equals(theirs)
    for key in ("val_images", "val_macro_f1", "val_accuracy"):
        assert outputs["metrics"].metadata[key] == pytest.approx(ensembled["metrics"].metadata[key])
    assert "exported model, onnx backend" in Path(outputs["report"].path).read_text()
    assert "exported model, onnx backend" in Path(outputs["html_report"].path).read_text()


@pytest.mark.slow
def test_ensemble_infer_can_run_the_exported_folder_with_torch(indexed, trained, ensembled, tmp_path):
    exported = export_trained(trained, tmp_path, tta=False)
    outputs = run_ensemble(indexed, trained, tmp_path / "out", exported_model=exported, backend="torch")
    assert outputs["submission"].metadata["model"] == "exported model, torch backend"
    assert pd.read_csv(outputs["submission"].path).equals(pd.read_csv(ensembled["submission"].path))


@pytest.mark.slow
def test_ensemble_infer_refuses_onnx_without_an_exported_model(indexed, trained, tmp_path):
    with pytest.raises(MaskpipeError, match="export=true"):
        run_ensemble(indexed, trained, tmp_path, backend="onnx")
    assert not (tmp_path / "submission").exists()


@pytest.mark.slow
def test_ensemble_infer_refuses_tta_that_the_exported_graph_lacks(indexed, trained, tmp_path):
    exported = export_trained(trained, tmp_path, tta=False)
    with pytest.raises(MaskpipeError, match="exported without flip TTA"):
        run_ensemble(indexed, trained, tmp_path / "out", exported_model=exported, tta=True)


# ---------------------------------------------------------------------------------------------
# how the components are built


@pytest.mark.parametrize("component", [index_data, train_model, ensemble_infer])
def test_component_runs_in_the_project_image_without_pip(component):
    container = component.component_spec.implementation.container
    assert container.image == IMAGE
    assert "pip install" not in " ".join(container.command)


@pytest.mark.parametrize("component", [index_data, train_model, ensemble_infer])
def test_every_parameter_is_documented(component):
    doc = component.python_func.__doc__
    for name in component.component_spec.inputs or {}:
        assert f"{name}:" in doc, f"{component.name}: parameter {name} missing from Args"
    for name in component.component_spec.outputs or {}:
        assert f"{name}:" in doc, f"{component.name}: output {name} missing from Args"


def test_default_image_comes_from_the_image_file(tmp_path):
    image_file = tmp_path / "IMAGE"
    image_file.write_text("# built by CI\nregistry.example/maskpipe:1.2.3\n")
    assert read_default_image(image_file) == "registry.example/maskpipe:1.2.3"
    assert read_default_image(tmp_path / "missing") == FALLBACK_IMAGE


def test_image_environment_variable_overrides_the_default():
    import subprocess
    import sys

    code = "from components.image import IMAGE; print(IMAGE)"
    env = {"MASKPIPE_IMAGE": "registry.example/maskpipe:pinned", "PATH": ""}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent,
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.strip() == "registry.example/maskpipe:pinned"


def test_int8_calibration_photos_are_a_seeded_sample_of_training_people_only(indexed):
    from maskpipe.data.index import read_index
    from maskpipe.quantize import calibration_images_from_index

    index_path = Path(indexed.path) / "index.parquet"
    frame, root = read_index(index_path)
    photos, source = calibration_images_from_index(index_path, images=4)
    assert len(photos) == min(8, int((frame["split"] == "train").sum()))
    rel = {p.relative_to(root).as_posix() for p in photos}
    assert rel <= set(frame.loc[frame["split"] == "train", "path"])  # never a validation person
    assert photos == calibration_images_from_index(index_path, images=4)[0]  # seeded
    assert str(root) in source
