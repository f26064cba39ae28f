"""Index stage: dataset directory or manifest -> the clips table (plain dict rows)."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.config import IndexConfig
from pipeline.datasets import IndexResult, get_adapter

__all__ = ["index_dataset"]

logger = logging.getLogger(__name__)


def index_dataset(path: str | Path, cfg: IndexConfig) -> IndexResult:
    """Run the adapter for `path`, sort clips by clip_id, apply `cfg.limit`.

    Raises LayoutError (fatal) when the layout is not recognised; bad rows come back
    as rejects with stage "index".
    """
    result = get_adapter(cfg.dataset, Path(path))(Path(path), cfg)
    result.clips.sort(key=lambda c: c["clip_id"])
    if cfg.limit:
        result.clips = result.clips[: cfg.limit]
    logger.info(
        "indexed %s: %d clips, %d rejected rows, %d files without annotation",
        path, len(result.clips), len(result.rejects), len(result.unannotated),
    )
    return result
