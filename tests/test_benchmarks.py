"""Smoke runs of the benchmark scripts: tiny sizes, one iteration, the documented last line.

The benchmarks themselves are run by hand (docs/benchmarks.md); these tests only prove the
scripts still run against the current code, print ``NAME speedup: R.Rx`` last, write their
results file (date, machine, command line, figures), take ``--image-size`` as HEIGHTxWIDTH as
the pipeline does, and fail loudly (non-zero exit, a clear message, no figure, no results
file) instead of measuring a fallback.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

# each benchmark script runs as a process
integration = pytest.mark.integration

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# A hang guard, not a speed check: a smoke run takes ~45 s of CPU, and a shared 2-core
# machine under load stretches that to over 90 s of wall time.
SMOKE_TIMEOUT_S = 240


def run_benchmark(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), *args],
        capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S,
        env={**os.environ, "MASKPIPE_PROGRESS": "0", **(env or {})},
    )


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def assert_results_file(path: Path, script: str, stdout: str, *args: str) -> None:
    """The file the run wrote: its date, the machine, the command line and what it printed."""
    text = path.read_text()
    assert text.startswith(f"# {script}.py results\n"), text[:200]
    assert re.search(r"^\| date \| \d{4}-\d\d-\d\d \d\d:\d\d UTC \|$", text, re.M), text
    assert re.search(r"^\| CPU \| .+, \d+ cores available \(of \d+\) \|$", text, re.M), text
    assert re.search(r"^\| GPU \| (none|.+) \|$", text, re.M) and "| torch | " in text, text
    command = re.search(r"^\| command \| `python (.+)` \|$", text, re.M).group(1)
    assert command.startswith(f"benchmarks/{script}.py ") and all(a in command for a in args), command
    assert stdout.strip() in text and last_line(stdout) in text


def benchmark_module(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as when run as a script: its helpers
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", ["input", "train", "inference", "serve", "ddp"])
def test_image_size_is_height_by_width_as_the_pipelines_is(script, monkeypatch):
    bench = benchmark_module(script, monkeypatch)
    args = bench.parse_args(["--image-size", "128x96"])
    assert args.image_size == (96, 128)  # (width, height): a photo 128 high and 96 wide
    with pytest.raises(SystemExit):
        bench.parse_args(["--image-size", "96"])


@pytest.mark.parametrize("script", ["input", "train", "inference", "serve", "gpu", "ddp"])
def test_results_go_to_the_scripts_file_under_benchmarks_results_unless_told(script, monkeypatch, tmp_path):
    bench = benchmark_module(script, monkeypatch)
    assert bench.parse_args([]).results == BENCHMARKS / "results" / f"{script}.md"
    assert bench.parse_args(["--results", str(tmp_path / "x.md")]).results == tmp_path / "x.md"


def test_a_gpu_cpu_smoke_run_writes_no_results_file_unless_told(monkeypatch, tmp_path):
    bench = benchmark_module("gpu", monkeypatch)
    assert bench.parse_args(["--cpu-smoke"]).results is None
    assert bench.parse_args(["--cpu-smoke", "--results", str(tmp_path / "x.md")]).results == tmp_path / "x.md"


@integration
@pytest.mark.timeout(SMOKE_TIMEOUT_S)
def test_input_benchmark_prints_speedup_as_last_line_and_writes_its_results_file(tmp_path):
    results = tmp_path / "results" / "input.md"
    args = ("--quick", "--images", "8", "--batch-size", "4", "--image-size", "128x96")
    result = run_benchmark("input", *args, "--work-dir", str(tmp_path), "--results", str(results))
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"input speedup: \d+\.\dx", last_line(result.stdout)), result.stdout
    assert "images/s" in result.stdout and "cache fill" in result.stdout
    assert "8 synthetic 128x96 (HxW) JPEGs" in result.stdout
    photo = next((tmp_path / "photos" / "train" / "images").rglob("*.jpg"))
    assert Image.open(photo).size == (96, 128)  # PIL: (width, height)
    assert_results_file(results, "input", result.stdout, *args)


@integration
@pytest.mark.timeout(SMOKE_TIMEOUT_S)
def test_input_benchmark_fails_when_the_cache_would_fall_back(tmp_path):
    result = run_benchmark(
        "input", "--quick", "--images", "7", "--image-size", "32x32", "--cache-gb", "0.000001",
        "--work-dir", str(tmp_path), "--results", str(tmp_path / "input.md"),
    )
    assert result.returncode == 1
    assert "fell back to disk reads" in result.stderr
    assert "speedup" not in result.stdout
    assert not (tmp_path / "input.md").exists()


@integration
@pytest.mark.timeout(SMOKE_TIMEOUT_S)
def test_train_benchmark_prints_speedup_as_last_line_and_writes_its_results_file(tmp_path):
    # 21 photos of 128x96 (HxW): one batch a side; one epoch (one optimizer step) with the
    # preset's one-cycle schedule, which make_scheduler must turn into a schedule that can run.
    results = tmp_path / "train.md"
    args = ("--quick", "--images", "21", "--epochs", "1", "--image-size", "128x96")
    result = run_benchmark("train", *args, "--work-dir", str(tmp_path), "--results", str(results))
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"train speedup: \d+\.\dx", last_line(result.stdout)), result.stdout
    assert result.stdout.count("s/epoch") == 2
    assert_results_file(results, "train", result.stdout, *args)


@integration
@pytest.mark.timeout(SMOKE_TIMEOUT_S)
def test_gpu_benchmark_without_cuda_exits_1_with_a_message(tmp_path):
    result = run_benchmark("gpu", "--quick", "--work-dir", str(tmp_path), "--results", str(tmp_path / "gpu.md"),
                           env={"CUDA_VISIBLE_DEVICES": ""})  # fmt: skip
    assert result.returncode == 1
    assert "no CUDA device is visible" in result.stderr
    assert "speedup" not in result.stdout
    assert not (tmp_path / "gpu.md").exists()


@integration
@pytest.mark.timeout(SMOKE_TIMEOUT_S)
def test_gpu_benchmark_cpu_smoke_runs_every_measurement_and_prints_no_speedup(tmp_path):
    # The GPU is lent rarely and briefly: the script must be known to run before it gets one.
    result = run_benchmark("gpu", "--cpu-smoke", "--work-dir", str(tmp_path), env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert out.startswith("CPU SMOKE RUN")
    for measured in ("fp32", "bf16+cl", "inference bf16", "batch-size sweep", "real epoch"):
        assert measured in out, measured
    assert "speedup" not in out
    assert last_line(out).startswith("gpu smoke run: ")
    assert "results written" not in result.stderr  # no figures, so no results file by default


def test_gpu_machine_wheels_match_the_versions_this_project_installs():
    # The lent GPU machine gets these as carried wheels; other versions than the ones tested
    # here would make its figures measure different code.
    from importlib.metadata import version

    pins = [
        line.split("==")
        for line in (BENCHMARKS / "device" / "wheels.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert pins and all(len(pin) == 2 for pin in pins)
    assert {name: version(name) for name, _ in pins} == dict(pins)


@pytest.mark.parametrize("script", ["fetch_wheels.sh", "run_gpu_benchmarks.sh"])
def test_gpu_machine_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(BENCHMARKS / "device" / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr



SERVE_SMOKE_TIMEOUT_S = 180  # an export and a server start on top of the smoke run


@integration
@pytest.mark.timeout(SERVE_SMOKE_TIMEOUT_S)
@pytest.mark.parametrize("precision", [[], ["--quantize", "int8"]], ids=["fp32", "int8"])
def test_serve_benchmark_drives_each_client_count_and_prints_the_scaling_last(tmp_path, precision):
    from fixtures.serving import serve_python

    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "serve.py"), "--quick", "--images", "4", "--requests", "8",
         "--clients", "1,4", "--image-size", "128x96", "--input-size", "32x24", *precision,
         "--serve-python", serve_python(), "--work-dir", str(tmp_path), "--results", str(tmp_path / "serve.md")],
        capture_output=True, text=True, timeout=SERVE_SMOKE_TIMEOUT_S,
        env={**os.environ, "MASKPIPE_PROGRESS": "0"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert re.fullmatch(r"serve speedup: \d+\.\dx", last_line(out)), out
    assert re.search(r"  1 client\(s\): +[\d.]+ images/s, p50 +[\d.]+ ms, p99", out)
    assert re.search(r"  4 client\(s\):", out) and "served at 4 clients / offline:" in out
    assert ("ONNX Runtime int8; offline" in out) == bool(precision), out
    assert re.search(r"hostile mix: \d+ good requests all answered 200 .* none lost", out), out
    assert_results_file(tmp_path / "serve.md", "serve", out, "--clients", *precision)


@integration
def test_serve_benchmark_without_a_serving_environment_exits_1_with_a_message(tmp_path):
    result = run_benchmark("serve", "--quick", "--serve-python", str(tmp_path / "no-python"), "--work-dir", str(tmp_path),
                           "--results", str(tmp_path / "serve.md"))  # fmt: skip
    assert result.returncode == 1
    assert not (tmp_path / "serve.md").exists()
    assert "no serving environment" in result.stderr and "make venv" in result.stderr
    assert "speedup" not in result.stdout
