"""Serving cortex beyond one process: on Ray Serve (`cortex serve-ray`, the optional `cortex[ray]` extra)."""
