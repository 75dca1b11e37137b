"""``ensemble demo``: the whole flow on the built-in synthetic data set, in a few minutes.

Writes synthetic cells, trains the demo pipeline's members, fits the combiners, predicts a folder
of new images (with one broken file, to show how it is reported) and writes the full
``ensemble report`` of every member and combiner on the held-out test split (with its shifted
copy). Synthetic numbers say that the machinery works, nothing about real blood cells.
"""

from __future__ import annotations

from pathlib import Path


def run_demo(out: Path, per_class: int = 50, pipeline_path: Path | None = None) -> dict[str, Path]:
    """Run the demo into ``out``; returns the paths of what it wrote."""
    from PIL import Image

    from ensemble.data import load_dataset
    from ensemble.fitting import fit_combiners
    from ensemble.members import train_pipeline_members
    from ensemble.predict import predict_folder, write_predictions
    from ensemble.report import report_on_split
    from ensemble.run import open_run
    from ensemble.specs import load_pipeline
    from ensemble.synthetic import make_arrays, write_folder

    out = Path(out)
    pipeline = load_pipeline(pipeline_path or _repository_file("pipelines/demo.toml"))
    data = write_folder(out / "data", per_class=per_class, size=48, seed=0)
    incoming = out / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    images, labels, classes = make_arrays(per_class=2, size=48, seed=99)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(image).save(incoming / f"new_{index:02d}_{classes[label]}.png")
    (incoming / "broken.jpg").write_bytes(b"not really a jpeg")
    run_dir = out / "run"
    dataset = load_dataset(data)
    train_pipeline_members(pipeline, dataset, run_dir)
    run = open_run(run_dir, dataset)
    fit_combiners(run)
    predictions = predict_folder(incoming, run_dir)
    write_predictions(predictions, out / "predictions.csv", as_json=False)
    report_on_split(run, "test", out / "report", shifted=True)
    return {
        "data": data,
        "run": run_dir,
        "predictions": out / "predictions.csv",
        "report": out / "report" / "report.md",
    }


def _repository_file(relative: str) -> Path:
    """A file shipped beside the package (pipelines/, members/)."""
    here = Path(__file__).resolve().parent.parent / relative
    if here.is_file():
        return here
    return Path(relative)
