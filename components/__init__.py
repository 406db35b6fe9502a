"""Kubeflow pipeline steps: one module per step, each a thin wrapper over one maskpipe function.

Every component is a lightweight Python component (``@dsl.component``) whose body imports
``maskpipe`` lazily, so the same code runs in the cluster image and under
``kfp.local.SubprocessRunner(use_venv=False)``.
"""

from components.ensemble_infer import ensemble_infer
from components.image import IMAGE
from components.index_data import index_data
from components.train_model import train_model

__all__ = ["IMAGE", "ensemble_infer", "index_data", "train_model"]
