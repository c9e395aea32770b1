"""cortex: a local, OpenAI-compatible model server."""

__version__ = "0.1.0"
