"""`/v1/hardware`: the machine and the code each engine runs on it (cortex.cpp has the same route)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from cortex.hardware import hardware_report
from cortex.schemas import Hardware

router = APIRouter(tags=["hardware"])


@router.get("/v1/hardware", response_model=Hardware, summary="CPU, memory and the engines' code paths")
async def get_hardware() -> Hardware:
    return await asyncio.to_thread(hardware_report)
