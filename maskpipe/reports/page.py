"""The parts every step report is built from: a self-contained HTML page, matplotlib charts
embedded as SVG data, down-scaled thumbnails embedded as JPEG data, tables and galleries.

Self-contained means the page loads nothing: no URL, script or web font (clusters are often
air-gapped and the Kubeflow UI shows HTML in a sandboxed frame). Sizes are bounded by
construction: a fixed number of charts, galleries of at most a few dozen small thumbnails and
tables cut at :data:`MAX_TABLE_ROWS`, so a report stays far under :data:`MAX_REPORT_BYTES`
whatever the data size.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from maskpipe.atomic import write_text

log = logging.getLogger(__name__)

MAX_REPORT_BYTES = 2 * 1024 * 1024
MAX_TABLE_ROWS = 1000
THUMBNAIL_SIZE = (96, 128)  # width, height: the photos are portrait 384x512
THUMBNAIL_QUALITY = 80

_CSS = """
body{font-family:sans-serif;margin:24px;color:#222;background:#fff;max-width:1200px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:16px 0 6px}.meta{color:#666;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right}
.facts td:first-child{color:#555}
.charts{display:flex;flex-wrap:wrap;gap:12px}.charts img{max-width:100%;height:auto}
.gallery{display:flex;flex-wrap:wrap;gap:8px}
.card{width:112px;font-size:11px;line-height:1.3;overflow-wrap:anywhere;border:1px solid #ddd;padding:4px;border-radius:3px}
.card img{display:block;margin:0 auto 3px}.card.wrong{border-color:#d33;background:#fff3f3}
.card.right{border-color:#3a3}.note{color:#666;font-size:13px}
.bad{color:#b00}.steps{list-style:none;padding:0}.steps li{margin-bottom:14px}
"""


@dataclass
class Page:
    """An HTML page built section by section; ``render()`` returns the whole document."""

    title: str
    subtitle: str = ""
    parts: list[str] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{esc(text)}</h{level}>")

    def paragraph(self, text: str, css_class: str = "note") -> None:
        self.parts.append(f'<p class="{css_class}">{esc(text)}</p>')

    def facts(self, rows: Iterable[tuple[str, Any]]) -> None:
        """A two-column table of named values."""
        body = "".join(f"<tr><td>{esc(k)}</td><td>{esc(_fmt(v))}</td></tr>" for k, v in rows)
        self.parts.append(f'<table class="facts">{body}</table>')

    def charts(self, *figures: str) -> None:
        """A row of charts (``<img>`` tags from :func:`figure_img`)."""
        self.parts.append(f'<div class="charts">{"".join(figures)}</div>')

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]], *, more_in: str = "") -> None:
        """A table of at most :data:`MAX_TABLE_ROWS` rows; a last line says how many were left
        out (and where to find them, ``more_in``)."""
        head = "".join(f"<th>{esc(h)}</th>" for h in headers)
        body = "".join(
            "<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows[:MAX_TABLE_ROWS]
        )
        self.parts.append(f"<table><tr>{head}</tr>{body}</table>")
        if len(rows) > MAX_TABLE_ROWS:
            where = f"; all of them are in {more_in}" if more_in else ""
            self.paragraph(f"... and {len(rows) - MAX_TABLE_ROWS} more rows{where}")

    def html(self, fragment: str) -> None:
        """Append markup as it is (built from escaped parts by the caller)."""
        self.parts.append(fragment)

    def gallery(self, cards: Sequence[str]) -> None:
        self.parts.append(f'<div class="gallery">{"".join(cards)}</div>')

    def render(self) -> str:
        made = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        subtitle = f'<div class="meta">{esc(self.subtitle)} · written {made}</div>'
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{esc(self.title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{esc(self.title)}</h1>{subtitle}{''.join(self.parts)}</body></html>\n"
        )


def write_page(page: Page, out_path: str | os.PathLike[str]) -> Path:
    """Render ``page`` and write it atomically; warns when it is over the size cap."""
    text = page.render()
    size = len(text.encode("utf-8"))
    if size > MAX_REPORT_BYTES:  # bounded by construction; this names a regression
        log.warning("report %s is %.1f MiB, over the %.0f MiB cap", out_path, size / 2**20, MAX_REPORT_BYTES / 2**20)
    write_text(out_path, text)
    return Path(out_path)


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def _cell(value: Any) -> str:
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return f'<td class="num">{esc(_fmt(value))}</td>'
    return f"<td>{esc(_fmt(value))}</td>"


# ---------------------------------------------------------------------------------------------
# charts


def new_figure(width: float, height: float):
    """A matplotlib Figure on the Agg/SVG canvases (no pyplot, no global state, no display)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def figure_img(fig, alt: str) -> str:
    """``fig`` as an ``<img>`` holding its SVG as data (text kept as text: small and sharp)."""
    import matplotlib

    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "font.family": "sans-serif"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    width, height = (int(round(v * 96)) for v in fig.get_size_inches())
    return (
        f'<img class="chart" alt="{esc(alt)}" width="{width}" height="{height}" '
        f'src="data:image/svg+xml;base64,{data}">'
    )


def bar_chart(
    names: Sequence[str],
    series: dict[str, Sequence[float]],
    *,
    title: str,
    ylabel: str = "",
    horizontal: bool = False,
    width: float = 6.0,
    height: float = 3.2,
    stacked: bool = True,
    value_format: str = "{:.0f}",
    value_max: float | None = None,
) -> str:
    """Bars per name, one colour per series (stacked or side by side), totals written on them;
    ``value_max`` fixes the value axis (e.g. 1 for scores)."""
    fig = new_figure(width, height)
    ax = fig.add_subplot()
    positions = np.arange(len(names))
    bottom = np.zeros(len(names))
    step = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        values = np.asarray(values, dtype=float)
        offset = 0.0 if stacked else (i - (len(series) - 1) / 2) * step
        size = 0.8 if stacked else step
        draw = ax.barh if horizontal else ax.bar
        kwargs = {"left" if horizontal else "bottom": bottom if stacked else 0}
        draw(positions + offset, values, size, label=label, **kwargs)
        if stacked:
            bottom = bottom + values
        else:
            _label_bars(ax, positions + offset, values, horizontal, value_format)
    if stacked:
        _label_bars(ax, positions, bottom, horizontal, value_format)
    (ax.set_yticks if horizontal else ax.set_xticks)(positions, names, fontsize=8)
    if horizontal:
        ax.invert_yaxis()
        ax.set_xlabel(ylabel)
    else:
        ax.set_ylabel(ylabel)
        if max((len(n) for n in names), default=0) > 6:
            ax.tick_params(axis="x", labelrotation=45)
            for tick in ax.get_xticklabels():
                tick.set_horizontalalignment("right")
    ax.set_title(title, fontsize=11)
    ax.margins(**({"x": 0.12} if horizontal else {"y": 0.12}))
    if value_max is not None:
        (ax.set_xlim if horizontal else ax.set_ylim)(0, value_max)
    if len(series) > 1:
        ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return figure_img(fig, title)


def _label_bars(ax, positions, values, horizontal: bool, value_format: str) -> None:
    for position, value in zip(positions, values):
        text = value_format.format(value)
        if horizontal:
            ax.annotate(text, (value, position), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
        else:
            ax.annotate(text, (position, value), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=7)


def line_chart(
    x: Sequence[float],
    series: dict[str, Sequence[float | None]],
    *,
    title: str,
    xlabel: str,
    ylabel: str = "",
    width: float = 3.9,
    height: float = 2.8,
    markers: bool = True,
    log_y: bool = False,
) -> str:
    """One line per series over ``x``; ``None`` values (a missing validation) are skipped."""
    fig = new_figure(width, height)
    ax = fig.add_subplot()
    for label, values in series.items():
        points = [(a, b) for a, b in zip(x, values) if b is not None]
        if not points:
            continue
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o" if markers else None, markersize=3, linewidth=1.5, label=label)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return figure_img(fig, title)


def heatmap(matrix: Sequence[Sequence[int]], names: Sequence[str], *, title: str) -> str:
    """A confusion matrix: colour by the share of each true class (row), counts written in."""
    counts = np.asarray(matrix, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    n = len(names)
    side = 3.2 if n <= 3 else 8.5
    fig = new_figure(side + 1.2, side)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    fontsize = 9 if n <= 3 else 6.5
    for (i, j), value in np.ndenumerate(counts):
        if value:
            colour = "white" if share[i, j] > 0.6 else "black"
            ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=fontsize, color=colour)
    ax.set_xticks(range(n), names, rotation=90 if n > 3 else 0, fontsize=fontsize + 1)
    ax.set_yticks(range(n), names, fontsize=fontsize + 1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=11)
    return figure_img(fig, title)


# ---------------------------------------------------------------------------------------------
# thumbnails


def thumbnail_src(path: str | os.PathLike[str], size: tuple[int, int] = THUMBNAIL_SIZE) -> str:
    """A ``data:`` URI of the image down-scaled to fit ``size``, as JPEG."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
        image.thumbnail(size)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def card(path: str | os.PathLike[str], lines: Sequence[str], *, status: str = "") -> str:
    """A gallery card: the thumbnail and caption lines; ``status`` ``right``/``wrong`` colours
    its border. An unreadable image becomes a card that says so (a report never fails on one)."""
    try:
        image = f'<img alt="{esc(Path(path).name)}" src="{thumbnail_src(path)}">'
    except Exception as exc:  # noqa: BLE001 - PIL raises many types; the card names the file
        image = f'<div class="bad">unreadable image ({esc(type(exc).__name__)})</div>'
    caption = "<br>".join(esc(line) for line in lines)
    return f'<div class="card {esc(status)}">{image}{caption}</div>'


def class_axis() -> list[str]:
    """Axis labels of the 18 classes: ``" 4 wear/female/30-59"``."""
    from maskpipe.labels import CLASS_NAMES

    return [f"{c:>2} {name}" for c, name in enumerate(CLASS_NAMES)]


def spread_sample(count: int, limit: int, seed: int = 0) -> np.ndarray:
    """``limit`` positions out of ``range(count)``, drawn at random but the same every run."""
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=limit, replace=False))
