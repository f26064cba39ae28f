"""The two kinds of failure: a clip that is rejected (the job goes on) and a fatal one."""

from __future__ import annotations

__all__ = ["ClipRejected", "LayoutError"]


class ClipRejected(Exception):
    """One clip cannot be processed; the orchestrator records it in rejects.parquet."""

    def __init__(self, clip_id: str, stage: str, reason: str) -> None:
        super().__init__(f"clip {clip_id} rejected at {stage}: {reason}")
        self.clip_id = clip_id
        self.stage = stage
        self.reason = reason


class LayoutError(ValueError):
    """The dataset directory or manifest is not recognised; fatal, raised before any work."""
