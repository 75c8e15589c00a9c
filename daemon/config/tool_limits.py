"""The size and time limits of the local tools: `[workspaces.NAME.limits]` in config.toml."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

KIB = 1024
MIB = 1024 * 1024


class ToolLimits(BaseModel):
    """Sizes and times of the local tools, per workspace."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_read_bytes: int = Field(256 * KIB, ge=1)
    max_write_bytes: int = Field(1 * MIB, ge=1)
    # Largest existing file a write may replace (its old content is kept for undo).
    max_backup_bytes: int = Field(64 * MIB, ge=0)
    list_default_depth: int = Field(1, ge=1, le=10)
    list_max_entries: int = Field(500, ge=1)
    command_timeout: float = Field(60.0, gt=0)
    output_head_bytes: int = Field(16 * KIB, ge=0)
    output_tail_bytes: int = Field(16 * KIB, ge=0)
    # Between SIGTERM and SIGKILL of the process group.
    kill_grace: float = Field(2.0, ge=0)
    # A diff longer than this is cut in results and previews.
    max_diff_bytes: int = Field(64 * KIB, ge=256)
