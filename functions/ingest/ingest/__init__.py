"""The ingest function: the HTTP API in front of the call store and the work queue."""

from ingest import fastapi_compat

# Before any route is declared: declaring one is what made FastAPI import pydantic.v1.
fastapi_compat.install()
