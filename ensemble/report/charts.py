"""The charts of ``report.html``, as inline SVG strings (no plotting library, no network).

Each function takes plain numbers from ``metrics.json`` and returns one ``<svg>`` element that
scales with the page. Colours are the Okabe–Ito palette (readable with colour blindness);
every mark carries a ``<title>`` with its exact value, shown as a tooltip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ensemble.core.html_page import escape

#: Okabe–Ito colours: members, combiners, then further series.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#E69F00", "#CC79A7", "#56B4E9", "#000000")
MEMBER_COLOUR, COMBINER_COLOUR = PALETTE[0], PALETTE[1]
#: Marker and colour of each copy of the images in :func:`copies_plot`.
COPY_STYLES = {
    "clean": ("circle", PALETTE[0]),
    "shifted": ("triangle", PALETTE[1]),
    "zoomed": ("square", PALETTE[2]),
    "medmnistc": ("diamond", PALETTE[3]),
}


class Frame:
    """Maps data coordinates to SVG pixels inside margins (``y`` grows upwards)."""

    def __init__(self, width, height, x_range, y_range, margin=(10, 10, 30, 40)):
        self.width, self.height = width, height
        self.top, self.right, self.bottom, self.left = margin
        self.x_range, self.y_range = x_range, y_range

    def x(self, value: float) -> float:
        """Pixel column of ``value``."""
        low, high = self.x_range
        span = self.width - self.left - self.right
        return round(self.left + (value - low) / ((high - low) or 1) * span, 1)

    def y(self, value: float) -> float:
        """Pixel row of ``value``."""
        low, high = self.y_range
        span = self.height - self.top - self.bottom
        return round(self.height - self.bottom - (value - low) / ((high - low) or 1) * span, 1)

    def x_axis(self, ticks: Sequence[float], fmt: str = "{:.2f}", label: str = "") -> str:
        """The bottom axis with vertical grid lines at ``ticks`` and an optional label."""
        base = self.height - self.bottom
        parts = [_line(self.left, base, self.width - self.right, base, "#888")]
        for tick in ticks:
            x = self.x(tick)
            parts.append(_line(x, self.top, x, base, "#e3e6eb"))
            parts.append(_text(x, base + 13, fmt.format(tick), anchor="middle", size=10))
        if label:
            parts.append(
                _text(
                    (self.left + self.width - self.right) / 2,
                    base + 26,
                    label,
                    anchor="middle",
                    size=11,
                )
            )
        return "".join(parts)

    def y_axis(self, ticks: Sequence[float], fmt: str = "{:.2f}", label: str = "") -> str:
        """The left axis with horizontal grid lines at ``ticks`` and an optional label."""
        parts = [_line(self.left, self.top, self.left, self.height - self.bottom, "#888")]
        for tick in ticks:
            y = self.y(tick)
            parts.append(_line(self.left, y, self.width - self.right, y, "#e3e6eb"))
            parts.append(_text(self.left - 4, y + 3, fmt.format(tick), anchor="end", size=10))
        if label:
            middle = (self.top + self.height - self.bottom) / 2
            parts.append(
                f'<text x="11" y="{middle}" font-size="11" text-anchor="middle" '
                f'transform="rotate(-90 11 {middle})">{escape(label)}</text>'
            )
        return "".join(parts)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering ``[low, high]``."""
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks, value = [], first
    while value <= high + 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def accuracy_range(values: Sequence[float], floor: float = 0.0) -> tuple[float, float]:
    """An x range for accuracies: from a little under the smallest value up to 1."""
    low = min(values, default=0.0)
    low = max(floor, math.floor((low - 0.02) * 20) / 20)
    return (min(low, 0.95), 1.0)


def forest_plot(rows: Sequence[dict], title: str = "") -> str:
    """Accuracy with its interval per model, one row each (a forest plot).

    Args:
        rows: ``{"name", "value", "low", "high", "combiner": bool, "best": bool}`` in
            display order.
        title: the chart's accessible name.
    """
    height = 34 + 22 * len(rows) + 30
    label_width = 16 + 8 * max((len(r["name"]) for r in rows), default=4)  # bold: ~8 px a letter
    frame = Frame(
        720,
        height,
        accuracy_range([r["low"] for r in rows]),
        (0, len(rows)),
        margin=(24, 70, 30, label_width),
    )
    parts = [frame.x_axis(nice_ticks(*frame.x_range, 6), label="accuracy (95 % interval)")]
    for position, row in enumerate(rows):
        y = frame.top + 22 * position + 12
        colour = COMBINER_COLOUR if row["combiner"] else MEMBER_COLOUR
        weight = "bold" if row["best"] else "normal"
        tip = f"{row['name']}: {row['value']:.4f} ({row['low']:.4f}–{row['high']:.4f})"
        parts.append(
            _text(frame.left - 8, y + 4, row["name"], anchor="end", size=12, weight=weight)
        )
        parts.append(
            f"<g><title>{escape(tip)}</title>"
            + _line(frame.x(row["low"]), y, frame.x(row["high"]), y, colour, width=2)
            + _line(frame.x(row["low"]), y - 5, frame.x(row["low"]), y + 5, colour)
            + _line(frame.x(row["high"]), y - 5, frame.x(row["high"]), y + 5, colour)
            + f'<circle cx="{frame.x(row["value"])}" cy="{y}" r="4.5" fill="{colour}"/></g>'
        )
        parts.append(
            _text(
                frame.width - frame.right + 6, y + 4, f"{row['value']:.4f}", size=11, weight=weight
            )
        )
    parts.append(
        _legend(
            frame.left,
            12,
            [("member", MEMBER_COLOUR, "circle"), ("combiner", COMBINER_COLOUR, "circle")],
        )
    )
    return _svg(frame, "".join(parts), title or "accuracy with 95 % intervals")


def copies_plot(rows: Sequence[dict], copies: Sequence[str], title: str = "") -> str:
    """Accuracy of each model on each copy of the images (clean, shifted, zoomed), one row each.

    Args:
        rows: ``{"name", "best": bool, <copy>: accuracy}`` in display order.
        copies: which copies to draw, e.g. ``("clean", "shifted", "zoomed")``.
        title: the chart's accessible name.
    """
    height = 34 + 22 * len(rows) + 30
    label_width = 16 + 8 * max((len(r["name"]) for r in rows), default=4)  # bold: ~8 px a letter
    values = [r[c] for r in rows for c in copies if r.get(c) is not None]
    frame = Frame(
        720, height, accuracy_range(values), (0, len(rows)), margin=(24, 20, 30, label_width)
    )
    parts = [frame.x_axis(nice_ticks(*frame.x_range, 6), label="accuracy")]
    for position, row in enumerate(rows):
        y = frame.top + 22 * position + 12
        present = [(c, row[c]) for c in copies if row.get(c) is not None]
        parts.append(
            _text(
                frame.left - 8,
                y + 4,
                row["name"],
                anchor="end",
                size=12,
                weight="bold" if row["best"] else "normal",
            )
        )
        if present:
            xs = [frame.x(v) for _, v in present]
            parts.append(_line(min(xs), y, max(xs), y, "#bbb", width=2))
        for copy, value in present:
            shape, colour = COPY_STYLES.get(copy, ("circle", PALETTE[3]))
            tip = f"{row['name']}, {copy}: {value:.4f}"
            parts.append(
                f"<g><title>{escape(tip)}</title>{_marker(shape, frame.x(value), y, colour)}</g>"
            )
    legend = [
        (c, COPY_STYLES.get(c, ("circle", PALETTE[3]))[1], COPY_STYLES.get(c, ("circle", ""))[0])
        for c in copies
    ]
    parts.append(_legend(frame.left, 12, legend))
    return _svg(frame, "".join(parts), title or "accuracy on each copy of the images")


def training_curves(name: str, history: Sequence[dict], before: Sequence[dict] = ()) -> str:
    """One member's accuracy per epoch: training (dashed) and validation (solid).

    Args:
        name: the member (the chart's title).
        history: its ``history.json`` rows (``epoch``, ``accuracy``, ``val_accuracy``, ``phase``).
        before: the history of the member it started from (``init_from``), drawn first in grey.

    Over 60 lines: one SVG chart, axis by axis.
    """
    rows = [*before, *history]
    epochs = list(range(1, len(rows) + 1))
    values = [
        v
        for r in rows
        for v in (r.get("accuracy"), r.get("val_accuracy"))
        if isinstance(v, (int, float)) and math.isfinite(v)
    ]
    low = min(0.5, math.floor(min(values, default=0.0) * 10) / 10)
    frame = Frame(330, 200, (0.5, max(len(rows), 1) + 0.5), (low, 1.0), margin=(26, 10, 32, 40))
    parts = [
        frame.x_axis(
            [e for e in nice_ticks(1, max(len(rows), 1), 5) if e == int(e)], "{:.0f}", "epoch"
        ),
        frame.y_axis(nice_ticks(low, 1.0, 4)),
        _text(frame.left, 14, name, size=12, weight="bold"),
    ]
    if before:
        x = frame.x(len(before) + 0.5)
        parts.append(_line(x, frame.top, x, frame.height - frame.bottom, "#999", dash="3 3"))
        parts.append(_text(x + 3, frame.top + 9, "this stage", size=9, fill="#666"))
    else:
        phases = [r.get("phase") for r in rows]
        for index in range(1, len(phases)):
            if phases[index] != phases[index - 1]:
                x = frame.x(index + 0.5)
                parts.append(
                    _line(x, frame.top, x, frame.height - frame.bottom, "#999", dash="3 3")
                )
                parts.append(_text(x + 3, frame.top + 9, str(phases[index]), size=9, fill="#666"))
    for key, colour, dash, label in (
        ("accuracy", PALETTE[0], "4 3", "train"),
        ("val_accuracy", PALETTE[1], "", "validation"),
    ):
        points = [
            (frame.x(e), frame.y(r[key]))
            for e, r in zip(epochs, rows, strict=True)
            if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
        ]
        if points:
            parts.append(_polyline(points, colour, dash=dash))
            tip = f"{label} accuracy, last epoch: {rows[-1].get(key, float('nan')):.4f}"
            parts.append(
                f"<g><title>{escape(tip)}</title>"
                f'<circle cx="{points[-1][0]}" cy="{points[-1][1]}" r="2.5" '
                f'fill="{colour}"/></g>'
            )
    parts.append(
        _legend(
            frame.width - 150,
            14,
            [("train", PALETTE[0], "dash"), ("validation", PALETTE[1], "line")],
        )
    )
    return _svg(frame, "".join(parts), f"training curves of {name}")


def reliability_plot(name: str, curve: Sequence[dict], ece: float, bins: int = 15) -> str:
    """A reliability diagram that can be read: accuracy per confidence bin, sized by its count.

    Bins holding few images are drawn small and pale (their accuracy is noise); a bar per bin
    under the diagram shows how many images it holds, and each point's tooltip gives the count.
    """
    frame = Frame(260, 270, (0, 1), (0, 1), margin=(26, 10, 78, 38))
    total = sum(p["count"] for p in curve) or 1
    parts = [
        frame.x_axis([0, 0.5, 1], "{:.1f}", "confidence"),
        frame.y_axis([0, 0.25, 0.5, 0.75, 1], "{:.2f}"),
        _text(frame.left, 14, f"{name}  ·  ECE {ece:.3f}", size=12, weight="bold"),
        _line(frame.x(0), frame.y(0), frame.x(1), frame.y(1), "#999", dash="4 3"),
    ]
    ordered = sorted(curve, key=lambda p: p["confidence"])
    big = [(frame.x(p["confidence"]), frame.y(p["accuracy"])) for p in ordered if p["count"] >= 10]
    if len(big) > 1:
        parts.append(_polyline(big, PALETTE[0]))
    strip_top, strip_height = frame.height - 42, 24
    largest = max((p["count"] for p in curve), default=1)
    width = (frame.x(1) - frame.x(0)) / bins
    for point in ordered:
        few = point["count"] < 10
        radius = 2 + 5 * math.sqrt(point["count"] / total)
        tip = (
            f"confidence {point['confidence']:.3f}, accuracy {point['accuracy']:.3f}, "
            f"{point['count']} images"
        )
        parts.append(
            f'<g><title>{escape(tip)}</title><circle cx="{frame.x(point["confidence"])}" '
            f'cy="{frame.y(point["accuracy"])}" r="{radius:.1f}" fill="{PALETTE[0]}" '
            f'fill-opacity="{0.25 if few else 0.9}"/></g>'
        )
        share = math.log1p(point["count"]) / math.log1p(largest)
        bar = max(1.0, strip_height * share)
        slot = min(bins - 1, int(point["confidence"] * bins))
        x = frame.x(0) + slot * width
        parts.append(
            f'<g><title>{escape(tip)}</title><rect x="{x + 1:.1f}" '
            f'y="{strip_top + strip_height - bar:.1f}" '
            f'width="{width - 2:.1f}" height="{bar:.1f}" fill="#8a96a8"/></g>'
        )
    parts.append(
        _text(
            frame.left,
            strip_top + strip_height + 12,
            "images per bin (log scale); pale points: under 10 images",
            size=9,
            fill="#666",
        )
    )
    return _svg(frame, "".join(parts), f"reliability of {name}")


def coverage_plot(series: Sequence[dict]) -> str:
    """Accuracy on the images kept when the least agreed-on are referred, per coverage.

    Args:
        series: ``{"name", "points": [{"coverage", "accuracy"}], "combiner": bool}``.
    """
    values = [p["accuracy"] for s in series for p in s["points"]]
    low = min(values, default=0.0)
    low = max(0.0, math.floor((low - 0.01) * 50) / 50)
    frame = Frame(420, 260, (1.0, 0.5), (low, 1.0), margin=(26, 12, 34, 44))
    parts = [
        frame.x_axis([1.0, 0.9, 0.8, 0.7, 0.6, 0.5], "{:.1f}", "coverage (share not referred)"),
        frame.y_axis(nice_ticks(low, 1.0, 4), "{:.2f}"),
    ]
    legend = []
    for index, line in enumerate(series):
        colour = PALETTE[index % len(PALETTE)]
        points = [(frame.x(p["coverage"]), frame.y(p["accuracy"])) for p in line["points"]]
        parts.append(_polyline(points, colour))
        for p, (x, y) in zip(line["points"], points, strict=True):
            tip = f"{line['name']}: coverage {p['coverage']:.2f}, accuracy {p['accuracy']:.4f}"
            parts.append(
                f'<g><title>{escape(tip)}</title><circle cx="{x}" cy="{y}" r="2.5" '
                f'fill="{colour}"/></g>'
            )
        legend.append((line["name"], colour, "line"))
    parts.append(_legend(frame.left, 12, legend))
    return _svg(frame, "".join(parts), "accuracy when low-agreement images are referred")


def referral_curve_plot(
    curves: dict[str, Sequence[dict]], chosen: dict | None, title: str = ""
) -> str:
    """Accuracy on accepted images against the share referred, one line per model.

    Args:
        curves: model name → ``[{"referred", "accuracy"}]`` (the least confident referred).
        chosen: ``{"name", "referred", "accuracy", "label"}``: the selective rule's point,
            marked; or ``None``.
        title: what the images are (clean, shifted, zoomed).
    """
    values = [p["accuracy"] for points in curves.values() for p in points]
    if chosen and chosen.get("accuracy") is not None:
        values.append(chosen["accuracy"])
    low = max(0.0, math.floor((min(values, default=0.9) - 0.005) * 100) / 100)
    frame = Frame(420, 260, (0.0, 0.5), (low, 1.0), margin=(26, 12, 34, 48))
    parts = [
        frame.x_axis([0.0, 0.1, 0.2, 0.3, 0.4, 0.5], "{:.0%}", "share of images referred"),
        frame.y_axis(nice_ticks(low, 1.0, 4), "{:.3f}"),
    ]
    legend = []
    for index, (name, points) in enumerate(curves.items()):
        colour = PALETTE[index % len(PALETTE)]
        xy = [(frame.x(p["referred"]), frame.y(p["accuracy"])) for p in points]
        parts.append(_polyline(xy, colour))
        legend.append((name, colour, "line"))
    if chosen and chosen.get("accuracy") is not None:
        x, y = frame.x(min(chosen["referred"], 0.5)), frame.y(chosen["accuracy"])
        tip = (
            f"{chosen['label']}: {chosen['referred']:.1%} referred, accuracy on accepted "
            f"{chosen['accuracy']:.4f}"
        )
        parts.append(f"<g><title>{escape(tip)}</title>{_marker('diamond', x, y, '#000', 6)}</g>")
        legend.append((chosen["label"], "#000", "diamond"))
    parts.append(_legend(frame.left, 12, legend[:8]))
    return _svg(frame, "".join(parts), f"accuracy on accepted images, {title}")


# SVG pieces.


def _svg(frame: Frame, body: str, label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {frame.width} {frame.height}" '
        f'width="{frame.width}" style="max-width:100%;height:auto" role="img" '
        f'aria-label="{escape(label)}">{body}</svg>'
    )


def _line(x1, y1, x2, y2, colour, width=1, dash="") -> str:
    dashed = f' stroke-dasharray="{dash}"' if dash else ""
    return (
        f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{colour}" '
        f'stroke-width="{width}"{dashed}/>'
    )


def _polyline(points, colour, dash="") -> str:
    dashed = f' stroke-dasharray="{dash}"' if dash else ""
    coordinates = " ".join(f"{x},{y}" for x, y in points)
    return (
        f'<polyline points="{coordinates}" fill="none" stroke="{colour}" '
        f'stroke-width="1.6"{dashed}/>'
    )


def _text(x, y, text, anchor="start", size=11, weight="normal", fill="#1d2430") -> str:
    return (
        f'<text x="{x}" y="{y}" font-size="{size}" text-anchor="{anchor}" '
        f'font-weight="{weight}" fill="{fill}">{escape(text)}</text>'
    )


def _marker(shape: str, x: float, y: float, colour: str, size: float = 5) -> str:
    if shape == "triangle":
        points = f"{x},{y - size} {x - size},{y + size * 0.8} {x + size},{y + size * 0.8}"
        return f'<polygon points="{points}" fill="{colour}"/>'
    if shape == "square":
        return (
            f'<rect x="{x - size * 0.8}" y="{y - size * 0.8}" width="{size * 1.6}" '
            f'height="{size * 1.6}" fill="{colour}"/>'
        )
    return f'<circle cx="{x}" cy="{y}" r="{size * 0.9}" fill="{colour}"/>'


def _legend(x: float, y: float, entries: Sequence[tuple[str, str, str]]) -> str:
    parts = []
    for label, colour, shape in entries:
        if shape in ("line", "dash"):
            parts.append(
                _line(
                    x, y - 4, x + 16, y - 4, colour, width=2, dash="4 3" if shape == "dash" else ""
                )
            )
            x += 20
        else:
            parts.append(_marker(shape, x + 5, y - 4, colour, 4.5))
            x += 13
        parts.append(_text(x, y, label, size=11))
        x += 7 * len(label) + 14
    return "".join(parts)
