"""llmtune-companion: a localhost daemon between IDE assistants and language models."""

__version__ = "0.1.0"
