"""Dependencies shared by the routes, as Annotated aliases.

They are ``async def`` although they never wait: FastAPI runs a plain ``def`` dependency
in its threadpool, a thread hop per dependency per request for a few microseconds of work.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, Security
from fastapi.security import APIKeyHeader

from callcore.bootstrap import Ports
from callcore.domain.model import CALL_ID_PATTERN
from callcore.metrics import FunctionMetrics


async def get_ports(request: Request) -> Ports:
    ports: Ports = request.app.state.ports
    return ports


PortsDep = Annotated[Ports, Depends(get_ports)]


async def get_metrics(request: Request) -> FunctionMetrics:
    metrics: FunctionMetrics = request.app.state.metrics
    return metrics


MetricsDep = Annotated[FunctionMetrics, Depends(get_metrics)]

CallId = Annotated[
    str,
    Path(min_length=1, max_length=128, pattern=CALL_ID_PATTERN, description="1 to 128 characters of A-Za-z0-9._:-"),
]

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="Required when API_KEYS is set.")


async def require_api_key(ports: PortsDep, key: Annotated[str | None, Security(_api_key_header)]) -> None:
    keys = ports.settings.api_keys
    if not keys:
        return
    if key is None or not any(hmac.compare_digest(key.encode(), k.encode()) for k in keys):
        raise HTTPException(status_code=401, detail="missing or unknown X-API-Key header")
