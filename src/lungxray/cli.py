"""`lungxray <verb>`: a thin layer that parses flags, calls the library and prints.

Every verb is a library function a notebook user can call with the same result. Errors a user can
cause (``LungXrayError``) are printed as one red line, with no traceback, and exit code 2.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from lungxray import DISCLAIMER, __version__
from lungxray.errors import LungXrayError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help=f"Train, evaluate, explain and serve chest X-ray classifiers. {DISCLAIMER}",
)
console = Console()
err = Console(stderr=True)

Opt = typer.Option


def _version(value: bool) -> None:
    if value:
        console.print(f"lungxray {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, Opt("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """lungxray: decision support for chest X-rays, never a diagnosis."""


def _data_overrides(
    csv: str | None,
    file_col: str | None,
    label_col: str | None,
    patient_col: str | None,
    binary_negative: str | None,
    task: str | None,
) -> dict[str, Any]:
    return {
        "data.csv": csv,
        "data.file_col": file_col,
        "data.label_col": label_col,
        "data.patient_col": patient_col,
        "data.binary_negative": binary_negative,
        "data.task": task,
    }


@app.command()
def audit(
    path: Annotated[
        str, typer.Argument(help="Data folder (class folders, optionally under train/val/test).")
    ],
    csv: Annotated[str | None, Opt(help="Label table (relative to PATH), e.g. labels.csv.")] = None,
    file_col: Annotated[str | None, Opt(help="CSV column with file names.")] = None,
    label_col: Annotated[str | None, Opt(help="CSV column with labels.")] = None,
    patient_col: Annotated[str | None, Opt(help="CSV column with patient ids.")] = None,
    binary_negative: Annotated[
        str | None, Opt(help="Label meaning normal, e.g. 'No Finding' -> binary.")
    ] = None,
    as_json: Annotated[bool, Opt("--json", help="Print one JSON document instead of tables.")] = False,
    cache_dir: Annotated[str | None, Opt(help="Cache folder (default ~/.cache/lungxray).")] = None,
) -> None:
    """Check a data set: counts, sizes, unreadable files, duplicates and patients across splits."""
    from lungxray.config import load_config
    from lungxray.data.audit import audit as run_audit
    from lungxray.data.audit import render_audit
    from lungxray.data.readers import load_manifest

    cfg = load_config(
        None,
        {"data.path": path, **_data_overrides(csv, file_col, label_col, patient_col, binary_negative, None)},
    )
    report = run_audit(load_manifest(cfg.data), cache_dir=cache_dir, progress=not as_json)
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        render_audit(report, console)


@app.command()
def train(
    data: Annotated[str | None, typer.Argument(help="Data folder (or the folder holding --csv).")] = None,
    config: Annotated[
        str | None, Opt("--config", "-c", help="YAML recipe, e.g. configs/cpu-default.yaml.")
    ] = None,
    model: Annotated[str | None, Opt(help="Architecture: a reference model or any timm name.")] = None,
    epochs: Annotated[int | None, Opt(help="Epochs.")] = None,
    size: Annotated[int | None, Opt(help="Input side in pixels.")] = None,
    batch_size: Annotated[int | None, Opt(help="Batch size.")] = None,
    lr: Annotated[float | None, Opt(help="Peak learning rate.")] = None,
    seed: Annotated[int | None, Opt(help="Random seed.")] = None,
    out: Annotated[str | None, Opt(help="Run directory (default runs/<name>).")] = None,
    name: Annotated[str | None, Opt(help="Run name.")] = None,
    weights: Annotated[str | None, Opt(help="Local weights file or run directory to start from.")] = None,
    transfer: Annotated[str | None, Opt(help="finetune | freeze | freeze-then-finetune.")] = None,
    device: Annotated[str | None, Opt(help="auto | cpu | cuda.")] = None,
    csv: Annotated[str | None, Opt(help="Label table (relative to DATA).")] = None,
    label_col: Annotated[str | None, Opt(help="CSV label column.")] = None,
    binary_negative: Annotated[str | None, Opt(help="Label meaning normal, e.g. 'No Finding'.")] = None,
    task: Annotated[str | None, Opt(help="binary | multiclass | multilabel (default: inferred).")] = None,
    max_images: Annotated[
        int | None, Opt(help="Seeded subsample of all rows, test included (smoke runs).")
    ] = None,
    track: Annotated[str | None, Opt(help="'mlflow' to log to a local MLflow store.")] = None,
    resume: Annotated[bool, Opt("--resume", help="Continue an interrupted run in --out exactly.")] = False,
    folds: Annotated[
        int | None, Opt(help="K >= 2: a k-fold ensemble, threshold from out-of-fold predictions (train.folds).")
    ] = None,
    set_: Annotated[
        list[str] | None, Opt("--set", help="Any config field: --set train.optimizer=sgd.")
    ] = None,
    quiet: Annotated[bool, Opt("--quiet", help="No progress bars.")] = False,
    nproc: Annotated[int, Opt(help="Processes (GPUs) on this node: relaunches under torchrun.")] = 1,
) -> None:
    """Train a model; writes the run directory (config, weights, model.json, splits, history)."""
    if nproc > 1 and "WORLD_SIZE" not in __import__("os").environ:
        from lungxray.training.distributed import launch, strip_nproc

        raise typer.Exit(launch(nproc, strip_nproc(sys.argv[1:])))
    from lungxray.config import load_config, parse_overrides
    from lungxray.training import train as run_train

    overrides = {
        "data.path": data,
        "model.name": model,
        "train.epochs": epochs,
        "data.size": size,
        "train.batch_size": batch_size,
        "train.lr": lr,
        "train.seed": seed,
        "out": out,
        "name": name,
        "model.weights": weights,
        "model.transfer": transfer,
        "train.device": device,
        "data.max_images": max_images,
        "train.track": track,
        "train.folds": folds,
        **_data_overrides(csv, None, label_col, None, binary_negative, task),
        **parse_overrides(set_ or []),
    }
    if resume and out and config is None and (Path(out) / "config.yaml").is_file():
        config = str(Path(out) / "config.yaml")
    cfg = load_config(config, overrides)
    if not cfg.data.path and not cfg.data.sources:
        from lungxray.errors import ConfigError

        raise ConfigError("no data: give DATA (a folder) or data.path in the --config file.")
    result = run_train(cfg, resume=resume, progress=not quiet, console=console)
    best = (
        f"{cfg.train.folds}-fold ensemble (out-of-fold AUC {result.best_score:.4f})"
        if cfg.train.folds >= 2
        else f"best epoch {result.best_epoch} (val {cfg.train.monitor} {result.best_score:.4f})"
    )
    console.print(
        f"[green]run written to {escape(str(result.run_dir))}[/]  {best}, {result.seconds:.0f} s training, "
        f"{result.images_per_s:.0f} img/s"
    )


@app.command()
def calibrate(
    run: Annotated[str, typer.Argument(help="A finished run directory.")],
    data: Annotated[
        str | None, Opt(help="Site data: a folder of class folders or a label CSV (or, with --unlabeled, images).")
    ] = None,
    unlabeled: Annotated[
        bool, Opt("--unlabeled", help="--data has no labels: estimate its prevalence and adjust for it.")
    ] = False,
    strategy: Annotated[
        str | None, Opt(help="youden | max-f1 | sensitivity>=X | specificity>=X | 0.5 (default: the run's).")
    ] = None,
    out: Annotated[str | None, Opt(help="The NEW run directory (default: RUN-site / RUN-recalibrated).")] = None,
    name: Annotated[str | None, Opt(help="Name of the new calibration entry.")] = None,
    bootstrap: Annotated[int, Opt(help="Bootstrap resamples for the CIs.")] = 1000,
    quiet: Annotated[bool, Opt("--quiet", help="No progress bars.")] = False,
    adapt_bn: Annotated[
        bool, Opt("--adapt-bn", help="With labeled --data: first adapt the BatchNorm statistics to the site (AdaBN).")
    ] = False,
    adapt_on: Annotated[
        str | None, Opt(help="More unlabeled site images (a folder) for --adapt-bn's statistics (implies it).")
    ] = None,
) -> None:
    """Choose a new operating point (on site data with --data, else on the run's validation split);
    writes a copy of RUN with the new calibration appended to its history (RUN is never changed)."""
    if (adapt_bn or adapt_on) and (data is None or unlabeled):
        raise typer.BadParameter("--adapt-bn / --adapt-on need a labeled site sample (--data, without --unlabeled).")
    if data is not None:
        from lungxray.calibrate_site import adapt_prevalence, calibrate_site, render_site

        if unlabeled:
            res = adapt_prevalence(run, data, out=out, name=name or "site-prevalence",
                                   n_boot=min(bootstrap, 200), progress=not quiet)  # fmt: skip
        else:
            res = calibrate_site(run, data, strategy=strategy, out=out, name=name or "site",
                                 n_boot=bootstrap, progress=not quiet, adapt_bn=adapt_bn, adapt_on=adapt_on)  # fmt: skip
        render_site(res, console)
        return
    if unlabeled:
        raise typer.BadParameter("--unlabeled needs --data (the site's images).")
    from lungxray.calibrate import calibrate_run

    target = out or f"{str(run).rstrip('/')}-recalibrated"
    card = calibrate_run(run, strategy=strategy, out=target, progress=not quiet, name=name or "recalibration")
    cal = card.calibration
    console.print(
        f"[green]run written to {escape(str(target))}[/]  calibration {len(card.calibrations)}: {cal.strategy} on "
        f"{cal.n} val images, threshold(s) {card.threshold_map()}"
    )


@app.command()
def evaluate(
    run: Annotated[str, typer.Argument(help="Run directory.")],
    data: Annotated[
        str | None, Opt(help="Evaluate on another data folder (default: the run's data).")
    ] = None,
    split: Annotated[str, Opt(help="Split to evaluate: test | val | train.")] = "test",
    bootstrap: Annotated[int | None, Opt(help="Bootstrap resamples for CIs (default from config).")] = None,
    quiet: Annotated[bool, Opt("--quiet", help="No progress bars.")] = False,
    lungs: Annotated[
        str | None, Opt(help="Lung-field run (lungxray train-lungs) for the shortcut audit.")
    ] = None,
) -> None:
    """Metrics with 95% CIs at the validation-chosen threshold, figures and report.html."""
    from lungxray.evaluation.evaluate import evaluate_run, render_summary

    result = evaluate_run(run, data=data, split=split, n_boot=bootstrap, progress=not quiet, lungs=lungs)
    render_summary(result, console)


@app.command()
def compare(
    runs: Annotated[list[str], typer.Argument(help="Run directories (evaluated).")],
    split: Annotated[str, Opt(help="Which evaluation to compare.")] = "test",
    out: Annotated[str | None, Opt(help="Folder for the comparison table and figure.")] = None,
) -> None:
    """Compare runs: headline metrics, parameters and training time, F1/AUC vs time, and paired AUC differences."""
    from lungxray.evaluation.compare import compare_runs, render_comparison

    render_comparison(compare_runs(runs, split=split, out=out), console)


@app.command()
def predict(
    run: Annotated[str, typer.Argument(help="Run directory.")],
    inputs: Annotated[list[str], typer.Argument(help="Image files or folders.")],
    out: Annotated[str | None, Opt(help="Write results to a .csv (streamed, resumable) or .json file.")] = None,
    heatmaps: Annotated[str | None, Opt(help="Also write Grad-CAM overlays to this folder.")] = None,
    batch_size: Annotated[int, Opt(help="Images per forward pass.")] = 32,
    workers: Annotated[
        int | None, Opt(help="Decoding processes for a streamed .csv (0: this process; default 1 from 2,500 files).")
    ] = None,
    resume: Annotated[bool, Opt(help="Skip files already in --out (.csv) or its .partial file.")] = False,
) -> None:
    """Predict new X-rays; bad files get a row with the reason; exit code 1 if any failed."""
    from lungxray.predict import Predictor

    predictor = Predictor.load(run)
    writer = None
    if heatmaps:
        from lungxray.explain import HeatmapWriter

        writer = HeatmapWriter(predictor, heatmaps)
    paths = predictor.expand_inputs(inputs)
    if out and (Path(out).suffix.lower() == ".csv" or int(os.environ.get("WORLD_SIZE", "1")) > 1):
        from lungxray.predict_shard import predict_to_file  # streamed .csv; under torchrun, sharded

        failed = predict_to_file(predictor, paths, out, heatmaps=writer, batch_size=batch_size, workers=workers,
                                 resume=resume, console=console, err=err)  # fmt: skip
        if failed is None:  # a torchrun rank other than 0: rank 0 reports
            return
    else:
        if resume:
            from lungxray.errors import ConfigError

            raise ConfigError("--resume needs --out FILE.csv (a streamed CSV output to continue).")
        from lungxray.predict_output import predict_in_memory

        failed = predict_in_memory(predictor, paths, out, writer, batch_size, console)
    console.print(f"[dim]{DISCLAIMER}[/]")
    if failed:
        raise typer.Exit(1)


@app.command()
def bench(
    data: Annotated[str, typer.Argument(help="Data folder (e.g. ../shared/data/chest_xray).")],
    quick: Annotated[bool, Opt(help="A 1-2 minute CPU run: small subsets, short timings.")] = False,
    config: Annotated[str | None, Opt(help="Training recipe (default configs/cpu-default.yaml).")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print the figures as JSON instead of a table.")] = False,
    threads: Annotated[int | None, Opt(help="torch threads (1 is steadier on a shared CPU).")] = None,
) -> None:
    """Cache build, training (fast paths on/off), prediction (torch vs ONNX), Grad-CAM and server figures."""
    from lungxray.bench import render_bench, run_bench

    result = run_bench(data, quick=quick, config=config, threads=threads, log=None if as_json else err.print)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        render_bench(result, console)


@app.command()
def explain(
    run: Annotated[str, typer.Argument(help="Run directory.")],
    images: Annotated[list[str], typer.Argument(help="Image files.")],
    out: Annotated[str, Opt(help="Folder for heatmap overlays and the grid figure.")] = "explanations",
    method: Annotated[str, Opt(help="gradcam | gradcam++.")] = "gradcam",
    target: Annotated[
        str | None, Opt(help="Class to explain (default: the predicted / positive class).")
    ] = None,
    layer: Annotated[str | None, Opt(help="Override the target layer (dotted module name).")] = None,
) -> None:
    """Grad-CAM heatmaps: where the model looked. Writes overlays and a grid figure."""
    from lungxray.explain import explain_files

    written = explain_files(run, images, out, method=method, target=target, layer=layer)
    for path in written:
        console.print(escape(str(path)))


@app.command()
def export(
    run: Annotated[str, typer.Argument(help="Run directory.")],
    out: Annotated[str | None, Opt(help="ONNX file (default RUN/model.onnx).")] = None,
) -> None:
    """Export to ONNX and check parity with PyTorch."""
    from lungxray.export import export_onnx

    report = export_onnx(run, out)
    console.print(report)


@app.command("upgrade-run")
def upgrade_run(
    run: Annotated[str, typer.Argument(help="Run directory written by an older lungxray.")],
) -> None:
    """Rewrite an old run's model.json in the current format (the old file is kept as model.v1.json)."""
    from lungxray.runcard import upgrade_run as upgrade

    if upgrade(run):
        console.print(f"upgraded {escape(str(run))}/model.json (the original is model.v1.json)")
    else:
        console.print(f"{escape(str(run))}/model.json is already current; nothing to do")


@app.command()
def serve(
    run: Annotated[str, typer.Argument(help="Run directory.")],
    host: Annotated[str, Opt(help="Bind address (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, Opt(help="Port.")] = 8000,
    api_key: Annotated[
        str | None, Opt(envvar="LUNGXRAY_API_KEY", help="Require this key (>= 16 chars) on /api/*.")
    ] = None,
    api_key_file: Annotated[str | None, Opt(help="Read the key from this file (first line).")] = None,
    insecure: Annotated[bool, Opt(help="Allow a non-loopback bind without a key.")] = False,
    allowed_host: Annotated[
        list[str] | None, Opt(help="Extra Host name the server answers to (e.g. the proxy's); repeatable.")
    ] = None,
    max_upload_mb: Annotated[float, Opt(help="Largest upload accepted (MB).")] = 20.0,
    workers: Annotated[int, Opt(help="Inference threads.")] = 1,
) -> None:
    """Web page and REST API for one run (decision support, not diagnosis). See docs/serving.md."""
    from lungxray.serve.app import run_server

    run_server(
        run,
        host=host,
        port=port,
        api_key=api_key,
        api_key_file=api_key_file,
        insecure=insecure,
        allowed_hosts=allowed_host or (),
        max_upload_mb=max_upload_mb,
        workers=workers,
    )


@app.command()
def tune(
    data: Annotated[str, typer.Argument(help="Data folder.")],
    config: Annotated[str | None, Opt("--config", "-c", help="Base YAML recipe.")] = None,
    space: Annotated[str, Opt(help="Search-space YAML.")] = "configs/space-cpu.yaml",
    trials: Annotated[int, Opt(help="Number of trials.")] = 20,
    timeout: Annotated[float | None, Opt(help="Stop after this many seconds.")] = None,
    study: Annotated[str, Opt(help="Study name (resumes if it exists in --storage).")] = "lungxray",
    storage: Annotated[str | None, Opt(help="Optuna storage, e.g. sqlite:///tune.db.")] = None,
    out: Annotated[str, Opt(help="Folder for trials.csv, figures and best.yaml.")] = "tune",
    pruner: Annotated[str, Opt(help="median | hyperband | none.")] = "median",
    metric: Annotated[str, Opt(help="Validation objective: auc | loss | accuracy | f1.")] = "auc",
) -> None:
    """Optuna search over config fields, scored on the VALIDATION split only."""
    from lungxray.tune import tune as run_tune

    result = run_tune(
        data,
        config=config,
        space=space,
        trials=trials,
        timeout=timeout,
        study_name=study,
        storage=storage,
        out=out,
        pruner=pruner,
        metric=metric,
        console=console,
    )
    console.print(f"[green]best config written to {escape(str(result['best_config']))}[/]")


@app.command("train-lungs")
def train_lungs(
    data: Annotated[str, typer.Argument(help="lung_masks folder (index.csv: image, mask, source, finding).")],
    out: Annotated[str, Opt(help="Run directory to write.")] = "runs/lungs",
    size: Annotated[int, Opt(help="Input side in pixels.")] = 128,
    epochs: Annotated[int, Opt(help="Epochs.")] = 20,
    seed: Annotated[int, Opt(help="Random seed.")] = 0,
    threads: Annotated[int, Opt(help="CPU threads (1 is fastest on a shared machine).")] = 1,
) -> None:
    """Train the lung-field U-Net (for the shortcut audit); prints held-out Dice per source."""
    from lungxray.segmentation import train_lung_model

    r = train_lung_model(data, out, size=size, epochs=epochs, seed=seed, threads=threads, log=console.print)
    console.print(json.dumps({"run": str(r.run_dir), "heldout_dice": r.heldout_dice, "seconds": round(r.seconds)}))


@app.command("train-gate")
def train_gate_cmd(
    inside: Annotated[str, typer.Argument(help="The training population's data folder (its test split is left out).")],
    outside: Annotated[list[str], Opt(help="A folder of films from another population (repeatable).")],
    out: Annotated[str, Opt(help="Gate run directory to write.")] = "runs/gate",
    epochs: Annotated[int | None, Opt(help="Epochs (default 6).")] = None,
    seed: Annotated[int, Opt(help="Random seed.")] = 0,
    threads: Annotated[int | None, Opt(help="CPU threads (1 is fastest on a shared machine).")] = None,
) -> None:
    """Train a population gate: the population's films vs other populations' (docs/gate.md)."""
    from lungxray.training.gate import train_gate

    over = {"train.seed": seed, **({"train.epochs": epochs} if epochs else {}), **({"train.threads": threads} if threads else {})}
    run = train_gate(inside, outside, out, overrides=over, progress=True)
    console.print(f"gate written to {run}; attach it with `lungxray attach-gate RUN --gate {run}`")


@app.command("attach-gate")
def attach_gate_cmd(
    run: Annotated[str, typer.Argument(help="Classifier run directory.")],
    gate: Annotated[str, Opt(help="Gate run directory (lungxray train-gate).")],
) -> None:
    """Attach a population gate to a run (RUN/gate/): predict, serve and evaluate then flag its outsiders."""
    from lungxray.gate import attach_gate

    record = attach_gate(gate, run)
    console.print(f"gate attached to {run} (threshold {record['threshold']:.3f}, {record['strategy']}); "
                  "the classifier's own files are unchanged")  # fmt: skip


@app.command("audit-shortcuts")
def audit_shortcuts(
    run: Annotated[str, typer.Argument(help="Classifier run directory.")],
    lungs: Annotated[str | None, Opt(help="Lung-field run (lungxray train-lungs).")] = None,
    data: Annotated[str | None, Opt(help="Data folder or lung_masks folder (default: the run's data).")] = None,
    split: Annotated[str, Opt(help="Split to audit.")] = "test",
    max_images: Annotated[int | None, Opt(help="Seeded subsample of the images.")] = None,
    bootstrap: Annotated[int, Opt(help="Bootstrap resamples for the AUC CIs.")] = 200,
) -> None:
    """Grad-CAM mass inside / outside the lung fields and AUC with the lungs blanked; prints JSON."""
    from lungxray.evaluation.shortcut import audit_shortcuts as run_audit
    from lungxray.evaluation.shortcut import load_audit_set

    x, y, paths, _ = load_audit_set(run, data, split, max_images=max_images)
    console.print_json(json.dumps(run_audit(run, lungs, x, y, paths, n_boot=bootstrap)))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Library warnings (a skipped file, an undefined metric) as one line, not a source excerpt."""
    err.print(f"[yellow]warning:[/] {escape(str(message))}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning LungXrayError into a one-line message and exit code 2."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        _run(argv)


def _run(argv: list[str] | None) -> None:
    try:
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except LungXrayError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # click usage errors print themselves
        code = _usage_error(exc)
        if code is None:
            raise
        sys.exit(code)


def _usage_error(exc: Exception) -> int | None:
    """Print a click usage error and return its exit code; None for any other exception.

    Matched by class name along the MRO: recent typer (0.29 here) raises its vendored click's exceptions
    (``typer._click``), which are not ``click.exceptions.ClickException`` subclasses.
    """
    for base in type(exc).__mro__:
        if base.__name__ == "ClickException":
            exc.show()  # type: ignore[attr-defined]
            return int(exc.exit_code)  # type: ignore[attr-defined]
        if base.__name__ == "Abort":
            return 1
    return None


if __name__ == "__main__":
    main()
