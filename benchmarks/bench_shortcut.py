"""The shortcut audit's "before" figures: a classifier run audited on the Kermany test split and on
lung_masks' adult normal films, plus the lung model's by-eye gallery on pediatric films.

    PYTHONPATH=src python benchmarks/bench_shortcut.py RUN LUNG_RUN [--data ../shared/data] \
        [--out benchmarks/results/shortcut.json] [--gallery /tmp/lungs-gallery.png] [--boot 200]

The gallery is written outside the repository by default (patient images are not committed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def _brief(d: dict) -> dict:
    cm, oc = d.get("cam_mass", {}), d.get("occlusion", {})
    return {
        "n": d.get("n"),
        "lung_area": d.get("lung_area"),
        "cam_in_lungs": cm.get("lungs", {}).get("mass"),
        "cam_bottom": cm.get("bottom", {}).get("mass"),
        "cam_bottom_ratio": cm.get("bottom", {}).get("ratio"),
        **{f"auc_{c}": oc.get(c, {}).get("auc") for c in ("plain", "lungs_blanked", "only_lungs")},
        **{f"positive_rate_{c}": oc.get(c, {}).get("positive_rate") for c in ("plain", "lungs_blanked", "only_lungs")},
    }


def main() -> None:
    from lungxray.data.imageio import read_image
    from lungxray.data.preprocess import to_model_input
    from lungxray.evaluation.shortcut import audit_shortcuts, load_audit_set
    from lungxray.segmentation import dice, load_lung_model, predict_lung_masks
    from lungxray.segmentation.gallery import mask_gallery

    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("lungs")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--out", default="benchmarks/results/shortcut.json")
    ap.add_argument("--gallery", default="/tmp/lungs-gallery.png")
    ap.add_argument("--boot", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    data = Path(a.data)
    lm = load_lung_model(a.lungs)
    results: dict = {"run": a.run, "lungs": a.lungs, "lung_model": lm.card.training.best_val}

    # by-eye gallery: 6 normal + 6 pneumonia Kermany test films (seeded), masks at 256 px
    rng = np.random.default_rng(0)
    files = []
    for cls in ("NORMAL", "PNEUMONIA"):
        pool = sorted((data / "chest_xray" / "test" / cls).glob("*.jpeg"))
        files += [pool[i] for i in sorted(rng.choice(len(pool), 6, replace=False))]
    imgs = np.stack([to_model_input(read_image(f), 256) for f in files])
    masks = predict_lung_masks(lm, imgs)
    mask_gallery(imgs, masks, [f.name for f in files]).savefig(a.gallery)
    results["gallery_lung_area"] = [round(float(m.mean()), 3) for m in masks]

    t = time.time()
    x, y, paths, _ = load_audit_set(a.run, data / "chest_xray", "test")
    k = audit_shortcuts(a.run, lm, x, y, paths, n_boot=a.boot)
    results["kermany_test"] = {"brief": _brief(k["shortcut"]), **k, "seconds": round(time.time() - t)}
    print(json.dumps(results["kermany_test"]["brief"]), flush=True)

    t = time.time()
    x, y, paths, gt = load_audit_set(a.run, data / "lung_masks")
    o = audit_shortcuts(a.run, lm, x, y, paths, n_boot=a.boot)
    og = audit_shortcuts(a.run, None, x, y, paths, lungs=gt, n_boot=a.boot)
    pred = predict_lung_masks(lm, x)
    results["openist_normal"] = {"brief": _brief(o["shortcut"]), **o, "seconds": round(time.time() - t)}
    results["openist_normal_truth_masks"] = {"brief": _brief(og["shortcut"]), **og}
    results["openist_mask_dice_at_run_size"] = float(dice(pred, gt).mean())
    print(json.dumps(results["openist_normal"]["brief"]), flush=True)
    print(json.dumps(results["openist_normal_truth_masks"]["brief"]), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2, allow_nan=True) + "\n")
    print(f"wrote {a.out} and {a.gallery}")


if __name__ == "__main__":
    main()
