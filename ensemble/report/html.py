"""``report.html``: the report as one offline page — leaderboard, charts, review gallery.

Like ``report.md`` it renders ``metrics.json`` and nothing else, plus the gallery's thumbnails
that :func:`~.build.build_report` wrote beside it (``gallery/*.jpg``), embedded as data
URIs: the page opens from a file in any browser, with no network request of any kind
(:mod:`ensemble.core.html_page`). Sections, in page order (:data:`SECTIONS`): the leaderboard
(sortable), accuracy with intervals, McNemar's tests, clean against shifted and zoomed copies
with a heatmap per shift, confusion matrices (a cell of the best combiner's filters the gallery),
the gallery of images the best combiner got wrong or referred, calibration, training curves,
per-class scores, the members, the referral section when there is one, and skipped files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ensemble.core.html_page import data_uri, escape, page
from ensemble.report.adapted import HEAD, comparison_notes, comparison_rows
from ensemble.report.charts import (
    copies_plot,
    coverage_plot,
    forest_plot,
    referral_curve_plot,
    reliability_plot,
    training_curves,
)
from ensemble.report.leaderboard import leaderboard
from ensemble.report.markdown import (
    CONTRIBUTIONS_NOTE,
    comparison_names,
    contribution_table,
    copy_best_member,
    member_cells,
    model_names,
    shift_kinds,
    suite_kinds,
    verdict,
)
from ensemble.serve.gallery import GALLERY_CSS, GALLERY_JS, gallery_html

#: The copies of the report's images, in the order they are shown.
COPIES = ("clean", "shifted", "zoomed", "medmnistc")

REPORT_CSS = """
.lead { font-size: 14px; }
section { scroll-margin-top: 64px; }
table.sortable th { cursor: pointer; user-select: none; white-space: nowrap; }
table.sortable th::after { content: " ⇅"; color: #aab; font-size: 11px; }
table.sortable th.asc::after { content: " ▲"; color: var(--accent); }
table.sortable th.desc::after { content: " ▼"; color: var(--accent); }
tr.best-row td:first-child { font-weight: 700; }
.kind-combiner { color: #a14100; }
.kind-member { color: #0b4f8a; }
table.heat td { min-width: 64px; }
table.confusion td { min-width: 42px; text-align: center; }
table.confusion td.clickable { cursor: pointer; }
table.confusion td.clickable:hover { outline: 2px solid var(--accent); }
table.confusion th.rot { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left;
  font-weight: 500; white-space: nowrap; }
.confusion-box[hidden] { display: none; }
ul.verdicts li { margin: 3px 0; }
details > summary { cursor: pointer; color: var(--accent); margin: 6px 0; }
"""

REPORT_JS = r"""
(function () {
  for (const table of document.querySelectorAll('table.sortable')) {
    const headers = Array.from(table.querySelectorAll('thead th'));
    headers.forEach((th, column) => th.addEventListener('click', () => {
      const descending = !th.classList.contains('desc');
      headers.forEach(h => h.classList.remove('asc', 'desc'));
      th.classList.add(descending ? 'desc' : 'asc');
      const body = table.tBodies[0];
      const rows = Array.from(body.rows);
      const key = row => {
        const cell = row.cells[column];
        const raw = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent;
        const number = parseFloat(raw);
        return raw === '' ? null : (isNaN(number) ? raw.toLowerCase() : number);
      };
      rows.sort((a, b) => {
        const x = key(a), y = key(b);
        if (x === y) return 0;
        if (x === null) return 1;
        if (y === null) return -1;
        return (x < y ? -1 : 1) * (descending ? -1 : 1);
      });
      rows.forEach(row => body.appendChild(row));
    }));
  }
  const chooser = document.getElementById('confusion-model');
  if (chooser) {
    chooser.addEventListener('change', () => {
      for (const box of document.querySelectorAll('.confusion-box')) {
        box.hidden = box.dataset.model !== chooser.value;
      }
    });
  }
  for (const cell of document.querySelectorAll('table.confusion td.clickable')) {
    const show = () => window.galleryShowCell(cell.dataset.true, cell.dataset.pred);
    cell.addEventListener('click', show);
  }
})();
"""


def render_html(metrics: dict, thumbnails: dict[str, bytes] | None = None) -> str:
    """``report.html`` from the computed ``metrics`` and the gallery's thumbnails.

    Args:
        metrics: the content of ``metrics.json``. Files written before a section's data was
            recorded (gallery, zoomed copy, training curves) render without that section.
        thumbnails: gallery image file name (as in the cards' ``image``) → JPEG bytes; cards
            without one show no picture.

    Returns:
        The complete HTML document.
    """
    thumbnails = thumbnails or {}
    parts, links = [], []
    for title, anchor, section in SECTIONS:
        html = section(metrics, thumbnails)
        if html:
            if title:
                links.append(f'<a href="#{anchor}">{escape(title)}</a>')
                html = f'<section id="{anchor}"><h2>{escape(title)}</h2>\n{html}</section>'
            parts.append(html)
    return page(
        metrics["title"].replace("`", ""),
        "\n".join(parts),
        css=GALLERY_CSS + REPORT_CSS,
        script=GALLERY_JS + REPORT_JS,
        nav="".join(links),
    )


def read_thumbnails(metrics: dict, folder: Path) -> dict[str, bytes]:
    """The gallery's thumbnails that exist under ``folder`` (a report's output folder)."""
    cards = (metrics.get("gallery") or {}).get("cards", [])
    found = {}
    for card in cards:
        path = Path(folder) / card.get("image", "")
        if card.get("image") and path.is_file():
            found[card["image"]] = path.read_bytes()
    return found


# Sections: (metrics, thumbnails) → HTML, empty when there is nothing to show.


def _header(metrics: dict, thumbnails: dict) -> str:
    notes = []
    if metrics.get("tta"):
        notes.append(
            "Each member's outputs are averaged over the 8 dihedral views of every image "
            "(test-time augmentation)."
        )
    fitted_with_tta = metrics.get("combiners_fitted_with_tta", metrics.get("tta"))
    if bool(fitted_with_tta) != bool(metrics.get("tta")):
        notes.append(
            "Note: the combiners were fitted with another test-time augmentation setting than "
            "they are applied with here."
        )
    best, member = metrics["best_combiner"], metrics["best_member"]
    models = metrics["models"]
    return (
        f"<h1>{escape(metrics['title'].replace('`', ''))}</h1>\n"
        f'<p class="lead">{metrics["n_images"]} held-out images; every model is scored on the '
        f"same ones. Best single member: <b>{escape(member)}</b> "
        f"({models[member]['accuracy']:.4f}); best combiner: <b>{escape(best)}</b> "
        f"({models[best]['accuracy']:.4f}). {' '.join(escape(n) for n in notes)}</p>\n"
        f'<p class="note">{escape(_interval_note(metrics))}</p>'
    )


def _interval_note(metrics: dict) -> str:
    methods = metrics.get("interval_methods")
    if not methods:
        return "95 % intervals: percentile bootstrap over images (1000 resamples)."
    return "95 % intervals: accuracy — {}; balanced accuracy and macro-F1 — {}.".format(
        methods.get("accuracy", "?"), methods.get("macro_f1", "?")
    )


def _leaderboard(metrics: dict, thumbnails: dict) -> str:
    rows = leaderboard(metrics)
    best = {metrics["best_combiner"], metrics["best_member"]}
    has = {key: any(row[key] is not None for row in rows) for key in rows[0]} if rows else {}
    columns = [
        ("model", "model", lambda v: escape(v)),
        ("kind", "kind", lambda v: f'<span class="kind-{v}">{v}</span>'),
        ("cv_blend_accuracy", "CV blend", _fixed(4)),
        ("test_accuracy", "test accuracy (95 % CI)", None),
        ("macro_f1", "macro-F1", _fixed(4)),
        ("ece", "ECE", _fixed(4)),
        ("train_minutes", "train min", _fixed(1)),
        ("predict_images_per_second", "img/s", _fixed(0)),
        ("shifted_accuracy", "shifted", _fixed(4)),
        ("zoomed_accuracy", "zoomed", _fixed(4)),
        ("medmnistc_accuracy", "MedMNIST-C", _fixed(4)),
    ]
    columns = [c for c in columns if c[0] in ("model", "kind", "test_accuracy") or has.get(c[0])]
    head = "".join(
        f"<th{'' if key in ('model', 'kind') else ' class=num'}>{escape(title)}</th>"
        for key, title, _ in columns
    )
    body = []
    for row in rows:
        cells = []
        for key, _, show in columns:
            value = row[key]
            if key == "test_accuracy":
                text = (
                    f"{value:.4f} <span class=note>({row['test_accuracy_low']:.4f}–"
                    f"{row['test_accuracy_high']:.4f})</span>"
                )
            else:
                text = "-" if value is None else show(value)
            sort_value = "" if value is None else escape(value)
            numeric = ' class="num"' if key not in ("model", "kind") else ""
            cells.append(f'<td data-value="{sort_value}"{numeric}>{text}</td>')
        css = ' class="best-row"' if row["model"] in best else ""
        body.append(f"<tr{css}>{''.join(cells)}</tr>")
    return (
        '<div class="scroll"><table class="sortable" id="leaderboard-table">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
        '<p class="note">Click a column to sort. Also written as <code>leaderboard.csv</code>. '
        "CV blend: fit-stacker's cross-validated accuracy on the blend split (how the default "
        "combiner was chosen). Train min: training minutes as measured by train-members "
        "(members only). Img/s: prediction speed in this report's forward pass on this machine "
        "(a combiner's: every member in turn). Shifted, zoomed, MedMNIST-C: accuracy on those "
        "copies.</p>"
    )


def _accuracy(metrics: dict, thumbnails: dict) -> str:
    combiners = set(model_names(metrics)) - set(metrics["members"])
    best = {metrics["best_combiner"], metrics["best_member"]}
    rows = [
        {
            "name": name,
            "value": metrics["models"][name]["accuracy"],
            "low": metrics["models"][name]["ci95"]["accuracy"][0],
            "high": metrics["models"][name]["ci95"]["accuracy"][1],
            "combiner": name in combiners,
            "best": name in best,
        }
        for name in model_names(metrics)
    ]
    table = _table(
        ["model", "accuracy (95% CI)", "balanced accuracy (95% CI)", "macro-F1 (95% CI)"],
        [
            [name]
            + [
                f"{metrics['models'][name][key]:.4f} ({metrics['models'][name]['ci95'][key][0]:.4f}"
                f"–{metrics['models'][name]['ci95'][key][1]:.4f})"
                for key in ("accuracy", "balanced_accuracy", "macro_f1")
            ]
            for name in model_names(metrics)
        ],
    )
    return (
        f'<div class="panel">{forest_plot(rows)}</div>'
        f"<details><summary>as a table, with balanced accuracy and macro-F1</summary>{table}"
        "</details>"
    )


def _significance(metrics: dict, thumbnails: dict) -> str:
    best = metrics["best_combiner"]
    copies = [("clean", metrics.get("mcnemar", {}))] + [
        (copy, metrics.get(f"{copy}_mcnemar")) for copy in COPIES[1:]
    ]
    copies = [(copy, tests) for copy, tests in copies if tests]
    rows, verdicts = [], []
    for copy, tests in copies:
        member = copy_best_member(metrics, copy)
        for name in [f"{best}_vs_{member}", "hard_vs_stack"]:
            if name in tests:
                test = tests[name]
                rows.append(
                    [
                        copy,
                        name.replace("_vs_", " vs "),
                        test["first_only"],
                        test["second_only"],
                        f"{test['p_value']:.4g}",
                    ]
                )
        if f"{best}_vs_{member}" in tests:
            verdicts.append(
                f"<li><b>{copy}</b>: "
                + _markdown_bold(
                    verdict(
                        f"the best combiner ({best})",
                        f"the best single member on these images ({member})",
                        tests[f"{best}_vs_{member}"],
                    )
                )
                + "</li>"
            )
        if "hard_vs_stack" in tests:
            verdicts.append(
                f"<li><b>{copy}</b>: "
                + _markdown_bold(verdict("hard voting", "stacking", tests["hard_vs_stack"]))
                + "</li>"
            )
    clean, member = metrics.get("mcnemar", {}), metrics["best_member"]
    others = [
        [name.replace("_vs_", " vs "), t["first_only"], t["second_only"], f"{t['p_value']:.4g}"]
        for name, t in ((name, clean[name]) for name in comparison_names(metrics))
        if name not in (f"{best}_vs_{member}", "hard_vs_stack")
    ]
    extra = (
        "<details><summary>every combiner against the best member (clean images)</summary>"
        + _table(["comparison", "only first right", "only second right", "p-value"], others)
        + "</details>"
        if others
        else ""
    )
    return (
        f'<ul class="verdicts">{"".join(verdicts)}</ul>'
        + _table(["images", "comparison", "only first right", "only second right", "p-value"], rows)
        + extra
        + '<p class="note">Exact McNemar test on the same images: only the images one model '
        "gets right and the other wrong count. The best combiner is that of the clean images; "
        "on each copy it is compared with the member that is best on that copy.</p>"
    )


def _robustness(metrics: dict, thumbnails: dict) -> str:
    copies = [c for c in COPIES if c == "clean" or metrics.get(c)]
    if len(copies) == 1:
        return ""
    best = {metrics["best_combiner"], metrics["best_member"]}
    rows = []
    for name in model_names(metrics):
        row = {"name": name, "best": name in best, "clean": metrics["models"][name]["accuracy"]}
        for copy in copies[1:]:
            row[copy] = metrics[copy].get(name, {}).get("accuracy")
        rows.append(row)
    text = [
        f'<div class="panel">{copies_plot(rows, copies)}</div>',
        f"<p>{_copies_note(metrics)}</p>",
    ]
    by_kind = metrics.get("shifted_by_kind") or {}
    if by_kind:
        zoomed = ["zoomed"] if metrics.get("zoomed") else []
        text.append(
            _heat_table(
                metrics,
                "Accuracy per kind of shift",
                by_kind,
                shift_kinds(metrics),
                zoomed,
                "Each kind holds about one seventh of the images.",
            )
        )
    suite_by_kind = metrics.get("medmnistc_by_kind") or {}
    if suite_by_kind:
        kinds = suite_kinds(metrics)
        text.append(
            _heat_table(
                metrics,
                "Accuracy per kind of MedMNIST-C corruption",
                suite_by_kind,
                kinds,
                [],
                f"Each kind holds about one in {len(kinds)} images.",
            )
        )
    return "".join(text)


def _heat_table(
    metrics: dict, title: str, by_kind: dict, kinds: list[str], copies: list[str], note: str
) -> str:
    """A copy's accuracy per kind, one row per model that has it, coloured red to green.

    ``copies`` are whole copies (e.g. the zoomed one) added as columns after the kinds.
    """
    columns = ["clean", *kinds, *copies]
    values = []
    for name in model_names(metrics):
        if name not in by_kind:
            continue
        row = {"clean": metrics["models"][name]["accuracy"], **by_kind[name]}
        for copy in copies:
            row[copy] = metrics[copy].get(name, {}).get("accuracy")
        values.append((name, [row.get(c) for c in columns]))
    low = min((v for _, row in values for v in row if v is not None), default=0.0)
    head = "".join(f"<th>{escape(c)}</th>" for c in ["model", *columns])
    body = "".join(
        f"<tr><td>{escape(name)}</td>" + "".join(_heat_cell(value, low) for value in row) + "</tr>"
        for name, row in values
    )
    return (
        f"<h3>{escape(title)}</h3>"
        f'<div class="scroll"><table class="heat"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
        '<p class="note">Colour from red (the lowest accuracy in the table) to green (1.0). '
        f"{escape(note)}</p>"
    )


def _copies_note(metrics: dict) -> str:
    parts = []
    kinds = shift_kinds(metrics)
    if metrics.get("shifted") and kinds:
        parts.append(
            f"The shifted copy holds the {len(kinds)} acquisition kinds "
            f"({', '.join(kinds)}), one per image in turn, seeded."
        )
    if metrics.get("zoomed"):
        parts.append(
            "The zoomed copy is separate: every image zoomed (two in three shown 1.25–2× larger, "
            "one in three 0.7–0.85× smaller), seeded like the shifted copy."
        )
    if metrics.get("medmnistc"):
        parts.append(
            "The MedMNIST-C copy applies the BloodMNIST corruption suite of Di Salvo et al. "
            "(2024) at severity 3 of 5, one kind per image in turn: corruptions the project did "
            "not write and never trains on."
        )
    return escape(" ".join(parts))


def _heat_cell(value: float | None, low: float) -> str:
    if value is None:
        return '<td data-value="">-</td>'
    share = 1.0 if low >= 1.0 else max(0.0, min(1.0, (value - low) / (1.0 - low)))
    hue = round(8 + 122 * share)
    return (
        f'<td data-value="{value}" style="background:hsl({hue},65%,84%)" '
        f'title="{value:.4f}">{value:.3f}</td>'
    )


def _confusions(metrics: dict, thumbnails: dict) -> str:
    best = metrics["best_combiner"]
    classes = metrics["classes"]
    gallery = metrics.get("gallery") or {}
    in_gallery: dict[tuple[str, str], int] = {}
    for card in gallery.get("cards", []):
        key = (card["true"], card["predicted"])
        in_gallery[key] = in_gallery.get(key, 0) + 1
    names = [best] + [name for name in model_names(metrics) if name != best]
    options = "".join(
        f'<option value="{escape(n)}">{escape(n)}{" (best combiner)" if n == best else ""}</option>'
        for n in names
    )
    boxes = []
    for name in names:
        matrix = metrics["models"][name]["confusion"]
        clickable = name == best and gallery.get("model") == best
        boxes.append(
            f'<div class="confusion-box" data-model="{escape(name)}"'
            f"{'' if name == best else ' hidden'}>"
            + _confusion_table(matrix, classes, in_gallery if clickable else None)
            + "</div>"
        )
    return (
        f'<label>model: <select id="confusion-model">{options}</select></label>'
        + "".join(boxes)
        + '<p class="note">Rows: true class; columns: predicted class; colour: share of the row '
        "(recall). On the best combiner's matrix, click a cell to see its images in the gallery "
        "below (off the diagonal: every error of that kind; on it: the referred images).</p>"
    )


def _confusion_table(matrix: list, classes: list[str], in_gallery: dict | None) -> str:
    head = "".join(f'<th class="rot">{escape(c)}</th>' for c in classes)
    rows = []
    for i, true in enumerate(classes):
        total = max(sum(matrix[i]), 1)
        cells = []
        for j, predicted in enumerate(classes):
            count = matrix[i][j]
            share = count / total
            colour = f"rgba(11,99,182,{0.08 + 0.85 * share:.2f})" if count else "#fff"
            ink = "#fff" if share > 0.6 else "#1d2430"
            tip = f"true {true}, predicted {predicted}: {count} image(s), {share:.1%} of {true}"
            attributes = ""
            if in_gallery is not None and in_gallery.get((true, predicted)):
                tip += f"; {in_gallery[(true, predicted)]} in the gallery (click)"
                attributes = (
                    f' class="clickable" data-true="{escape(true)}" data-pred="{escape(predicted)}"'
                )
            cells.append(
                f'<td{attributes} style="background:{colour};color:{ink}" title="{escape(tip)}">'
                f"{count}</td>"
            )
        rows.append(f"<tr><th>{escape(true)}</th>{''.join(cells)}</tr>")
    return (
        '<div class="scroll"><table class="confusion"><thead><tr><th>true \\ predicted</th>'
        f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _referral_rule(gallery: dict) -> str:
    """The gallery's referral rule, in words (galleries of earlier reports: agreement)."""
    if gallery.get("rule") == "conformal":
        return (
            "the conformal prediction set is not exactly the prediction, or the image is out of "
            "distribution"
        )
    if gallery.get("rule") == "selective":
        return (
            "not confident enough for the accuracy guaranteed on accepted images, or out of "
            "distribution"
        )
    return (
        f"member agreement under {gallery['min_agreement']:.0%} or confidence under "
        f"{gallery['min_confidence']:.0%}"
    )


def _gallery(metrics: dict, thumbnails: dict) -> str:
    gallery = metrics.get("gallery")
    if not gallery:
        return ""
    counts = gallery["counts"]
    images = {
        card["index"]: data_uri(thumbnails[card["image"]], "image/jpeg")
        for card in gallery["cards"]
        if card.get("image") in thumbnails
    }
    cut = (
        f" The gallery holds the first {counts['shown']} (wrong ones first, by rising confidence)."
        if counts["shown"] < counts["wrong_or_referred"]
        else ""
    )
    return (
        f"<p>The images <b>{escape(gallery['model'])}</b> got wrong ({counts['wrong']}) or would "
        f"refer to a human ({counts['referred']}: {_referral_rule(gallery)}, as "
        f"<code>predict</code> refers them), {counts['wrong_or_referred']} in all, by rising "
        f"confidence.{cut} Click a picture to enlarge it; "
        "<b>wrong, not referred</b> are the errors nobody would look at.</p>"
        + gallery_html(gallery["cards"], metrics["classes"], images)
    )


def _calibration(metrics: dict, thumbnails: dict) -> str:
    best, member = metrics["best_combiner"], metrics["best_member"]
    names = [best, member] + [n for n in model_names(metrics) if n not in (best, member)]
    charts = [
        f'<div class="panel">{reliability_plot(n, metrics["models"][n]["calibration"]["curve"], metrics["models"][n]["calibration"]["ece"])}</div>'  # noqa: E501
        for n in names
    ]
    coverage = coverage_plot(
        [
            {"name": n, "points": metrics["models"][n]["coverage_accuracy"]}
            for n in dict.fromkeys([best, member, "hard"])
            if n in metrics["models"]
        ]
    )
    return (
        f'<div class="grid">{"".join(charts[:2])}<div class="panel">{coverage}</div></div>'
        + (
            f"<details><summary>every other model ({len(charts) - 2})</summary>"
            f'<div class="grid">{"".join(charts[2:])}</div></details>'
            if len(charts) > 2
            else ""
        )
        + '<p class="note">Reliability: accuracy against mean confidence in 15 equal-width bins; '
        "a point's area follows the images it holds. Coverage: accuracy on the images kept when "
        "those with the least member agreement (then confidence) are referred.</p>"
    )


def _training(metrics: dict, thumbnails: dict) -> str:
    details = metrics.get("member_details") or {}
    charts, notes = [], []
    for name in metrics["members"]:
        member = details.get(name) or {}
        history = member.get("history")
        if member.get("kind") == "ovr":
            notes.append(
                f"{escape(name)}: one-vs-rest heads on {escape(member.get('base_member', ''))}, "
                "trained per class (no shared epochs to plot)."
            )
        elif history:
            before = member.get("history_before") or []
            charts.append(f'<div class="panel">{training_curves(name, history, before)}</div>')
    if not charts and not notes:
        return ""
    return (
        f'<div class="grid">{"".join(charts)}</div>'
        + "".join(f'<p class="note">{note}</p>' for note in notes)
        + '<p class="note">Accuracy per epoch on the training batches (augmented, dashed) and '
        "on the validation split (solid); a dashed vertical line marks a new phase or stage "
        "(a member started from another member's weights shows that member's epochs first).</p>"
    )


def _per_class(metrics: dict, thumbnails: dict) -> str:
    per_class = metrics["models"][metrics["best_combiner"]]["per_class"]
    rows = [
        [
            name,
            f"{per_class['precision'][i]:.4f}",
            f"{per_class['recall'][i]:.4f}",
            f"{per_class['f1'][i]:.4f}",
            per_class["support"][i],
        ]
        for i, name in enumerate(metrics["classes"])
    ]
    return f"<p>Best combiner: <b>{escape(metrics['best_combiner'])}</b>.</p>" + _table(
        ["class", "precision", "recall", "F1", "support"], rows
    )


def _members(metrics: dict, thumbnails: dict) -> str:
    speeds = metrics.get("prediction_images_per_second", {})
    details = metrics.get("member_details", {})
    rows = []
    for name in metrics["members"]:
        backbone, aug, tuning, minutes = member_cells(details.get(name))
        speed = speeds.get(name)
        rows.append(
            [
                name,
                backbone,
                aug,
                tuning,
                minutes,
                "-" if speed is None else f"{speed:.0f}",
                f"{metrics['models'][name]['accuracy']:.4f}",
            ]
        )
    return _table(
        [
            "member",
            "backbone",
            "augmentation",
            "weights / fine-tuning",
            "training min",
            "predict img/s",
            "accuracy",
        ],
        rows,
    )


def _referral(metrics: dict, thumbnails: dict) -> str:
    """The report page's referral section: the selective rule, coverage and who is referred.

    Over 60 lines: it writes two tables with their explanations, in page order.
    """
    referral = metrics.get("referral")
    if not referral:
        return ""
    if not referral.get("calibrated", True):
        return (
            "<p>The run's combiners were fitted before prediction sets existed: run "
            "<code>ensemble fit-stacker</code> again to see coverage and referral here.</p>"
        )
    if "coverage" not in referral or "referral" not in referral:
        return _generic(referral)
    target = referral.get("target_coverage")
    lines = [
        _selective(referral.get("selective"), metrics),
        f"<p>Prediction sets of <b>{escape(referral.get('combiner', ''))}</b> at alpha = "
        f"{referral.get('alpha', float('nan')):g} (target coverage {target:.1%}). An image is "
        "accepted only when its set is exactly the predicted class (and it is not out of "
        "distribution); every other image is referred.</p>",
    ]
    coverage_rows = [
        [
            name,
            values["n_images"],
            f"{values['coverage']:.4f}"
            + (" (below)" if name in referral.get("below_target", []) else ""),
            f"{values['mean_set_size']:.2f}",
        ]
        for name, values in (
            (name, referral["coverage"][name])
            for name in referral.get("image_sets", sorted(referral["coverage"]))
            if name in referral["coverage"]
        )
    ]
    lines.append(_table(["images", "n", "coverage", "mean set size"], coverage_rows))
    lines.append(
        "<p>Who is referred, by kind of image: the share of all images and of the wrong answers "
        "referred, the accuracy on the images accepted, and the agreement rule beside it.</p>"
    )
    group_rows = []
    for group in referral.get("groups", list(referral["referral"])):
        values = referral["referral"][group]
        group_rows.append(
            [
                group,
                values["n_images"],
                f"{values['accuracy']:.4f}",
                _percent(values.get("referred")),
                _percent(values.get("wrong_referred")),
                "-"
                if values.get("accepted_accuracy") is None
                else f"{values['accepted_accuracy']:.4f}",
                _percent(values.get("agreement_referred")),
                _percent(values.get("agreement_wrong_referred")),
            ]
        )
    lines.append(
        _table(
            [
                "images",
                "n",
                "accuracy",
                "referred",
                "wrong answers referred",
                "accuracy on accepted",
                "agreement rule: referred",
                "agreement rule: wrong referred",
            ],
            group_rows,
        )
    )
    return "".join(lines)


def _selective(selective: dict | None, metrics: dict) -> str:
    """The lab's question first: the selective rule's targets, bounds and realised values."""
    if not selective or not selective.get("targets"):
        return ""
    first = selective["targets"][0]
    image_sets = list(first["image_sets"])
    parts = [
        f"<h3>Accept only what is right</h3><p><code>--refer selective</code> accepts an "
        f"image when <b>{escape(selective['combiner'])}</b>'s {escape(selective['score'])} "
        "reaches a threshold calibrated so that the accuracy on accepted images is at least "
        f"the target with probability {1 - selective['delta']:g}. <i>Guaranteed</i> is the "
        "bound from the calibration images; the rest is what happened here.</p>"
    ]
    rows = []
    for entry in selective["targets"]:
        guaranteed = [value for value in entry["guaranteed"] if value is not None]
        row = [
            f"{entry['target']:g}",
            f"{min(guaranteed):.4f}" if guaranteed else "-",
            f"{entry['calibration_accepted']} of {entry['calibration_n']}",
        ]
        for name in image_sets:
            values = entry["image_sets"][name]
            accuracy = values["accepted_accuracy"]
            row += [_percent(values["referred"]), "-" if accuracy is None else f"{accuracy:.4f}"]
        rows.append(row)
    heads = ["target", "guaranteed", "calibration accepted"]
    for name in image_sets:
        heads += [f"{name}: referred", f"{name}: accuracy on accepted"]
    parts.append(_table(heads, rows))
    combiners = [name for name in metrics.get("combiners", []) if name in metrics["models"]]
    charts = []
    for name in image_sets:
        curves = selective["curves"].get(name, {})
        order = [model for model in combiners if model in curves] or sorted(curves)
        shown = {model: curves[model] for model in order}  # metrics.json sorts its keys
        values = first["image_sets"][name]
        chosen = {
            "referred": values["referred"],
            "accuracy": values["accepted_accuracy"],
            "label": f"selective {first['target']:g}",
        }
        charts.append(referral_curve_plot(shown, chosen, name))
    parts.append(f'<div class="charts">{"".join(charts)}</div>')
    return "".join(parts)


def _error_overlap(metrics: dict, thumbnails: dict) -> str:
    """The share of each model's errors that each other model repeats (kappa in brackets)."""
    overlap = metrics.get("error_overlap")
    if not overlap:
        return ""
    names = overlap["names"]
    rows = []
    for row, name in enumerate(names):
        cells = [name]
        for column in range(len(names)):
            share, kappa = overlap["repeated"][row][column], overlap["kappa"][row][column]
            if row == column:
                cells.append(f"{overlap['errors'][row]} errors")
            elif share is None:
                cells.append("-")
            else:
                cells.append(f"{share:.0%}" + ("" if kappa is None else f" ({kappa:.2f})"))
        rows.append(cells)
    return (
        "<p>Voting can only fix an image that most members get right. Each row: the share of "
        "that model's errors that the column's model repeats (Cohen's kappa of their errors "
        "in brackets: 1 = the same images, 0 = no more overlap than chance).</p>"
        + _table(["errors of ↓ repeated by →", *names], rows)
    )


def _contributions(metrics: dict, thumbnails: dict) -> str:
    """Voting without each member, on every copy: what each member buys."""
    head, rows = contribution_table(metrics)
    if not rows:
        return ""
    return f"<p>{escape(CONTRIBUTIONS_NOTE)}</p>" + _table(head, rows)


def _adapted(metrics: dict, thumbnails: dict) -> str:
    comparison = metrics.get("adapted")
    if not comparison:
        return ""
    whole = not comparison.get("missing") and not comparison.get("unloadable")
    table = _table(HEAD, comparison_rows(comparison)) if whole else ""
    notes = "".join(f"<p>{escape(note)}</p>" for note in comparison_notes(comparison))
    return table + notes


def _skipped(metrics: dict, thumbnails: dict) -> str:
    if not metrics.get("skipped"):
        return ""
    items = "".join(
        f"<li><code>{escape(item['id'])}</code>: {escape(item['reason'])}</li>"
        for item in metrics["skipped"]
    )
    return f"<ul>{items}</ul>"


# Helpers.


def _table(head: list[str], rows: list[list]) -> str:
    numeric = [
        index > 0 and all(_is_number(row[index]) for row in rows) and bool(rows)
        for index in range(len(head))
    ]
    header = "".join(
        f"<th{' class=num' if numeric[i] else ''}>{escape(h)}</th>" for i, h in enumerate(head)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=num' if numeric[i] else ''}>{escape(cell)}</td>"
            for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return (
        f'<div class="scroll"><table><thead><tr>{header}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _generic(values: dict) -> str:
    """A key/value table of whatever a section recorded (scalars only; nested dicts flattened)."""
    rows = []

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif not isinstance(value, list):
            rows.append([prefix, value])

    walk("", values)
    return _table(["what", "value"], rows)


def _is_number(value: object) -> bool:
    """A number, or text that starts with one (``"0.9312 (0.91–0.95)"``, ``"-"`` too)."""
    if isinstance(value, int | float) or value == "-":
        return True
    head = str(value).split(" ")[0]
    try:
        float(head)
    except ValueError:
        return False
    return True


def _fixed(digits: int) -> Callable[[float], str]:
    return lambda value: f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _markdown_bold(text: str) -> str:
    """The verdicts' ``**bold**`` as HTML (the rest escaped)."""
    pieces = escape(text).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(pieces))


#: The sections of ``report.html`` in page order: (heading, anchor, renderer); no heading for
#: the page's header.
SECTIONS: tuple[tuple[str, str, Callable[[dict, dict], str]], ...] = (
    ("", "top", _header),
    ("Leaderboard", "leaderboard", _leaderboard),
    ("Adapted run and its base", "adapted", _adapted),
    ("Accuracy with 95 % intervals", "accuracy", _accuracy),
    ("Is the difference real? McNemar's test", "significance", _significance),
    ("Do the members err on the same images?", "error-overlap", _error_overlap),
    ("What each member buys", "contributions", _contributions),
    ("Clean, shifted and zoomed images", "robustness", _robustness),
    ("Confusion matrices", "confusion", _confusions),
    ("Review gallery: wrong or referred", "gallery", _gallery),
    ("Calibration and referral by agreement", "calibration", _calibration),
    ("Training curves", "training", _training),
    ("Per class (best combiner)", "per-class", _per_class),
    ("Members", "members", _members),
    ("Referral with prediction sets", "referral", _referral),
    ("Images left out (could not be decoded)", "skipped", _skipped),
)
