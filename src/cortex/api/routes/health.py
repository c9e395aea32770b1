"""Liveness: answers as soon as the server accepts requests."""

from __future__ import annotations

import os

from fastapi import APIRouter

from cortex import __version__

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok", "pid": os.getpid(), "version": __version__}
