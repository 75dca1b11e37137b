"""The adapted run's section of the report, rendered from metrics alone."""

from ensemble.report.adapted import render_section


def _comparison(**changes):
    row = {
        "combiner": "soft",
        "rule": "conformal",
        "accuracy": 0.5,
        "referred": 0.25,
        "wrong_referred": None,
        "accepted_accuracy": 0.9876,
    }
    comparison = {
        "base_run": "/runs/base",
        "base_changed": False,
        "labelled": 100,
        "rows": {"base": row, "adapted": row | {"accuracy": 0.9}},
        "mcnemar": {"first_only": 1, "second_only": 9, "p_value": 0.0215},
    }
    return comparison | changes


def test_a_run_not_adapted_has_no_section():
    assert render_section({}) == [] and render_section({"adapted": None}) == []


def test_the_section_sets_base_and_adapted_side_by_side():
    text = "\n".join(render_section({"adapted": _comparison()}))
    assert "| base | soft | conformal | 0.5000 | 25.0% | — | 98.76% |" in text
    assert "| adapted | soft | conformal | 0.9000 |" in text
    assert "1 images right only by the base, 9 only by the adapted run, p = 0.0215" in text
    assert "learned from 100 reviewed cells" in text
    assert "Warning" not in text


def test_a_changed_or_missing_base_is_said():
    changed = "\n".join(render_section({"adapted": _comparison(base_changed=True)}))
    assert "Warning: the members of the base run /runs/base changed" in changed
    missing = render_section({"adapted": {"base_run": "/runs/base", "missing": True}})
    assert "The base run /runs/base is no longer there." in missing
    assert not any(line.startswith("|") for line in missing)


def test_the_html_section_holds_the_same_table():
    from ensemble.report.html import SECTIONS

    (section,) = [render for _, anchor, render in SECTIONS if anchor == "adapted"]
    assert section({}, {}) == ""
    html = section({"adapted": _comparison()}, {})
    assert html.count("<tr>") == 3 and "98.76%" in html and "p = 0.0215" in html
