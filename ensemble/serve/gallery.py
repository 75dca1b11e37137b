"""The review gallery: the cells a person should look at, as cards in an offline HTML page.

A card shows the cell enlarged, its true label (when known), the prediction and its confidence,
the top-3 class probabilities and every member's vote. Two uses:

- in ``report.html``, the held-out images the best combiner got wrong or referred
  (:func:`report_cards`); clicking a confusion-matrix cell filters the cards to that cell;
- ``predict DIR --html review.html``, every image of a folder, referred ones first, then by
  rising confidence (:func:`prediction_cards`, :func:`review_page`). Each card has a label
  picker; "Download corrections" saves ``corrections.csv`` (``path,label``, paths relative to
  ``DIR``), which ``train-members --data corrections.csv --data-root DIR`` reads as it is.

"Referred" means what it means in ``predict``: by the run's referral rule
(:mod:`ensemble.refer.rule`) — the conformal rule once the run is calibrated, else member
agreement or confidence under its threshold (``predict``'s defaults,
:data:`~ensemble.refer.rule.DEFAULT_MIN_AGREEMENT` and
:data:`~ensemble.refer.rule.DEFAULT_MIN_CONFIDENCE`).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ensemble.core.html_page import data_uri, escape, page
from ensemble.refer.rule import DEFAULT_MIN_AGREEMENT, DEFAULT_MIN_CONFIDENCE

#: Referral thresholds, as ``predict``'s defaults: agreement and confidence under these.
#: Most cards in report.html: wrong images first, then referred ones (keeps the page small).
GALLERY_LIMIT = 400
#: Longest side of a thumbnail in pixels (the images are shown enlarged by the browser).
THUMBNAIL_SIDE = 128
#: JPEG quality of thumbnails: a 96 px cell is about 4 kB, with no visible loss when enlarged 2×.
THUMBNAIL_QUALITY = 92


def report_cards(
    probabilities: np.ndarray,
    labels: np.ndarray,
    votes: np.ndarray,
    classes: Sequence[str],
    members: Sequence[str],
    ids: Sequence[str],
    *,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    limit: int = GALLERY_LIMIT,
    referred: np.ndarray | None = None,
) -> tuple[list[dict], dict[str, int]]:
    """The cards of the images a model got wrong or would refer, by rising confidence.

    Args:
        probabilities: the model's class probabilities ``(N, K)``.
        labels: true class index per image.
        votes: each member's predicted class ``(n_members, N)``.
        classes: class names.
        members: member names, in ``votes`` order.
        ids: each image's id (its path relative to the data, or its index).
        min_agreement: refer under this share of members voting for the prediction.
        min_confidence: refer under this probability of the prediction.
        limit: most cards; wrong images are kept first, then referred ones.
        referred: which images the run's referral rule refers ``(N,)``; ``None`` = the
            agreement rule with ``min_agreement`` and ``min_confidence``.

    Returns:
        ``(cards, counts)``: JSON-ready cards (see :func:`_card`) with ``index`` = position of
        the image, and ``{"wrong", "referred", "wrong_or_referred", "shown"}``.

    Over 60 lines: its arguments are documented one by one.
    """
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    agreement = (votes == predicted).mean(axis=0)
    wrong = predicted != labels
    if referred is None:
        referred = (agreement < min_agreement) | (confidence < min_confidence)
    chosen = np.flatnonzero(wrong | referred)
    # Wrong images first, each group by rising confidence; then cut at the limit.
    kept = chosen[np.lexsort((confidence[chosen], ~wrong[chosen]))][:limit]
    kept = kept[np.argsort(confidence[kept], kind="stable")]
    cards = [
        _card(
            index=int(index),
            image_id=str(ids[index]),
            probabilities=probabilities[index],
            classes=classes,
            votes=[
                [name, classes[int(vote)]]
                for name, vote in zip(members, votes[:, index], strict=True)
            ],
            agreement=float(agreement[index]),
            referred=bool(referred[index]),
            true=classes[int(labels[index])],
        )
        for index in kept
    ]
    counts = {
        "wrong": int(wrong.sum()),
        "referred": int(referred.sum()),
        "wrong_or_referred": len(chosen),
        "shown": len(cards),
    }
    return cards, counts


def prediction_cards(rows: Sequence[dict], classes: Sequence[str], members: Sequence[str]) -> list:
    """Cards of ``predict``'s rows that have a prediction: referred first, then rising confidence.

    Rows may carry, besides ``predict``'s fixed columns and ``vote_<member>``, one
    ``proba_<class>`` per class (then the top-3 come from them), ``prediction_set``,
    ``set_size``, ``ood_score`` and ``out_of_distribution``; cards show whatever is there.
    Values may be text (as read from the CSV) or Python values (as ``predict`` makes them).
    """
    cards = []
    for row in rows:
        if row.get("error") or not row.get("prediction"):
            continue
        confidence = float(row["confidence"])
        probabilities = [row.get(f"proba_{name}") for name in classes]
        if all(value not in (None, "") for value in probabilities):
            vector = np.array([float(value) for value in probabilities])
        else:  # only the prediction's own probability is known
            vector = np.zeros(len(classes))
            vector[list(classes).index(row["prediction"])] = confidence
        card = _card(
            index=len(cards),
            image_id=row["path"],
            probabilities=vector,
            classes=classes,
            votes=[[name, row.get(f"vote_{name}") or ""] for name in members],
            agreement=float(row["agreement"]) if row.get("agreement") not in (None, "") else None,
            referred=str(row.get("abstain", "")).lower() == "true",
            true=None,
        )
        card["predicted"], card["confidence"] = row["prediction"], confidence
        for extra in ("referral_reason", "prediction_set", "set_size", "ood_score"):
            if row.get(extra) not in (None, ""):
                card[extra] = row[extra]
        if str(row.get("out_of_distribution", "")).lower() == "true":
            card["out_of_distribution"] = True
        cards.append(card)
    cards.sort(key=lambda card: (not card["referred"], card["confidence"]))
    return cards


def _card(
    *,
    index: int,
    image_id: str,
    probabilities: np.ndarray,
    classes: Sequence[str],
    votes: list[list[str]],
    agreement: float | None,
    referred: bool,
    true: str | None,
) -> dict:
    """One card as JSON-ready values.

    Keys: ``index``, ``id``, ``true`` (None when unknown), ``predicted``, ``confidence``,
    ``top3`` ([class, probability] pairs), ``votes`` ([member, class] pairs, in member order),
    ``agreement``, ``referred``.
    """
    top = np.argsort(-probabilities, kind="stable")[:3]
    predicted = classes[int(top[0])]
    return {
        "index": index,
        "id": image_id,
        "true": true,
        "predicted": predicted,
        "confidence": round(float(probabilities[top[0]]), 4),
        "top3": [[classes[int(k)], round(float(probabilities[k]), 4)] for k in top],
        "votes": votes,
        "agreement": None if agreement is None else round(agreement, 3),
        "referred": referred,
    }


def thumbnail_jpeg(pixels: np.ndarray) -> bytes:
    """A JPEG of an RGB image, its longest side at most :data:`THUMBNAIL_SIDE` pixels."""
    from PIL import Image

    image = Image.fromarray(np.asarray(pixels, np.uint8))
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=THUMBNAIL_QUALITY)
    return buffer.getvalue()


# The page fragment.

GALLERY_CSS = """
.gallery-bar { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; margin: 8px 0; }
.gallery-status { color: var(--muted); font-size: 13px; margin-left: 6px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 10px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px; display: flex;
  gap: 8px; font-size: 12.5px; background: #fff; }
.card[hidden] { display: none; }
.card.is-wrong { border-left: 4px solid var(--bad); }
.card.is-referred { background: #fffaf0; }
.card.relabelled { outline: 2px solid var(--accent); }
.card img { width: 128px; height: 128px; object-fit: contain; border-radius: 4px;
  background: #eee; cursor: zoom-in; flex: none; }
.card .meta { min-width: 0; flex: 1; }
.card .id { color: var(--muted); font-size: 11px; overflow-wrap: anywhere; }
.card .pred b.bad { color: var(--bad); }
.card .tag { display: inline-block; font-size: 11px; padding: 0 5px; border-radius: 8px;
  background: #fde9c8; color: var(--warn); margin: 2px 2px 0 0; }
.card .tag.wrong { background: #fde3e1; color: var(--bad); }
.top3 { margin: 3px 0; }
.top3 div { display: flex; align-items: center; gap: 4px; white-space: nowrap; }
.top3 .bar { height: 6px; background: var(--accent); border-radius: 3px; display: inline-block; }
.top3 span.name { overflow: hidden; text-overflow: ellipsis; width: 80px; flex: none; }
.votes { color: var(--muted); font-size: 11.5px; margin: 2px 0; }
.votes .dissent { color: var(--bad); }
.card select { width: 100%; margin-top: 4px; }
#lightbox { position: fixed; inset: 0; background: #000c; display: none; z-index: 20;
  align-items: center; justify-content: center; flex-direction: column; color: #fff; }
#lightbox.open { display: flex; }
#lightbox img { width: min(480px, 90vw); height: auto; image-rendering: auto; background: #fff; }
"""

GALLERY_JS = r"""
(function () {
  const cards = Array.from(document.querySelectorAll('.card'));
  const status = document.getElementById('gallery-status');
  const state = { kind: 'all', cell: null };
  const kinds = {
    all: () => true,
    wrong: c => c.dataset.wrong === '1',
    referred: c => c.dataset.referred === '1',
    unreferred: c => c.dataset.referred !== '1',
    silent: c => c.dataset.wrong === '1' && c.dataset.referred !== '1',
  };
  function apply() {
    let shown = 0;
    for (const card of cards) {
      let show = kinds[state.kind](card);
      if (state.cell) {
        show = card.dataset.true === state.cell[0] && card.dataset.pred === state.cell[1];
      }
      card.hidden = !show;
      if (show) shown += 1;
    }
    for (const button of document.querySelectorAll('.gallery-bar button[data-kind]')) {
      button.classList.toggle('on', !state.cell && button.dataset.kind === state.kind);
    }
    if (status) {
      status.textContent = state.cell
        ? `${shown} image(s): true ${state.cell[0]}, predicted ${state.cell[1]} ` +
          '(click "all" to reset)'
        : `${shown} of ${cards.length} image(s)`;
    }
  }
  for (const button of document.querySelectorAll('.gallery-bar button[data-kind]')) {
    button.addEventListener('click', () => {
      state.kind = button.dataset.kind;
      state.cell = null;
      apply();
    });
  }
  window.galleryShowCell = function (trueClass, predictedClass) {
    state.cell = [trueClass, predictedClass];
    apply();
    const gallery = document.getElementById('gallery');
    if (gallery) gallery.scrollIntoView({ block: 'start' });
  };
  const box = document.getElementById('lightbox');
  if (box) {
    const big = box.querySelector('img'), caption = box.querySelector('div');
    for (const card of cards) {
      card.querySelector('img').addEventListener('click', () => {
        big.src = card.querySelector('img').src;
        caption.textContent = card.querySelector('.id').textContent;
        box.classList.add('open');
      });
    }
    box.addEventListener('click', () => box.classList.remove('open'));
    document.addEventListener('keydown', e => {
      if (e.key === 'Escape') box.classList.remove('open');
    });
  }
  apply();
})();
"""

REVIEW_JS = r"""
(function () {
  const cards = Array.from(document.querySelectorAll('.card'));
  const button = document.getElementById('download');
  function quote(text) {
    return /[",\r\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }
  function picked() {
    return cards.filter(c => c.querySelector('select.relabel').value !== '');
  }
  function update() {
    for (const card of cards) {
      card.classList.toggle('relabelled', card.querySelector('select.relabel').value !== '');
    }
    button.textContent = `Download corrections (${picked().length})`;
    button.disabled = picked().length === 0;
  }
  for (const card of cards) card.querySelector('select.relabel').addEventListener('change', update);
  button.addEventListener('click', () => {
    const lines = ['path,label'];
    for (const card of picked()) {
      const label = card.querySelector('select.relabel').value;
      lines.push(quote(card.dataset.path) + ',' + quote(label));
    }
    const blob = new Blob([lines.join('\n') + '\n'], { type: 'text/csv' });
    const link = document.createElement('a');
    link.href = URL.createObjectURL(blob);
    link.download = 'corrections.csv';
    document.body.appendChild(link);
    link.click();
    setTimeout(() => { URL.revokeObjectURL(link.href); link.remove(); }, 1000);
  });
  update();
})();
"""


def gallery_html(
    cards: Sequence[dict],
    classes: Sequence[str],
    images: dict[int, str],
    *,
    review: bool = False,
) -> str:
    """The gallery's filter bar, cards and lightbox (HTML; needs :data:`GALLERY_JS`).

    Args:
        cards: from :func:`report_cards` or :func:`prediction_cards`.
        classes: class names, for the label pickers.
        images: card ``index`` → image data URI (cards without one show no picture).
        review: add a label picker to each card (the predict review page).
    """
    kinds = (
        [("all", "all"), ("referred", "referred"), ("unreferred", "not referred")]
        if review
        else [
            ("all", "all"),
            ("wrong", "wrong"),
            ("referred", "referred"),
            ("silent", "wrong, not referred"),
        ]
    )
    bar = "".join(f'<button type="button" data-kind="{k}">{escape(t)}</button>' for k, t in kinds)
    body = "".join(_card_html(card, classes, images.get(card["index"]), review) for card in cards)
    return (
        f'<div class="gallery-bar">{bar}<span class="gallery-status" id="gallery-status">'
        f'</span></div>\n<div class="cards">\n{body}</div>\n'
        '<div id="lightbox"><img alt="enlarged cell"><div></div></div>'
    )


def _card_html(card: dict, classes: Sequence[str], image: str | None, review: bool) -> str:
    """One review card as HTML.

    Over 60 lines: one card's HTML, tag by tag, in page order.
    """
    true, predicted = card.get("true"), card["predicted"]
    wrong = true is not None and true != predicted
    flags = []
    if wrong:
        flags.append('<span class="tag wrong">wrong</span>')
    if card["referred"]:
        why = card.get("referral_reason")
        flags.append(
            f'<span class="tag" title="why it was referred">referred: {escape(why)}</span>'
            if why
            else '<span class="tag">referred</span>'
        )
    if card.get("prediction_set"):
        members = str(card["prediction_set"]).replace("|", ", ")
        flags.append(f'<span class="tag" title="prediction set">set: {escape(members)}</span>')
    if card.get("out_of_distribution"):
        flags.append('<span class="tag">out of distribution</span>')
    if card.get("ood_score") not in (None, ""):
        flags.append(f'<span class="tag">OOD score {float(card["ood_score"]):.3g}</span>')
    top3 = "".join(
        f'<div><span class="name">{escape(name)}</span><span class="bar" '
        f'style="width:{max(1, round(60 * probability))}px"></span>{probability:.3f}</div>'
        for name, probability in card["top3"]
        if probability > 0
    )
    votes = "".join(
        f'<div>{escape(m)}: <span class="{"" if v == predicted else "dissent"}">{escape(v)}</span>'
        "</div>"
        for m, v in card["votes"]
    )
    agreement = card.get("agreement")
    if agreement is not None:
        votes = f"<div>votes (agreement {agreement:.2f}):</div>{votes}"
    picture = (
        f'<img src="{image}" alt="{escape(card["id"])}">'
        if image
        else '<img alt="no picture" src="data:,">'
    )
    lines = [
        f'<div class="id">{escape(card["id"])}</div>',
        f"<div>true <b>{escape(true)}</b></div>" if true is not None else "",
        f'<div class="pred">predicted <b class="{"bad" if wrong else ""}">{escape(predicted)}'
        f"</b> {card['confidence']:.3f}</div>",
        f'<div class="top3">{top3}</div>',
        f'<div class="votes">{votes}</div>',
        f"<div>{''.join(flags)}</div>",
    ]
    if review:
        options = "".join(
            f'<option value="{escape(name)}">{escape(name)}'
            f"{' (predicted)' if name == predicted else ''}</option>"
            for name in classes
        )
        lines.append(
            f'<select class="relabel" aria-label="label of {escape(card["id"])}">'
            f'<option value="">not reviewed</option>{options}</select>'
        )
    css = " ".join(
        name for name, on in (("is-wrong", wrong), ("is-referred", card["referred"])) if on
    )
    attributes = (
        f'data-index="{card["index"]}" data-path="{escape(card["id"])}" '
        f'data-true="{escape(true or "")}" data-pred="{escape(predicted)}" '
        f'data-wrong="{int(wrong)}" data-referred="{int(card["referred"])}"'
    )
    meta = "".join(lines)
    return f'<div class="card {css}" {attributes}>{picture}<div class="meta">{meta}</div></div>\n'


# The review page of ``predict --html``.


def review_page(
    cards: Sequence[dict],
    classes: Sequence[str],
    images: dict[int, str],
    *,
    folder: str,
    run: str,
    unreadable: Sequence[dict] = (),
    header: dict | None = None,
    order: str = "referral",
) -> str:
    """The review page: every predicted image of a folder as a card with a label picker.

    Args:
        cards: from :func:`prediction_cards` (referred first, then by rising confidence).
        classes: the run's class names.
        images: card ``index`` → image data URI.
        folder: the predicted folder, as given (shown, and the root of the CSV's paths).
        run: the run directory (shown).
        unreadable: rows of files that could not be read (``path``, ``error``), listed.
        header: how ``predict`` made the rows (``combiner``, ``refer``, ``alpha``,
            ``min_agreement``, ``min_confidence``), when known.
        order: ``"referral"`` (referred first, then by rising confidence) or ``"labelling"``
            (:func:`order_for_labelling`: the cells a label teaches most first).
    """
    header = header or {}
    if order == "labelling":
        cards = order_for_labelling(cards)
    referred = sum(1 for card in cards if card["referred"])
    skipped = (
        "<h2>Files that could not be read</h2><ul>"
        + "".join(
            f"<li><code>{escape(r['path'])}</code>: {escape(r['error'])}</li>" for r in unreadable
        )
        + "</ul>"
        if unreadable
        else ""
    )
    combiner = (
        f" (combiner <code>{escape(header['combiner'])}</code>)" if header.get("combiner") else ""
    )
    body = f"""
<h1>Review: {len(cards)} images of <code>{escape(folder)}</code></h1>
<p>Predicted with run <code>{escape(run)}</code>{combiner}. {referred} image(s) are referred
to a person ({escape(_referral_rule(header))}). {_order_note(order)}</p>
<p>Pick the right label on any card you check (choosing the predicted class confirms it), then
<button type="button" id="download" disabled>Download corrections (0)</button>.
It saves <code>corrections.csv</code> with columns <code>path,label</code>, one row per card you
labelled, paths relative to <code>{escape(folder)}</code>. Reviewed cells become training data:
<code>ensemble train-members --pipeline NAME --data corrections.csv --data-root
{escape(folder)}</code> reads it as it is (or append its rows to your own manifest).</p>
<section id="gallery">{gallery_html(cards, classes, images, review=True)}</section>
{skipped}
"""
    return page(f"Review: {folder}", body, css=GALLERY_CSS, script=GALLERY_JS + REVIEW_JS)


def _referral_rule(header: dict) -> str:
    """How ``predict`` chose the referred images, in words."""
    if header.get("refer") == "selective":
        target = header.get("accepted_accuracy")
        aim = f" {target:g}" if isinstance(target, int | float) else ""
        return (
            f"not confident enough for the accepted accuracy{aim} guaranteed, or out of "
            "distribution"
        )
    if header.get("refer") == "conformal":
        alpha = header.get("alpha")
        level = f" at alpha = {alpha:g}" if isinstance(alpha, int | float) else ""
        return (
            f"the prediction set{level} is not exactly the predicted class, or the image is out "
            "of distribution"
        )
    agreement = header.get("min_agreement", DEFAULT_MIN_AGREEMENT)
    confidence = header.get("min_confidence", DEFAULT_MIN_CONFIDENCE)
    return f"member agreement under {agreement:.0%} or confidence under {confidence:.0%}"


def order_for_labelling(cards: Sequence[dict]) -> list[dict]:
    """Cards in the order a label teaches most: uncertain and unfamiliar first, classes in turn.

    Within each predicted class, by falling uncertainty (one minus the confidence, plus one for
    an image out of distribution); the classes then take turns, so the first cards reviewed
    cover every class, as ``ensemble adapt`` needs.
    """
    by_class: dict[str, list[dict]] = {}
    for card in cards:
        by_class.setdefault(card["predicted"], []).append(card)
    for group in by_class.values():
        group.sort(key=lambda c: -((1 - c["confidence"]) + bool(c.get("out_of_distribution"))))
    ordered, position = [], 0
    while len(ordered) < len(cards):
        for name in sorted(by_class):
            if position < len(by_class[name]):
                ordered.append(by_class[name][position])
        position += 1
    return ordered


def _order_note(order: str) -> str:
    from ensemble.serve.adapt_settings import MIN_PER_CLASS

    if order == "labelling":
        return (
            "Ordered for labelling: the most uncertain and least familiar images first, the "
            "predicted classes taking turns. <code>ensemble adapt</code> needs at least "
            f"{MIN_PER_CLASS} reviewed cells of every class, and gains more with more: on "
            "simulated labs 200 reviewed cells bought more than 100 (results/adapt.md)."
        )
    return "Referred images come first; then every other image by rising confidence."


def write_review_page(
    rows: Sequence[dict],
    folder: Path,
    out: Path,
    classes: Sequence[str],
    members: Sequence[str],
    run: str,
    *,
    header: dict | None = None,
    read_pixels: Callable[[Path], np.ndarray] | None = None,
    order: str = "referral",
) -> int:
    """Write ``predict``'s review page for the rows of one folder; returns the number of cards.

    Args:
        rows: ``predict``'s rows (paths relative to ``folder``).
        folder: the predicted folder.
        out: the HTML file to write (atomically).
        classes: the run's class names.
        members: the run's member names.
        run: the run directory, shown on the page.
        header: how ``predict`` made the rows (see :func:`review_page`).
        read_pixels: decodes a file to RGB (default :func:`ensemble.data.images.decode_image`).
        order: the cards' order (see :func:`review_page`).
    """
    from ensemble.core.fileio import atomic_write_text

    if read_pixels is None:
        from ensemble.data.images import decode_image

        def read_pixels(path: Path) -> np.ndarray:
            return decode_image(path).pixels

    cards = prediction_cards(rows, classes, members)
    images = {}
    for card in cards:
        try:
            pixels = read_pixels(Path(folder) / card["id"])
        except Exception:  # changed since predict read it: the card stays, without a picture
            continue
        images[card["index"]] = data_uri(thumbnail_jpeg(pixels), "image/jpeg")
    unreadable = [row for row in rows if row.get("error")]
    page_text = review_page(
        cards,
        classes,
        images,
        folder=str(folder),
        run=run,
        unreadable=unreadable,
        header=header,
        order=order,
    )
    atomic_write_text(out, page_text)
    return len(cards)
