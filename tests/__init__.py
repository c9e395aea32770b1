"""cortex's tests: `unit/` runs in process and fast, `e2e/` starts real servers with real weights."""

from pathlib import Path

DATA = Path(__file__).parent / "data"  # reference vectors, each file says how it was made
