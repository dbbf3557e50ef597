"""Markdown tables of one or more ``benchmarks/site_calibration.py`` results (one per model seed).

    python benchmarks/site_calibration_table.py benchmarks/results/site_calibration_cpu-default_seed*.json
"""

from __future__ import annotations

import json
import sys


def _c(d: dict) -> str:
    return f"{d['value']:.3f} [{d['low']:.3f}, {d['high']:.3f}]"


def _t(d: dict) -> str:
    return f"{d['estimate']:.3f} [{d['low']:.3f}, {d['high']:.3f}]"


def _rates(d: dict) -> str:
    return " | ".join(_c(d[m]) for m in ("sensitivity", "specificity", "accuracy"))


def tables(results: list[tuple[str, dict]]) -> str:
    out = ["### Cross-fitted site calibration, sensitivity >= 0.95 (Kermany test split)", "",
           "| seed | operating point | threshold | sensitivity | specificity | accuracy |",
           "|---|---|---|---|---|---|"]  # fmt: skip
    for seed, r in results:
        s = r["site"]
        lo = min(min(row) for row in s["thresholds"])
        hi = max(max(row) for row in s["thresholds"])
        out += [
            f"| {seed} | before: val threshold ({r['val_strategy']}) | {r['val_threshold']:.3f} | "
            f"{_rates(s['before'])} |",
            f"| {seed} | before: sensitivity>=0.95 chosen on val | {r['before']['new']['threshold']:.3f} | "
            f"{_rates(r['before']['new'])} |",
            f"| {seed} | after: site-calibrated, 2-fold cross-fitted | {lo:.3f}-{hi:.3f} | {_rates(s['site'])} |",
            f"| {seed} | ceiling (chosen on the evaluated half; reporting only) | | {_rates(s['ceiling'])} |",
        ]
        if "ceiling_whole" in s:
            w = s["ceiling_whole"]
            out.append(f"| {seed} | ceiling (one threshold chosen on the whole split; reporting only) | "
                       f"{w['threshold']:.3f} | {_rates(w)} |")  # fmt: skip
    out += ["", "### Against the number of labeled site images (cross-fitted, sensitivity >= 0.95)", "",
            "| seed | labeled | meets minimum | sensitivity | specificity | accuracy | ceiling specificity "
            "(halves / whole split) | sens. over repeats | spec. over repeats |",
            "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for seed, r in results:
        for row in r["curve"]:
            ps = row["per_seed"]
            sens = [p["sensitivity"] for p in ps]
            spec = [p["specificity"] for p in ps]
            cw = row.get("ceiling_whole")
            whole = f" / {cw['specificity']['value']:.3f}" if cw else ""
            out.append(
                f"| {seed} | {row['n_labeled']} | {'yes' if row['meets_minimum'] else 'no'} | {_rates(row['site'])} "
                f"| {row['ceiling']['specificity']['value']:.3f}{whole} | {min(sens):.3f}-{max(sens):.3f} | "
                f"{min(spec):.3f}-{max(spec):.3f} |"
            )
    out += ["", "### Prevalence from unlabeled images (EM after bias-corrected TS; BBSE check)", "",
            "| seed | split (true) | EM raw (prior 0.5) | EM after BCTS | BBSE |", "|---|---|---|---|---|"]  # fmt: skip
    for seed, r in results:
        p = r["prevalence"]
        out.append(f"| {seed} | test ({p['test']['true']:.3f}) | {_t(p['test']['em_raw'])} | "
                   f"{_t(p['test']['em_bcts'])} | {_t(p['test']['bbse'])} |")  # fmt: skip
        out.append(f"| {seed} | val ({p['val']['true']:.3f}) | {_t(p['val']['em_raw'])} | "
                   f"{_t(p['val']['em_bcts_crossfit'])} (cross-fitted) | {_t(p['val']['bbse_crossfit'])} |")  # fmt: skip
    out += ["", "### Set-level shift test (100 images vs the run's validation; alpha 0.01)", "",
            "| seed | lung_masks p | hannover_covid19 p | nih_sample p | val subsets fired (first 20) | "
            "val false-alarm rate (200) | Kermany test subsets fired (20) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for seed, r in results:
        sh = r["shift"]
        ext = [sh["external"].get(k) for k in ("lung_masks", "hannover_covid19", "nih_sample")]
        cells = [("n/a" if e is None else f"{e['p_value']:.1e} ({'fires' if e['fired'] else 'quiet'})") for e in ext]
        v = sh["val_subsets"]
        out.append(f"| {seed} | {' | '.join(cells)} | {v['first_20_fired']} of 20 | {v['false_alarm_rate']:.3f} | "
                   f"{sh['test_split_subsets']['fired']} of 20 |")  # fmt: skip
    return "\n".join(out)


if __name__ == "__main__":
    res = []
    for f in sys.argv[1:]:
        with open(f) as fh:
            r = json.load(fh)
        res.append((f.rsplit("seed", 1)[-1].split(".")[0] if "seed" in f else r["run"], r))
    print(tables(res))
