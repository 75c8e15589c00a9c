"""AWS Bedrock: converse.py translates (pure), backend.py talks to AWS through boto3 (threads)."""

from .backend import BedrockBackend, BedrockSettings

__all__ = ["BedrockBackend", "BedrockSettings"]
