"""The HTML pages in a real headless browser (Debian's chromium), loaded from file URLs.

report.html: loads with no console error and no network request, holds the gallery's cards,
a click on a confusion-matrix cell shows exactly that cell's images, and it is not blank. The
review page of ``predict --html``: relabelling two cards and downloading gives a CSV with those
two rows, which the data loader of ``train-members`` reads as it is.
"""

import csv
import io
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.browser import Browser, find_chromium
from tests.conftest import run_cli
from tests.test_report_html import ci_report  # noqa: F401  (a session fixture)

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium not found: install Debian's chromium (apt-get install chromium) to run "
    "the browser tests",
)


@pytest.fixture()
def browser(tmp_path):
    with Browser(CHROMIUM) as opened:
        opened.download_to(tmp_path / "downloads")
        yield opened


def test_report_page_loads_offline_and_filters_the_gallery_by_confusion_cell(
    ci_report,  # noqa: F811
    browser,
):
    out, metrics, _ = ci_report
    browser.open(out / "report.html")
    assert browser.errors == []
    assert browser.network_requests() == []
    cards = metrics["gallery"]["cards"]
    assert browser.evaluate("document.querySelectorAll('.card').length") == len(cards) > 0
    assert browser.evaluate("document.querySelectorAll('.card:not([hidden])').length") == len(cards)
    # Every wrong answer of the gallery's model is a card (the confusion matrix's off-diagonal),
    # and every card's picture has loaded.
    confusion = np.array(metrics["models"][metrics["gallery"]["model"]]["confusion"])
    wrong_cards = browser.evaluate(
        "Array.from(document.querySelectorAll('.card')).filter("
        "c => c.dataset.true !== c.dataset.pred).length"
    )
    assert wrong_cards == confusion.sum() - np.trace(confusion)
    assert browser.evaluate(
        "Array.from(document.querySelectorAll('.card img')).every("
        "i => i.complete && i.naturalWidth > 0)"
    )
    # Click the largest error cell of the best combiner's confusion matrix.
    classes = metrics["classes"]
    matrix = np.array(metrics["models"][metrics["best_combiner"]]["confusion"])
    np.fill_diagonal(matrix, -1)
    true, predicted = np.unravel_index(matrix.argmax(), matrix.shape)
    assert matrix[true, predicted] > 0, "the tiny ci ensemble makes no error to click"
    browser.click(
        f'table.confusion td.clickable[data-true="{classes[true]}"]'
        f'[data-pred="{classes[predicted]}"]'
    )
    shown = browser.evaluate(
        "Array.from(document.querySelectorAll('.card:not([hidden])'))"
        ".map(c => [c.dataset.true, c.dataset.pred])"
    )
    assert shown == [[classes[true], classes[predicted]]] * int(matrix[true, predicted])
    assert "predicted " + classes[predicted] in browser.evaluate(
        "document.getElementById('gallery-status').textContent"
    )
    # "all" shows every card again.
    browser.click('.gallery-bar button[data-kind="all"]')
    assert browser.evaluate("document.querySelectorAll('.card:not([hidden])').length") == len(cards)
    # Sorting the leaderboard by a column reorders its rows.
    browser.click("#leaderboard-table thead th:nth-child(1)")
    names = browser.evaluate(
        "Array.from(document.querySelectorAll('#leaderboard-table tbody tr td:first-child'))"
        ".map(td => td.textContent)"
    )
    assert names == sorted(names, reverse=True)
    screenshot = np.asarray(Image.open(io.BytesIO(browser.screenshot())).convert("RGB"))
    assert screenshot.std() > 10 and len(np.unique(screenshot.reshape(-1, 3), axis=0)) > 50
    assert browser.errors == [] and browser.network_requests() == []


def test_review_page_downloads_the_corrections_as_training_data(
    fitted_ci_run, synthetic_folder, tmp_path, capsys, browser
):
    from ensemble.data.sources import load_dataset

    folder = tmp_path / "incoming"
    (folder / "ward 3").mkdir(parents=True)
    sources = sorted((synthetic_folder / "monocyte").iterdir())[:3]
    shutil.copy(sources[0], folder / "a.png")
    shutil.copy(sources[1], folder / "ward 3" / "cell, left.png")  # a comma: quoted in the CSV
    shutil.copy(sources[2], folder / "c.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    page = tmp_path / "review.html"
    code, _, err = run_cli(
        [
            "predict",
            folder,
            "--run",
            fitted_ci_run,
            "--out",
            tmp_path / "preds.csv",
            "--html",
            page,
        ],
        capsys,
    )
    assert code == 3, err  # the broken file
    assert "review page (3 images, referred first)" in err
    browser.open(page)
    assert browser.errors == [] and browser.network_requests() == []
    paths = browser.evaluate(
        "Array.from(document.querySelectorAll('.card')).map(c => c.dataset.path)"
    )
    assert sorted(paths) == ["a.png", "c.png", "ward 3/cell, left.png"]
    referred = browser.evaluate(
        "Array.from(document.querySelectorAll('.card')).map(c => c.dataset.referred === '1')"
    )
    assert referred == sorted(referred, reverse=True)  # referred first
    assert "broken.jpg" in browser.evaluate("document.body.textContent")
    wanted = {"ward 3/cell, left.png": "platelet", "c.png": "basophil"}
    for path, label in wanted.items():
        index = paths.index(path) + 1
        browser.select(f".cards .card:nth-child({index}) select.relabel", label)
    assert browser.evaluate("document.getElementById('download').textContent") == (
        "Download corrections (2)"
    )
    browser.click("#download")
    done = browser.wait_for("Browser.downloadProgress", state="completed", timeout=30)
    saved = (tmp_path / "downloads" / "corrections.csv").read_text()
    assert done["filePath"].endswith("corrections.csv")
    rows = list(csv.DictReader(io.StringIO(saved)))
    assert {row["path"]: row["label"] for row in rows} == wanted
    # train-members reads it as it is, with --data-root pointing at the predicted folder.
    dataset = load_dataset(tmp_path / "downloads" / "corrections.csv", root=folder)
    assert {record.id: record.label for record in dataset.records} == wanted
    assert browser.errors == []
