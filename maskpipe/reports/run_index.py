"""One ``report.html`` for a whole run: links to the step reports, openable in a browser.

Each link comes with the step report's key facts (its first table), so the page answers
"how did the run go" at a glance.

The step reports are copied beside it (``reports/<step>.html``) and linked relatively: a
browser shows a file as HTML only by its extension, and kfp.local names an HTML artifact
without one (``.../index-data/html_report``); the copies also keep the run's reports together
when the folder is moved or zipped.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from maskpipe.atomic import atomic_path
from maskpipe.reports.page import Page, esc, write_page

REPORTS_FOLDER = "reports"


def write_run_index(
    step_reports: dict[str, str | os.PathLike[str]],
    out_path: str | os.PathLike[str],
    *,
    title: str = "Pipeline run",
) -> Path:
    """Write ``out_path`` (e.g. ``<output dir>/report.html``) linking each step's report.

    Args:
        step_reports: step name (``index-data``, ``train-mask``, ...) -> its HTML report, in
            the order to list them. A report that does not exist (a failed or skipped step)
            is listed as missing rather than linked.
        out_path: the index page to write; the reports are copied to
            ``<its folder>/reports/<step>.html``.
        title: the page heading.

    Returns:
        ``out_path``.
    """
    out_path = Path(out_path)
    folder = out_path.parent / REPORTS_FOLDER
    rows = []
    for step, source in step_reports.items():
        source = Path(source)
        if not source.is_file():
            rows.append(f"<li>{esc(step)}: <span class=\"bad\">no report ({esc(source)} is missing)</span></li>")
            continue
        copy = folder / f"{_file_name(step)}.html"
        with atomic_path(copy) as tmp:
            shutil.copyfile(source, tmp)
        link = copy.relative_to(out_path.parent).as_posix()
        size = source.stat().st_size / 1024
        facts = _FACTS.search(source.read_text(encoding="utf-8", errors="replace"))
        rows.append(
            f'<li><h3><a href="{esc(link)}">{esc(step)}</a> <span class="meta">({size:.0f} KB)</span></h3>'
            f"{facts.group(0) if facts else ''}</li>"
        )
    page = Page(title, f"{len(step_reports)} step reports")
    page.html(f'<ul class="steps">{"".join(rows)}</ul>')
    return write_page(page, out_path)


# The key-facts table every step report starts with (written by Page.facts, escaped there).
_FACTS = re.compile(r'<table class="facts">.*?</table>', re.S)


def _file_name(step: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", step).strip("-.") or "step"
