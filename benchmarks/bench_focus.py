"""Per-image cost of the lung-focused pipeline vs the default, and a before/after gallery.

    PYTHONPATH=src python benchmarks/bench_focus.py --lungs runs/lungs --n 50 --gallery /tmp/focus.png

Decodes ``--n`` chest_xray test films once, then times (one torch thread, one process) the default
``to_model_input`` and the lung-crop pipeline (suppress markers + crop + CLAHE, the lung U-Net per
image) on the decoded images; decoding itself is timed too, since it is part of every row's cost.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from lungxray.data.imageio import read_image
from lungxray.data.preprocess import to_model_input
from lungxray.focus import Preprocessor, lungs_sha1
from lungxray.runcard import Preprocessing


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/chest_xray")
    ap.add_argument("--lungs", required=True)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--gallery", default=None, help="PNG of before/after crops (write it outside the repo)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    files = sorted(Path(a.data, "test", "PNEUMONIA").glob("*.jpeg"))[: a.n // 2]
    files += sorted(Path(a.data, "test", "NORMAL").glob("*.jpeg"))[: a.n - len(files)]
    t0 = time.perf_counter()
    imgs = [read_image(f) for f in files]
    t_decode = (time.perf_counter() - t0) / len(imgs)
    base = Preprocessing(input_size=a.size)
    focus = replace(base, crop="lungs", window="clahe", suppress_markers=True, lungs_sha1=lungs_sha1(a.lungs))
    pre = Preprocessor(focus, a.lungs)
    pre(imgs[0])  # load the lung model outside the timing
    t0 = time.perf_counter()
    for im in imgs:
        to_model_input(im, a.size)
    t_default = (time.perf_counter() - t0) / len(imgs)
    t0 = time.perf_counter()
    results = [pre.process(im) for im in imgs]
    t_focus = (time.perf_counter() - t0) / len(imgs)
    crop_only = Preprocessor(replace(base, crop="lungs", lungs_sha1=focus.lungs_sha1), a.lungs)
    t0 = time.perf_counter()
    for im in imgs:
        crop_only(im)
    t_crop = (time.perf_counter() - t0) / len(imgs)
    out = {
        "images": len(imgs),
        "size": a.size,
        "decode_ms": round(1e3 * t_decode, 1),
        "default_ms": round(1e3 * t_default, 2),
        "crop_ms": round(1e3 * t_crop, 1),
        "crop_clahe_markers_ms": round(1e3 * t_focus, 1),
        "ratio_row_crop": round((t_decode + t_crop) / (t_decode + t_default), 2),
        "ratio_row_full": round((t_decode + t_focus) / (t_decode + t_default), 2),
        "fallbacks": sum(r.lungs == "fallback" for r in results),
        "markers_removed": sum(r.markers for r in results),
        "box_area_mean": round(float(np.mean([(b[2] - b[0]) * (b[3] - b[1]) for r in results if (b := r.box)])), 3),
    }
    print(json.dumps(out))
    if a.gallery:
        _gallery(imgs, files, results, pre, a.gallery)


def _gallery(imgs, files, results, pre, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    picks = [i for i, r in enumerate(results) if r.markers][:2] + [0, len(imgs) - 1, len(imgs) // 2]
    picks = list(dict.fromkeys(picks))[:4]
    fig, axes = plt.subplots(2, len(picks), figsize=(3.2 * len(picks), 6.6))
    for col, i in enumerate(picks):
        show = to_model_input(imgs[i], 256)
        axes[0, col].imshow(show, cmap="gray", vmin=0, vmax=255)
        if (b := results[i].box) is not None:
            axes[0, col].add_patch(Rectangle((b[1] * 256, b[0] * 256), (b[3] - b[1]) * 256, (b[2] - b[0]) * 256,
                                             fill=False, edgecolor="lime", linewidth=1.5))  # fmt: skip
        axes[0, col].set_title(f"{files[i].name[:26]}\nbefore (default)", fontsize=8)
        axes[1, col].imshow(pre(imgs[i], 256), cmap="gray", vmin=0, vmax=255)
        axes[1, col].set_title(f"after: {results[i].lungs}, {results[i].markers} marker(s)", fontsize=8)
        for ax in axes[:, col]:
            ax.axis("off")
    fig.suptitle("lung crop + marker suppression + CLAHE (green: crop box)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"gallery: {path}")


if __name__ == "__main__":
    main()
