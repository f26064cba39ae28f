"""inspect: look at the shards before spending GPU weeks on them.

A contact sheet (random clips: frames in a row, the soft label as bars beside them; mixed
samples next to their two sources with lam), a stats figure (class distribution, vote-entropy
histogram: how ambiguous the data is, face-detection rate, rejects by stage) and a text
summary. Reads only what build-shards and mix-offline wrote.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.datasets.records import sample_key
from pipeline.format import CLIPS_NAME, MIXED_DIR, REJECTS_NAME, mixed_indexes, resolve_inside
from pipeline.read import SampleReader, open_index

__all__ = ["inspect_shards"]

logger = logging.getLogger(__name__)


def _entropy(soft: np.ndarray) -> np.ndarray:
    """Vote entropy in bits per clip: 0 = unanimous, log2(7) = 2.81 = votes spread evenly."""
    p = np.clip(soft, 1e-12, 1)
    return -(soft * np.log2(p)).sum(axis=1)


def _printable(text: str) -> str:
    """A title with control characters escaped (a clip id may hold a tab): no font has a glyph for them."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _frames_row(frames: np.ndarray, per_row: int) -> np.ndarray:
    idx = np.linspace(0, len(frames) - 1, per_row).round().astype(int)
    return np.concatenate(list(frames[idx]), axis=1)


def inspect_shards(shards: str | Path, png: str | Path, clips: int = 6, seed: int = 0,
                   frames_per_row: int = 8) -> dict[str, Any]:
    """Write <png> (contact sheet) and <png stem>-stats.png; return the text summary as a dict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyarrow.parquet as pq

    shards, png = Path(shards), Path(png)
    index = open_index(shards)
    classes = list(index["classes"])
    table = pq.read_table(shards / CLIPS_NAME).to_pylist()
    written = [c for c in table if c["status"] == "written"]
    rejects = pq.read_table(shards / REJECTS_NAME).to_pylist() if (shards / REJECTS_NAME).exists() else []
    rng = np.random.default_rng(seed)
    reader = SampleReader(shards, index)
    picks = [written[i]["clip_id"] for i in sorted(rng.choice(len(written), min(clips, len(written)), replace=False))]

    mixed: list[tuple[str, SampleReader]] = []
    for fold_index in mixed_indexes(shards):
        resolve_inside(shards, fold_index.relative_to(shards).as_posix(), shards / MIXED_DIR,
                       f"the folder {fold_index.parent.name}",
                       "remove that symlink; mixed folds live inside the shards")
        mreader = SampleReader(fold_index.parent, open_index(fold_index.parent))
        keys = mreader.keys()
        if keys:
            mixed.append((keys[int(rng.integers(len(keys)))], mreader))
    mixed = mixed[:2]

    rows = len(picks) + 3 * len(mixed)
    fig, axes = plt.subplots(rows, 2, figsize=(frames_per_row * 1.2 + 3, 1.25 * rows + 0.6),
                             gridspec_kw={"width_ratios": [frames_per_row, 2.2]}, squeeze=False)
    fig.suptitle(f"{shards}: {len(picks)} random clips" + (f", {len(mixed)} mixed samples with their sources"
                                                           if mixed else ""), fontsize=10)

    def show(r: int, frames: np.ndarray, soft: np.ndarray, title: str) -> None:
        axes[r, 0].imshow(_frames_row(frames, frames_per_row))
        axes[r, 0].set_xticks([])
        axes[r, 0].set_yticks([])
        axes[r, 0].set_title(_printable(title), fontsize=7, loc="left")
        axes[r, 0].set_xlabel(f"{frames_per_row} of {len(frames)} frames, in time order", fontsize=6, labelpad=1)
        axes[r, 0].set_ylabel("face crop", fontsize=6)
        axes[r, 1].barh(range(len(classes)), soft, color="tab:blue")
        axes[r, 1].set_xlim(0, 1)
        axes[r, 1].set_yticks(range(len(classes)), classes, fontsize=6)
        axes[r, 1].invert_yaxis()
        axes[r, 1].tick_params(axis="x", labelsize=6)
        axes[r, 1].set_xlabel("soft label (share of votes)", fontsize=6, labelpad=1)
        axes[r, 1].set_ylabel("class", fontsize=6)

    r = 0
    for cid in picks:
        frames, soft, meta = reader.read(sample_key(cid))
        label = classes[meta["label"]] if meta.get("label", -1) >= 0 else "no single label"
        show(r, frames, soft, f"{cid}  part {meta['part']}  {label}  votes {meta.get('votes')}")
        r += 1
    for key, mreader in mixed:
        frames, soft, meta = mreader.read(key)
        (a, wa), (b, wb) = [(s["clip_id"], s["weight"]) for s in meta["sources"]]
        show(r, frames, soft, f"mixed {key}  fold {meta['fold']}  lam {meta['lam']:.3f}")
        for src, w in ((a, wa), (b, wb)):
            r += 1
            f2, s2, _ = reader.read(sample_key(src))
            show(r, f2, s2, f"  source {src}  weight {w:.3f}")
        r += 1
    fig.tight_layout()
    panels = _panel_labels("contact sheet", fig)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)

    soft_all = np.array([c["soft"] for c in written], dtype=np.float64)
    ent = _entropy(soft_all)
    labels = np.array([c["label"] for c in written])
    tried = np.array([c["face_tried"] or 0 for c in written], dtype=np.float64)
    found = np.array([c["face_frames"] or 0 for c in written], dtype=np.float64)
    # clips rejected for no face had a face in none of their frames: rate 0, not left out
    no_face = sum(1 for rj in rejects if rj["stage"] == "align" and "no face" in (rj["error"] or ""))
    rate = np.concatenate([np.divide(found, tried, out=np.ones_like(found), where=tried > 0), np.zeros(no_face)])
    stages: dict[str, int] = {}
    for rj in rejects:
        stages[rj["stage"]] = stages.get(rj["stage"], 0) + 1

    fig, ax = plt.subplots(2, 2, figsize=(10, 7))
    counts = [int((labels == k).sum()) for k in range(len(classes))] + [int((labels < 0).sum())]
    ax[0, 0].bar(classes + ["none"], counts, color="tab:blue")
    ax[0, 0].set_title("clips per label (none = not single-labelled)", fontsize=9)
    ax[0, 0].tick_params(axis="x", labelsize=7, rotation=30)
    ax[0, 0].set(xlabel="label", ylabel="clips written")
    ax[0, 1].hist(ent, bins=20, range=(0, np.log2(len(classes))), color="tab:orange")
    ax[0, 1].set_title("vote entropy (bits): 0 = unanimous", fontsize=9)
    ax[0, 1].set(xlabel="vote entropy (bits)", ylabel="clips written")
    ax[1, 0].hist(rate, bins=10, range=(0, 1), color="tab:green")
    ax[1, 0].set_title(f"face-detection rate per clip ({no_face} rejected for no face count as 0)", fontsize=9)
    ax[1, 0].set(xlabel="frames with a face / frames tried", ylabel="clips")
    ax[1, 1].bar(["written"] + list(stages), [len(written)] + list(stages.values()), color="tab:red")
    ax[1, 1].set_title("clips written and rejected by stage", fontsize=9)
    ax[1, 1].set(xlabel="outcome (rejected at stage)", ylabel="clips")
    fig.tight_layout()
    panels += _panel_labels("stats", fig)
    stats_png = png.with_name(png.stem + "-stats.png")
    fig.savefig(stats_png, dpi=100)
    plt.close(fig)

    return {"shards": str(shards), "contact_sheet": str(png), "stats": str(stats_png), "clips": len(table),
            "written": len(written), "rejected_by_stage": stages,
            "labels": dict(zip(classes + ["none"], counts, strict=True)),
            "vote_entropy_bits": {"mean": float(ent.mean()), "median": float(np.median(ent)),
                                  "unanimous": int((ent < 1e-9).sum())},
            "face_detection_rate": {"mean": float(rate.mean()), "min": float(rate.min()),
                                    "clips": int(rate.size), "rejected_no_face": no_face},
            "mixed_folds": len(mixed), "sample": index["sample"], "panels": panels}


def _panel_labels(figure: str, fig: Any) -> list[dict[str, str]]:
    """Each panel's title and axis labels (the --json summary lists them; a panel without is a bug)."""
    return [{"figure": figure, "title": a.get_title(loc="left") or a.get_title(), "x": a.get_xlabel(),
             "y": a.get_ylabel()} for a in fig.axes]
