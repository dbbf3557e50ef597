"""Per-source (subgroup) metrics and leave-one-source-out configs; a tiny 2-source run end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lungxray.config import load_config
from lungxray.errors import ConfigError
from lungxray.evaluation.subgroups import by_source_section, leave_one_source_out, metrics_by_source
from multisource import make_two_sources


@pytest.mark.filterwarnings("ignore:binary_metrics. only one class")
def test_metrics_by_source_on_each_subset():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    scores = np.clip(y * 0.4 + rng.random(60) * 0.6, 0, 1)
    sources = ["a"] * 40 + ["b"] * 20
    out = metrics_by_source("binary", y, scores, ["N", "P"], sources, groups=[str(i) for i in range(60)],
                            threshold=0.5, n_boot=50)  # fmt: skip
    assert list(out) == ["a", "b"]
    assert out["a"]["n"] == 40 and out["b"]["n"] == 20 and out["b"]["n_patients"] == 20
    for k in ("auc", "sensitivity", "specificity"):
        assert set(out["a"][k]) == {"value", "ci_low", "ci_high"}
    one_class = metrics_by_source("binary", np.ones(4, int), np.full(4, 0.7), ["N", "P"], ["c"] * 4, n_boot=0)
    assert one_class["c"]["auc"]["value"] is None and one_class["c"]["sensitivity"]["value"] == 1.0
    assert "By data source" in by_source_section({"by_source": out}) and by_source_section({}) == ""


def test_leave_one_source_out_configs(tmp_path):
    cfg = load_config(None, {"name": "ms", "out": str(tmp_path / "ms"), "data.sources": [
        {"path": "/x/kermany"}, {"path": "/y/nih", "csv": "labels.csv"}]})  # fmt: skip
    pairs = leave_one_source_out(cfg)
    assert [held.source_name for held, _ in pairs] == ["kermany", "nih"]
    assert [[s.source_name for s in c.data.sources] for _, c in pairs] == [["nih"], ["kermany"]]
    assert pairs[0][1].name == "ms-without-kermany" and pairs[0][1].run_dir == tmp_path / "ms-without-kermany"
    with pytest.raises(ConfigError, match="two data.sources"):
        leave_one_source_out(load_config(None, {"data.sources": [{"path": "/x/a"}]}))


def test_two_source_run_reports_by_source(tmp_path, cache_dir):
    import torch

    from lungxray.evaluation.evaluate import evaluate_run
    from lungxray.training import train

    torch.set_num_threads(2)
    cfg = load_config(None, {
        "name": "ms", "out": str(tmp_path / "ms"), "data.sources": make_two_sources(tmp_path / "data"),
        "data.size": 32, "data.cache_dir": str(cache_dir), "train.epochs": 1, "train.batch_size": 32,
        "eval.bootstrap": 20,
    })  # fmt: skip
    train(cfg, progress=False)
    header = (tmp_path / "ms" / "splits.csv").read_text().splitlines()[0]
    assert header == "path,patient,split,label,source"
    result = evaluate_run(tmp_path / "ms", n_boot=20, progress=False, cache_dir=cache_dir)
    by = json.loads((result.out_dir / "metrics.json").read_text())["by_source"]
    assert set(by) == {"kermany", "nih"}
    assert by["kermany"]["n"] + by["nih"]["n"] == result.metrics["n"]
    assert by["kermany"]["n"] == 8 and "sensitivity" in by["nih"]
    assert "By data source" in result.report_path.read_text()
    predictions = (result.out_dir / "predictions.csv").read_text().splitlines()
    assert predictions[0].endswith(",correct,source") and predictions[-1].endswith(",nih")
    # an external --data set of a multi-source run is read as one plain source (no label_map, no by_source)
    ext = tmp_path / "ext"
    for k in ("NORMAL", "PNEUMONIA"):
        (ext / k).mkdir(parents=True)
        for f in sorted((tmp_path / "data" / "kermany" / "test" / k).iterdir())[:2]:
            (ext / k / f.name).symlink_to(f.resolve())
    external = evaluate_run(tmp_path / "ms", data=ext, n_boot=0, progress=False, cache_dir=cache_dir)
    assert external.metrics["n"] == 4 and "by_source" not in external.metrics
