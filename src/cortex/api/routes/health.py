"""Liveness: answers as soon as the server accepts requests."""

from __future__ import annotations

import os

from fastapi import APIRouter, Request

from cortex import __version__
from cortex.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz(request: Request) -> Health:
    return Health(pid=os.getpid(), version=__version__, data_folder=request.app.state.folder_id)
