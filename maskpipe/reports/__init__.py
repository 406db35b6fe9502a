"""Self-contained HTML reports of the pipeline steps, one module per report.

``write_index_report``, ``write_train_report`` and ``write_infer_report`` are called by the
``maskpipe index|train|infer`` commands and by the pipeline components alike (one code path);
``write_run_index`` writes one page linking the step reports of a run. The pages embed their
charts (matplotlib, SVG) and thumbnails and load nothing: see :mod:`maskpipe.reports.page`.
"""

from maskpipe.reports.index_report import write_index_report
from maskpipe.reports.infer_report import PredictionSet, write_infer_report
from maskpipe.reports.run_index import write_run_index
from maskpipe.reports.train_report import write_train_report

__all__ = ["PredictionSet", "write_index_report", "write_infer_report", "write_run_index", "write_train_report"]
