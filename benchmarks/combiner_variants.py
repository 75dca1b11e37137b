r"""Choose how to fit the combiners, on val: clean blend, + shifted copies, + clean experts.

Fits each variant with ``ensemble fit-stacker`` into the run, scores it with ``ensemble report
--split val`` (clean, shifted and zoomed copies of val), and keeps the variant whose default
combiner (the one fit-stacker chose on blend) has the best mean val accuracy over the three.
The test split is not looked at. The run is left fitted with the chosen variant.

    python benchmarks/combiner_variants.py --run runs/pbc-cpu --tta \
        --members mobilenetv2-64,mobilenetv2-64b,ovr-mobilenetv2-64 \
        --experts mobilenetv2-64-clean,mobilenetv2-64b-clean \
        --out results/combiner-variants.json

Variants: ``clean`` (fit-stacker's default: one half of clean blend), ``copies`` (plus
``--shift-copies`` seeded shifted copies of it), ``copies+experts`` (the same, the clean
pre-training stages named by ``--experts`` combined beside the pipeline's members).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ensemble.core.fileio import atomic_write_json, atomic_write_text
from ensemble.run.directory import RunDir

COPIES = ("clean", "shifted", "zoomed")


def _ensemble(*args: object) -> None:
    command = [sys.executable, "-m", "ensemble", *map(str, args)]
    print("$", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)


def variants(
    run: Path, copies: int, experts: list[str], members: list[str] | None = None
) -> dict[str, list[str]]:
    """Each variant's extra fit-stacker options (``members``: default, the pipeline's)."""
    members = members or RunDir.open(run).members
    chosen = ["--members", ",".join(members)]
    result = {"clean": chosen, "copies": ["--shift-copies", str(copies), *chosen]}
    if experts:
        everyone = [*experts, *(name for name in members if name not in experts)]
        result["copies+experts"] = ["--shift-copies", str(copies), "--members", ",".join(everyone)]
    return result


def score_variant(run: Path, options: list[str], tta: bool, scratch: Path, name: str) -> dict:
    """Fit one variant, report it on val; its default combiner's and best member's accuracies."""
    views = ["--tta"] if tta else []
    began = time.perf_counter()
    _ensemble("fit-stacker", "--run", run, *views, *options)
    fit_seconds = time.perf_counter() - began
    selection = json.loads((run / "combiners" / "selection.json").read_text())
    out = scratch / name
    _ensemble("report", "--run", run, "--split", "val", "--out", out, *views)
    metrics = json.loads((out / "metrics.json").read_text())
    default = selection["default_combiner"]

    def accuracy(model: str) -> dict[str, float]:
        found = {"clean": metrics["models"][model]["accuracy"]}
        for copy in ("shifted", "zoomed"):
            found[copy] = (metrics.get(copy) or {}).get(model, {}).get("accuracy")
        return {key: round(value, 4) for key, value in found.items() if value is not None}

    members = selection["members"]
    best_member = max(members, key=lambda m: sum(accuracy(m).values()))
    return {
        "options": options,
        "members": members,
        "default_combiner": default,
        "cv_accuracy_on_blend": selection["cv_accuracy_on_blend"][default],
        "val_default_combiner": accuracy(default),
        "best_member_on_val": best_member,
        "val_best_member": accuracy(best_member),
        "fit_seconds": round(fit_seconds, 1),
    }


def main() -> None:
    """Fit and score every variant, keep the best on val, write JSON and a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--shift-copies", type=int, default=2)
    parser.add_argument("--experts", default="", help="clean pre-training stages, a,b")
    parser.add_argument("--members", default="", help="the members to combine (default: run's)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    experts = [name for name in args.experts.split(",") if name]
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        members = [name for name in args.members.split(",") if name] or None
        for name, options in variants(args.run, args.shift_copies, experts, members).items():
            results[name] = score_variant(args.run, options, args.tta, Path(scratch), name)
            print(json.dumps({name: results[name]}, indent=1), flush=True)

    def mean_val(name: str) -> float:
        values = results[name]["val_default_combiner"]
        return sum(values.values()) / len(values)

    chosen = max(results, key=mean_val)
    if chosen != list(results)[-1]:  # leave the run fitted with the chosen variant
        _ensemble(
            "fit-stacker",
            "--run",
            args.run,
            *(["--tta"] if args.tta else []),
            *results[chosen]["options"],
        )
    record = {"run": str(args.run), "tta": args.tta, "chosen": chosen, "variants": results}
    atomic_write_json(args.out, record)
    atomic_write_text(args.out.with_suffix(".md"), render(record))
    print(f"chosen on val: {chosen}")


def render(record: dict) -> str:
    """The variants as a Markdown table (val accuracy of each variant's default combiner)."""
    views = ", test-time augmentation (8 dihedral views)" if record["tta"] else ""
    lines = [
        "# How to fit the combiners: chosen on val",
        "",
        f"Run `{record['run']}`{views}. Each variant is fitted with `ensemble fit-stacker` and "
        "scored with `ensemble report --split val` (the clean val images, a seeded shifted copy "
        "and a zoomed copy); the chosen one has the best mean val accuracy of its default "
        "combiner over the three. The test split is not looked at. Made by "
        "`benchmarks/combiner_variants.py` (command in results/README.md).",
        "",
    ]
    lines += [
        "| variant | default combiner | val clean | val shifted | val zoomed | best member on val "
        "(clean / shifted / zoomed) |",
        "|---|---|---|---|---|---|",
    ]
    for name, values in record["variants"].items():
        combiner = values["val_default_combiner"]
        member = values["val_best_member"]
        mark = " **(chosen)**" if name == record["chosen"] else ""
        lines.append(
            f"| {name}{mark} | {values['default_combiner']} | "
            + " | ".join(f"{combiner.get(copy, float('nan')):.4f}" for copy in COPIES)
            + f" | {values['best_member_on_val']} "
            + " / ".join(f"{member.get(copy, float('nan')):.4f}" for copy in COPIES)
            + " |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
