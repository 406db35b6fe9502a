"""The work of each pipeline step as a plain function: the component in ``components/`` is an
adapter that turns artifacts into paths, calls one of these and copies the returned metadata and
metrics onto its output artifacts.

    index_step   (components/index_data.py)     the index, its Markdown and HTML reports
    train_step   (components/train_model.py)    one task model, its metrics and HTML report
    export_step  (components/export_model.py)   the ONNX model folder
    infer_step   (components/ensemble_infer.py) submission, validation scores, both reports
    deploy_step  (components/deploy_model.py)   the InferenceService

Each is imported from its own module (``maskpipe.steps.index`` ...), so a component loads only
what its step needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple


@dataclass
class StepOutputs:
    """What a step tells its component to record: the main artifact's metadata, scalar metrics
    (``Metrics.log_metric``) and a confusion matrix (``ClassificationMetrics``: names, rows)."""

    metadata: Dict[str, Any] = field(default_factory=dict)
    metrics: Dict[str, float] = field(default_factory=dict)
    confusion: Optional[Tuple[List[str], List[List[int]]]] = None

    def log_to(self, metrics, confusion_matrix) -> None:
        """Log ``metrics`` and ``confusion`` on KFP's ``Metrics`` and ``ClassificationMetrics``
        outputs (duck-typed: this package does not import kfp)."""
        for name, value in self.metrics.items():
            metrics.log_metric(name, value)
        if self.confusion is not None:
            confusion_matrix.log_confusion_matrix(*self.confusion)
