"""The command line of ``pipeline.py``: compile, run-local, submit and upload.

``pipeline_dag.py`` holds the DAG; this package turns command-line flags into its options and run
parameters (``arguments``), runs it here through kfp.local (``local_run``) or sends it to a
cluster (``cluster``). ``commands.main`` is what ``python pipeline.py ...`` calls.
"""

from pipeline_cli.commands import main

__all__ = ["main"]
