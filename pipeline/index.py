"""Index stage: dataset directory or manifest -> the clips table (plain dict rows)."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.config import IndexConfig
from pipeline.datasets import IndexResult, get_adapter
from pipeline.errors import LayoutError

__all__ = ["index_dataset"]

logger = logging.getLogger(__name__)


def index_dataset(path: str | Path, cfg: IndexConfig) -> IndexResult:
    """Run the adapter for `path`, sort clips by clip_id, apply `cfg.limit`.

    Raises LayoutError (fatal) when the layout is not recognised; bad rows come back
    as rejects with stage "index".
    """
    try:
        result = get_adapter(cfg.dataset, Path(path))(Path(path), cfg)
    except LayoutError as e:
        root = _dfew_root_above(Path(path))
        if root is None:
            raise
        raise LayoutError(f"{path} is a folder inside a DFEW copy, not the copy itself: did you mean {root}/? "
                          "(the folder that holds Annotation/, EmoLabel_DataSplit/ and Clip/)") from e
    result.clips.sort(key=lambda c: c["clip_id"])
    if cfg.limit:
        result.clips = result.clips[: cfg.limit]
    logger.info(
        "indexed %s: %d clips, %d rejected rows, %d files without annotation",
        path, len(result.clips), len(result.rejects), len(result.unannotated),
    )
    return result


def _dfew_root_above(path: Path) -> str | None:
    """The nearest folder above `path` (up to 3 levels: dfew/Clip/original/00001.mp4) that looks like a DFEW
    copy (it holds Annotation/ or EmoLabel_DataSplit/ beside Clip/), spelled as the user spelled `path`."""
    spelled = Path(str(path).rstrip("/") or "/")
    for up in range(1, 4):
        parent = spelled.parents[up - 1] if up <= len(spelled.parents) else None
        if parent is None:
            return None
        names = {c.name.lower() for c in parent.iterdir()} if parent.is_dir() else set()
        if names & {"annotation", "emolabel_datasplit"} and "clip" in names:
            return str(parent)
    return None
