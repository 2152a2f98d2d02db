"""The ingest package's stand-in for FastAPI's pydantic.v1 checks: same answers, no import."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pydantic

import ingest  # noqa: F401 - installs the checks
from ingest import fastapi_compat


def test_the_ingest_app_neither_imports_nor_serves_with_pydantic_v1() -> None:
    # Import, then answers through a response model (healthz) and the encoder (a 422).
    code = (
        "import sys, warnings; warnings.simplefilter('ignore')\n"
        "from fastapi.testclient import TestClient\n"
        "from ingest.app import app\n"
        "client = TestClient(app)\n"
        "assert client.get('/healthz').status_code == 200\n"
        "assert client.post('/v1/call/stream/c1', json={'sequence': -1}).status_code == 422\n"
        "print('pydantic.v1' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_fastapi_looks_its_checks_up_in_the_replaced_places() -> None:
    import fastapi._compat.shared
    import fastapi.encoders

    assert fastapi._compat.shared.is_pydantic_v1_model_class is fastapi_compat.is_pydantic_v1_model_class
    assert fastapi.encoders.is_pydantic_v1_model_instance is fastapi_compat.is_pydantic_v1_model_instance


def test_v1_models_are_still_recognised_once_pydantic_v1_is_loaded() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pydantic import v1

    class OldModel(v1.BaseModel):
        x: int

    class NewModel(pydantic.BaseModel):
        x: int

    assert fastapi_compat.is_pydantic_v1_model_class(OldModel)
    assert fastapi_compat.is_pydantic_v1_model_instance(OldModel(x=1))
    assert not fastapi_compat.is_pydantic_v1_model_class(NewModel)
    assert not fastapi_compat.is_pydantic_v1_model_instance(NewModel(x=1))
    assert not fastapi_compat.is_pydantic_v1_model_class(int)


def test_the_ingest_app_never_imports_the_audio_decoders() -> None:
    # Ingest stores packets as sent; only the worker decodes them. Importing the decoders
    # would add to every ingest cold start (the bench's ingest_cold_ratio).
    code = "import sys\nimport ingest.app\nprint('callcore.domain.audio' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
