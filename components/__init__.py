"""Kubeflow pipeline steps: one module per step, each a thin wrapper over one maskpipe function.

Every component is a lightweight Python component (``@dsl.component``) whose body imports
``maskpipe`` lazily, so the same code runs in the cluster image and under
``kfp.local.SubprocessRunner(use_venv=False)``.
"""

from components.deploy_model import deploy_model
from components.ensemble_infer import ensemble_infer
from components.export_model import export_model
from components.image import IMAGE, SERVE_IMAGE
from components.index_data import index_data
from components.train_model import train_model
from components.train_trainjob import train_trainjob

__all__ = ["IMAGE", "SERVE_IMAGE", "deploy_model", "ensemble_infer", "export_model", "index_data", "train_model",
           "train_trainjob"]
