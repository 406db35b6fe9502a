"""The maskpipe Kubeflow pipeline: ``python pipeline.py compile|run-local|submit|upload``.

    python pipeline.py compile [-o pipeline.yaml]          compile for a cluster
    python pipeline.py run-local --data DIR [--preset smoke]  run every step here (kfp.local)
    python pipeline.py submit --host URL [...]              start a run on a cluster
    python pipeline.py upload --host URL [...]              register the pipeline or a new version

The DAG and its compile-time options are in ``pipeline_dag.py`` (re-exported here, so
``import pipeline; pipeline.make_pipeline(...)`` works); the command line is ``pipeline_cli/``,
which imports ``pipeline_dag`` and never this file, so running it loads each module once.
"""

import sys

from pipeline_cli import main
from pipeline_dag import (
    DEFAULT_MINIO_ENDPOINT,
    DEFAULT_SECRET,
    LEGACY_MINIO_ENDPOINT,
    LOCAL_OPTIONS,
    PIPELINE_NAME,
    STEPS,
    TASKS,
    PipelineOptions,
    Resources,
    compile_pipeline,
    make_pipeline,
)

__all__ = [
    "DEFAULT_MINIO_ENDPOINT", "DEFAULT_SECRET", "LEGACY_MINIO_ENDPOINT", "LOCAL_OPTIONS", "PIPELINE_NAME",
    "STEPS", "TASKS", "PipelineOptions", "Resources", "compile_pipeline", "make_pipeline", "main",
]  # fmt: skip

if __name__ == "__main__":
    sys.exit(main())
