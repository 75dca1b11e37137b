"""Referral by the lab's question for every combiner of a fitted run, on one split.

    python benchmarks/referral_by_combiner.py --run runs/pbc-cpu --split test --tta \
        --accepted-accuracy 0.99 --out results/referral-by-combiner.md

For each combiner: the selective rule at the calibrated accepted accuracy and the conformal
rule at the run's alpha — the share of images referred, the accuracy on the accepted ones and
the wrong answers referred (the report shows the default combiner only).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ensemble import Ensemble
from ensemble.combine.temperature import cached_outputs
from ensemble.core.fileio import atomic_write_text
from ensemble.data.sources import load_dataset
from ensemble.members.outputs import cached_member_outputs
from ensemble.refer.rule import conformal_referral


def main() -> None:
    """Write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--accepted-accuracy", type=float, default=0.99)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    ens = Ensemble.load(args.run)
    run = ens.run.with_data(load_dataset(ens.run.data_source()))
    cached = {
        name: cached_member_outputs(
            run, name, args.split, tta=args.tta, model_sha256=ens.member_hashes_[name]
        )
        for name in ens.members_
    }
    labels = cached[ens.members_[0]]["labels"]
    outputs = cached_outputs(ens.temperatures_, cached, ens.members_)
    flagged = ens.ood_from_outputs(outputs) > ens.ood_threshold
    lines = [
        f"# Referral by combiner: run `{args.run.name}`, {args.split} split ({len(labels)} "
        f"images{', 8-view TTA' if args.tta else ''})",
        "",
        f"Command: `python benchmarks/referral_by_combiner.py --run {args.run} --split "
        f"{args.split}{' --tta' if args.tta else ''} --accepted-accuracy "
        f"{args.accepted_accuracy} --out {args.out}`",
        "",
        "| combiner | rule | referred | accuracy on accepted | wrong answers referred |",
        "|---|---|---|---|---|",
    ]
    for name in ens.combiners_:
        probabilities = ens.combine(outputs, name)
        correct = probabilities.argmax(axis=1) == labels
        accepted = ens.selective_[name].accept(probabilities, args.accepted_accuracy, flagged)
        sets = ens.sets_from_probabilities(probabilities, None, name)
        rules = {
            f"selective {args.accepted_accuracy:g}": accepted,
            f"conformal alpha {ens.alpha_:g}": ~conformal_referral(probabilities, sets, flagged),
        }
        for rule, kept in rules.items():
            accuracy = f"{correct[kept].mean():.4f}" if kept.any() else "- (none accepted)"
            lines.append(
                f"| {name} | {rule} | {1 - kept.mean():.1%} | {accuracy} | "
                f"{int((~correct & ~kept).sum())} of {int((~correct).sum())} |"
            )
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
