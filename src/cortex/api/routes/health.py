"""Liveness: answers as soon as the server accepts requests."""

from __future__ import annotations

import os

from fastapi import APIRouter, Request

from cortex import __version__

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(request: Request) -> dict:
    """`data_folder` is the served folder's id (`cortex.data_folder.folder_id`): the CLI acts on a server
    only if it serves the CLI's own folder, not the original of a copied one."""
    return {"status": "ok", "pid": os.getpid(), "version": __version__, "data_folder": request.app.state.folder_id}
