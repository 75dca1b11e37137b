"""``ensemble demo``: the whole flow on the built-in synthetic data set, in a few minutes.

Writes synthetic cells, trains the demo pipeline's members, fits the combiners, predicts a folder
of new images (with one broken file, to show how it is reported) and writes the full
``ensemble report`` of every member and combiner on the held-out test split (with its shifted
copy). Synthetic numbers say that the machinery works, nothing about real blood cells.
"""

from __future__ import annotations

from pathlib import Path

#: Combiners shown in the demo's summary, besides the best member (the report has them all).
SUMMARY_COMBINERS = 3


def run_demo(out: Path, per_class: int = 50, pipeline: str | Path = "demo") -> dict[str, Path]:
    """Run the demo into ``out``.

    Args:
        out: folder for everything the demo writes (created if missing).
        per_class: synthetic images per class.
        pipeline: a built-in pipeline name or a pipeline TOML file (see
            :func:`ensemble.recipes.resolve_pipeline`).

    Returns:
        What it wrote: ``data``, ``run``, ``predictions``, ``report`` (``report.md``), ``page``
        (``report.html``) and ``metrics`` (the report's ``metrics.json``).
    """
    from PIL import Image

    from ensemble.combine.fitting import fit_combiners
    from ensemble.core.progress import stage
    from ensemble.data.sources import load_dataset
    from ensemble.data.synthetic import make_arrays, write_folder
    from ensemble.members.specs import load_pipeline
    from ensemble.recipes import resolve_pipeline
    from ensemble.report.build import report_on_split
    from ensemble.run.directory import open_run
    from ensemble.run.train import train_pipeline_members
    from ensemble.serve.predict import predict_folder, write_predictions

    out = Path(out)
    recipe = load_pipeline(resolve_pipeline(pipeline))
    data = write_folder(out / "data", per_class=per_class, size=48, seed=0)
    incoming = out / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    images, labels, classes = make_arrays(per_class=2, size=48, seed=99)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(image).save(incoming / f"new_{index:02d}_{classes[label]}.png")
    (incoming / "broken.jpg").write_bytes(b"not really a jpeg")
    run_dir = out / "run"
    dataset = load_dataset(data)
    train_pipeline_members(recipe, dataset, run_dir)
    run = open_run(run_dir, dataset)
    stage("demo", "fitting the combiners on the blend split")
    fit_combiners(run)
    stage("demo", f"predicting the {len(images) + 1} files of {incoming}")
    predictions = predict_folder(incoming, run_dir)
    write_predictions(predictions, out / "predictions.csv", as_json=False)
    stage("demo", "report on the test split and its shifted copy")
    report_on_split(run, "test", out / "report", shifted=True)
    return {
        "data": data,
        "run": run_dir,
        "predictions": out / "predictions.csv",
        "report": out / "report" / "report.md",
        "page": out / "report" / "report.html",
        "metrics": out / "report" / "metrics.json",
    }


def summarize(metrics: dict, paths: dict[str, Path]) -> str:
    """A few lines for the terminal: a short leaderboard and where everything is.

    Args:
        metrics: the report's metrics (``metrics.json`` of :func:`run_demo`).
        paths: what :func:`run_demo` returned.

    Returns:
        The best combiners (at most :data:`SUMMARY_COMBINERS`) and the best member, best first,
        with their test accuracy, 95 % interval and accuracy on the shifted copy; then the
        paths of the data, the run, the predictions and the full report.
    """
    models, shifted = metrics["models"], metrics.get("shifted", {})
    best_combiner, best_member = metrics["best_combiner"], metrics["best_member"]
    combiners = [name for name in models if name not in metrics["members"]]
    combiners.sort(key=lambda name: (-models[name]["accuracy"], name != best_combiner))
    shown = sorted(
        [*combiners[:SUMMARY_COMBINERS], best_member],
        key=lambda name: (-models[name]["accuracy"], name == best_member),
    )
    labels = {
        name: f"{name} ({'best member' if name == best_member else 'best combiner'})"
        if name in (best_member, best_combiner)
        else name
        for name in shown
    }
    width = max(len(label) for label in labels.values())
    lines = [
        f"Test accuracy on {metrics['n_images']} held-out images (95 % interval), and on a "
        "shifted copy:"
    ]
    for name in shown:
        low, high = models[name]["ci95"]["accuracy"]
        moved = f"  shifted {shifted[name]['accuracy']:.4f}" if name in shifted else ""
        lines.append(
            f"  {labels[name]:<{width}}  {models[name]['accuracy']:.4f} ({low:.4f}–{high:.4f})"
            f"{moved}"
        )
    lines += ["Synthetic cells: these numbers show that the machinery works, nothing more.", ""]
    described = {
        "data": "synthetic cells, a folder per class",
        "run": "members and combiners: the --run of predict and report",
        "predictions": "predictions for incoming/, one broken file included",
        "report": "every member and combiner: metrics, tests, plots",
        "page": "the same as one page for a browser, with the review gallery",
    }
    path_width = max(len(str(paths[what])) for what in described)
    for what, description in described.items():
        lines.append(f"  {what:<11}  {str(paths[what]):<{path_width}}  {description}")
    return "\n".join(lines)
