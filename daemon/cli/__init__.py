"""`llmtune-companion`: one module per command group, assembled in main.py."""

from .main import main

__all__ = ["main"]
