"""Keep FastAPI from importing ``pydantic.v1``, which this app never uses.

FastAPI checks every model it meets (each route's body and response, at import; each
encoded object, at run time) against ``pydantic.v1.BaseModel``, and imports
``pydantic.v1`` to do so: 14 ms of a cold start, some 4% of the whole import of FastAPI,
Mangum, Pydantic and boto3. A class or object can only be a ``pydantic.v1`` model if
``pydantic.v1`` has been imported, so the checks below look for it in ``sys.modules``
first, and answer exactly as FastAPI's own would.
"""

from __future__ import annotations

import sys
from typing import Any

import fastapi._compat
import fastapi._compat.shared
import fastapi.encoders


def _loaded_v1() -> Any:
    return sys.modules.get("pydantic.v1")


def is_pydantic_v1_model_class(cls: Any) -> bool:
    v1 = _loaded_v1()
    return v1 is not None and fastapi._compat.shared.lenient_issubclass(cls, v1.BaseModel)


def is_pydantic_v1_model_instance(obj: Any) -> bool:
    v1 = _loaded_v1()
    return v1 is not None and isinstance(obj, v1.BaseModel)


_REPLACED = (
    (fastapi._compat.shared, "is_pydantic_v1_model_class", is_pydantic_v1_model_class),
    (fastapi._compat.shared, "is_pydantic_v1_model_instance", is_pydantic_v1_model_instance),
    (fastapi._compat, "is_pydantic_v1_model_instance", is_pydantic_v1_model_instance),
    (fastapi.encoders, "is_pydantic_v1_model_instance", is_pydantic_v1_model_instance),
)


def install() -> None:
    """Replace FastAPI's checks, where it looks them up (by module global, or imported by name).

    Fails loudly if a FastAPI upgrade moved one, rather than patching a name nobody reads.
    """
    for module, name, replacement in _REPLACED:
        if not callable(getattr(module, name, None)):
            raise RuntimeError(f"{module.__name__}.{name} is gone: review ingest/fastapi_compat.py for this FastAPI")
        setattr(module, name, replacement)
