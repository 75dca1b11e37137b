"""The README's headline table, rendered from a committed report's ``metrics.json`` alone.

    python benchmarks/readme_table.py results/pbc-cpu/metrics.json

Rows: the best member on clean images, the best member on the shifted copy, the default
(a combiner, or a member where none of them beat it on blend), the best combiner on clean
images and the best combiner on the zoomed copy: each model once, with all its roles. ``tests/test_readme_numbers.py``
checks that the README shows exactly these numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def rows(metrics: dict) -> list[tuple[str, str]]:
    """``(model, roles)`` of each row, in table order, each model once."""
    combiners = metrics["combiners"]
    default = metrics.get("default_combiner") or _chosen_on_blend(metrics)
    zoomed = metrics.get("zoomed") or {}
    chosen = [
        (metrics["best_member"], "best member on clean images"),
        (
            metrics.get("shifted_best_member", metrics["best_member"]),
            "best member on the shifted copy",
        ),
        (default, "the default, chosen on blend"),
        (
            max(combiners, key=lambda name: metrics["models"][name]["accuracy"]),
            "best combiner on clean images",
        ),
    ]
    if zoomed:
        best_zoomed = max(combiners, key=lambda name: zoomed[name]["accuracy"])
        chosen.append((best_zoomed, "best combiner on the zoomed copy"))
    roles: dict[str, list[str]] = {}
    for name, role in chosen:
        roles.setdefault(name, []).append(role)
    return [(name, "; ".join(named)) for name, named in roles.items()]


def _chosen_on_blend(metrics: dict) -> str:
    """For reports written before they recorded it: the default fit-stacker chose.

    The highest cross-validated blend accuracy, ties to a combiner, then the earlier one
    (:func:`ensemble.combine.fitting.choose_default`).
    """
    from ensemble.combine.fitting import choose_default

    return choose_default(metrics["cv_accuracy_on_blend"], metrics["combiners"])


def cells(metrics: dict, name: str) -> list[str]:
    """Clean accuracy with its 95 % interval, clean macro-F1, shifted and zoomed accuracy."""
    model = metrics["models"][name]
    low, high = model["ci95"]["accuracy"]
    shifted = (metrics.get("shifted") or {}).get(name)
    zoomed = (metrics.get("zoomed") or {}).get(name)
    return [
        f"{model['accuracy']:.4f} ({low:.4f}–{high:.4f})",
        f"{model['macro_f1']:.4f}",
        f"{shifted['accuracy']:.4f}" if shifted else "-",
        f"{zoomed['accuracy']:.4f}" if zoomed else "-",
    ]


def table(metrics: dict) -> str:
    """The Markdown table."""
    lines = [
        "| model | clean accuracy (95 % CI) | clean macro-F1 | shifted | zoomed |",
        "|---|---|---|---|---|",
    ]
    for name, role in rows(metrics):
        lines.append(f"| `{name}` ({role}) | " + " | ".join(cells(metrics, name)) + " |")
    return "\n".join(lines)


def main() -> None:
    """Print the table of the ``metrics.json`` given."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("metrics", type=Path)
    print(table(json.loads(parser.parse_args().metrics.read_text())))


if __name__ == "__main__":
    main()
