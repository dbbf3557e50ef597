"""`lungxray train` and `lungxray audit` through the CLI entry point: exit codes, output, no tracebacks.

Other verbs are tested beside their modules. ``main(argv)`` is the console script's entry point.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import CHEST_XRAY, DATA_ROOT, require_data  # noqa: E402
from lungxray.cli import main
from lungxray.runcard import RunCard

COVID = DATA_ROOT / "covid19"


def flat(text: str) -> str:
    """Undo rich's line wrapping, so a message can be searched for."""
    return " ".join(text.split())


def run_cli(argv: list[str]) -> int:
    """Run the CLI in-process; the exit code (0 when it returns normally)."""
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def covid_subset(tmp_path_factory) -> Path:
    """covid19 with 6 images per class and split (its folder layout kept)."""
    src = require_data(COVID)
    root = tmp_path_factory.mktemp("covid")
    for split in ("train", "test"):
        for cls_dir in sorted((src / split).iterdir()):
            dst = root / split / cls_dir.name
            dst.mkdir(parents=True)
            for f in sorted(cls_dir.iterdir())[:6]:
                shutil.copy(f, dst / f.name)
    return root


def test_train_writes_a_run(tmp_path, cache_dir, capsys):
    require_data()
    out = tmp_path / "run"
    code = run_cli(
        [
            "train", str(CHEST_XRAY), "--max-images", "60", "--epochs", "1", "--size", "32",
            "--batch-size", "16", "--out", str(out), "--quiet",
            "--set", f"data.cache_dir={cache_dir}", "--set", "model.kwargs={width: 8}",
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    for f in ("config.yaml", "model.safetensors", "model.json", "splits.csv", "history.csv"):
        assert (out / f).is_file(), f
    assert "run written to" in flat(captured.out)
    assert str(out) in captured.out.replace("\n", "")  # rich may break a long path anywhere
    card = RunCard.read(out)
    assert card.input_size == 32 and card.model_kwargs == {"width": 8}
    # a second train into the finished run is refused, without a traceback
    code = run_cli(["train", str(CHEST_XRAY), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "already holds a finished run" in flat(err) and "Traceback" not in err


def test_train_on_missing_folder_exits_2_without_traceback(tmp_path, capsys):
    code = run_cli(["train", str(tmp_path / "nope"), "--out", str(tmp_path / "run"), "--quiet"])
    captured = capsys.readouterr()
    assert code == 2
    assert "error:" in captured.err and str(tmp_path / "nope") in captured.err.replace("\n", "")
    assert "Traceback" not in captured.err + captured.out
    assert not (tmp_path / "run" / "model.json").exists()


def test_train_without_data_exits_2(capsys):
    assert run_cli(["train", "--quiet"]) == 2
    assert "no data" in flat(capsys.readouterr().err)


@pytest.mark.parametrize(
    "item, needle",
    [
        ("train.lrr=0.1", "Did you mean 'lr'"),
        ("train.optimizer=adamx", "Did you mean 'adam"),
        ("train.lr", "KEY=VALUE"),
    ],
)
def test_bad_set_exits_2_with_a_hint(tmp_path, capsys, item, needle):
    code = run_cli(["train", str(tmp_path), "--set", item, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert needle in flat(err) and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["calibrate", "--bogus"], "No such option: --bogus"),
        (["nosuchverb"], "No such command 'nosuchverb'"),
        (["calibrate", "some-run", "--unlabeled"], "--unlabeled needs --data"),
    ],
)
def test_usage_errors_exit_2_with_the_message_and_no_traceback(capsys, argv, needle):
    """Recent typer (0.29 here) raises its own vendored click's exceptions; they must print as usage errors."""
    code = run_cli(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    assert needle in flat(captured.err) and "Traceback" not in captured.out + captured.err


def test_audit_json(covid_subset, cache_dir, capsys):
    code = run_cli(["audit", str(covid_subset), "--json", "--cache-dir", str(cache_dir)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)  # stdout is one JSON document, nothing else
    for key in ("counts", "unreadable", "duplicates_across_splits", "patients_across_splits"):
        assert key in report
    assert report["counts"]["train"] == {"Normal": 6, "Covid": 6, "Viral Pneumonia": 6}
    assert report["counts"]["test"] == {"Normal": 6, "Covid": 6, "Viral Pneumonia": 6}
    assert report["unreadable"] == []
    assert report["task"] == "multiclass"


def test_audit_reports_unreadable_files(tmp_path, covid_subset, cache_dir, capsys):
    root = tmp_path / "data"
    shutil.copytree(covid_subset / "train", root)
    (root / "Covid" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code = run_cli(["audit", str(root), "--json", "--cache-dir", str(cache_dir)])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [Path(u["path"]).name for u in report["unreadable"]] == ["broken.png"]


def test_audit_bad_path_exits_2_without_traceback(tmp_path, capsys):
    code = run_cli(["audit", str(tmp_path / "missing"), "--json"])
    captured = capsys.readouterr()
    assert code == 2
    assert "error:" in captured.err and "Traceback" not in captured.err + captured.out
    assert captured.out == ""


def test_version_and_help(capsys):
    assert run_cli(["--version"]) == 0
    assert "lungxray" in capsys.readouterr().out
    assert run_cli(["train", "--help"]) == 0
    assert "--max-images" in capsys.readouterr().out


# What the GPU machine lacks (and only serving, DICOM, tuning, tracking and Grad-CAM need): train and
# evaluate must run without them, so heavy runs can go where only torch and the science stack exist.
OPTIONAL_PACKAGES = (
    "pydicom",
    "optuna",
    "fastapi",
    "starlette",
    "uvicorn",
    "multipart",
    "mlflow",
    "pytorch_grad_cam",
)
WITHOUT_OPTIONAL = """
import importlib.abc, sys
blocked = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
sys.meta_path.insert(0, Block())
from lungxray.cli import main
for argv in (sys.argv[2].split("|"), sys.argv[3].split("|")):
    try:
        main(argv)
    except SystemExit as exc:
        if exc.code:
            raise
print("loaded:", sorted(m for m in sys.modules if m.partition(".")[0] in blocked))
"""


def test_train_and_evaluate_need_no_optional_package(tmp_path, cache_dir):
    import subprocess
    import sys

    require_data()
    out = tmp_path / "run"
    train = [
        "train", str(CHEST_XRAY), "--max-images", "60", "--epochs", "1", "--size", "32", "--quiet",
        "--out", str(out), "--set", f"data.cache_dir={cache_dir}", "--set", "model.kwargs={width: 8}",
    ]  # fmt: skip
    evaluate = ["evaluate", str(out), "--bootstrap", "50", "--quiet"]
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_OPTIONAL, ",".join(OPTIONAL_PACKAGES), "|".join(train), "|".join(evaluate)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loaded: []" in proc.stdout
    assert (out / "model.safetensors").is_file() and (out / "eval" / "test" / "report.html").is_file()


def test_calibrate_writes_a_new_run_and_leaves_the_original(tiny_run, tmp_path, capsys):
    before = (tiny_run / "model.json").read_bytes()
    out = tmp_path / "recal"
    code = run_cli(["calibrate", str(tiny_run), "--strategy", "max-f1", "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "run written to" in flat(captured.out) and "max-f1" in captured.out
    assert (tiny_run / "model.json").read_bytes() == before
    card = RunCard.read(out)
    assert [c.strategy for c in card.calibrations] == [RunCard.read(tiny_run).calibration.strategy, "max-f1"]
    code = run_cli(["calibrate", str(tiny_run), "--out", str(out), "--quiet"])  # never over a run
    err = capsys.readouterr().err
    assert code == 2 and "already exists" in flat(err) and "Traceback" not in err


def test_markup_in_a_file_name_does_not_abort_audit_or_train(tmp_path, cache_dir, capsys):
    """`a[/]b.png` (folder `a[`, file `]b.png`) is a rich closing tag: printed raw it raised MarkupError."""
    root = tmp_path / "data"
    for kind in ("NORMAL", "PNEUMONIA"):
        (root / kind).mkdir(parents=True)
        for f in sorted((require_data() / "train" / kind).glob("*.jpeg"))[:40]:
            shutil.copy(f, root / kind / f.name)
    (root / "NORMAL" / "a[").mkdir()
    (root / "NORMAL" / "a[" / "]b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # listed as unreadable
    code = run_cli(["audit", str(root), "--cache-dir", str(cache_dir)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "a[/]b.png" in "".join(captured.out.split())  # printed as it is (rich wraps lines)
    code = run_cli(
        [
            "train", str(root), "--epochs", "1", "--size", "32", "--batch-size", "16",
            "--out", str(tmp_path / "run"), "--quiet",
            "--set", f"data.cache_dir={cache_dir}", "--set", "model.kwargs={width: 8}",
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "a[/]b.png" in "".join(captured.out.split())  # printed as it is (rich wraps lines)
