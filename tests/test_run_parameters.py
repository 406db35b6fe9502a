"""The run parameters are written once (``pipeline_dag.RunParameters``): the compiled pipeline's
inputs, the command-line flags, the train component's defaults and the tests' tiny runs agree
with it; and every component is a short adapter over a ``maskpipe.steps`` function."""

from __future__ import annotations

import ast
import inspect
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from components import train_model
from pipeline_cli.commands import build_parser
from pipeline_dag import RunParameters, make_pipeline, run_parameter_flag
from tiny import tiny_pipeline_arguments

REPO = Path(__file__).resolve().parents[1]
# What KFP's component spec calls each Python type of a parameter.
KFP_TYPES = {str: "STRING", int: "NUMBER_INTEGER", float: "NUMBER_DOUBLE", bool: "BOOLEAN"}
MAX_COMPONENT_LINES = 60


def _defaults() -> dict:
    out = {}
    for f in fields(RunParameters):
        if f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
        elif f.default is not MISSING:
            out[f.name] = f.default
    return out


def test_the_compiled_pipeline_takes_exactly_the_run_parameters_with_their_defaults():
    spec = make_pipeline().pipeline_spec.root.input_definitions.parameters
    assert sorted(spec) == sorted(f.name for f in fields(RunParameters))
    defaults = _defaults()
    for f in fields(RunParameters):
        param = spec[f.name]
        if f.name in defaults:
            assert param.is_optional, f.name
            value = param.default_value
            got = list(value.list_value) if f.name == "overrides" else getattr(value, value.WhichOneof("kind"))
            assert got == defaults[f.name], f.name
        else:
            assert not param.is_optional, f.name
        assert param.description.split() == f.metadata["help"].split(), f.name


def test_the_pipeline_functions_signature_is_the_dataclass():
    signature = inspect.signature(make_pipeline().pipeline_func)
    assert [(p.name, p.default) for p in signature.parameters.values()] == [
        (f.name, _defaults().get(f.name, inspect.Parameter.empty)) for f in fields(RunParameters)
    ]


@pytest.mark.parametrize("command", ["run-local", "submit"])
def test_each_run_parameter_is_one_flag_whose_default_is_the_dataclass_default(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command" or getattr(a, "choices", None))
    group = next(g for g in sub.choices[command]._action_groups if g.title == "pipeline parameters")
    actions = {a.dest: a for a in group._group_actions}
    assert sorted(actions) == sorted(f.name for f in fields(RunParameters))
    defaults = _defaults()
    for f in fields(RunParameters):
        action = actions[f.name]
        assert action.option_strings[0] == run_parameter_flag(f.name)
        assert action.help.startswith(f.metadata["help"]), f.name
        if f.name == "tta":  # None: the preset's infer.tta
            assert action.default is None
        elif f.name in defaults:
            assert action.default == defaults[f.name], f.name
        else:
            assert action.required, f.name


def test_the_flags_give_every_run_parameter():
    flags = ["--data", "/data", "--lr", "0.5", "--arch", "resnet18", "--set", "train.seed=1"]
    args = build_parser().parse_args(["run-local", *flags])
    from pipeline_cli.arguments import pipeline_arguments

    arguments = pipeline_arguments(args)
    assert list(arguments) == [f.name for f in fields(RunParameters)]
    assert arguments["learning_rate"] == 0.5 and arguments["architecture"] == "resnet18"
    assert arguments["overrides"] == ["train.seed=1"] and arguments["data_root"] == "/data"


def test_the_train_component_defaults_are_the_run_parameters_defaults():
    inputs = train_model.component_spec.inputs
    for name, default in _defaults().items():
        if name in inputs:
            assert inputs[name].default == default, name


def test_tiny_arguments_are_every_run_parameter_and_refuse_an_unknown_one(tmp_path):
    assert list(tiny_pipeline_arguments(tmp_path)) == [f.name for f in fields(RunParameters)]
    with pytest.raises(TypeError):
        tiny_pipeline_arguments(tmp_path, epoch=3)


def _component_modules():
    for path in sorted((REPO / "components").glob("*.py")):
        tree = ast.parse(path.read_text())
        decorated = [
            node for node in tree.body if isinstance(node, ast.FunctionDef)
            and any("component" in ast.unparse(d) for d in node.decorator_list)
        ]  # fmt: skip
        if decorated:
            yield path, decorated


def test_every_component_module_is_short_and_calls_one_step_function():
    modules = list(_component_modules())
    assert len(modules) == 6  # train_model and train_trainjob (the Kubeflow Trainer mode) adapt the same step module
    for path, (func,) in modules:
        lines = len(path.read_text().splitlines())
        assert lines <= MAX_COMPONENT_LINES, f"{path.name}: {lines} lines, at most {MAX_COMPONENT_LINES}"
        steps = {
            node.module for node in ast.walk(func)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("maskpipe.steps")
        }  # fmt: skip
        assert len(steps) == 1, f"{path.name} imports {sorted(steps) or 'no'} maskpipe.steps module"
