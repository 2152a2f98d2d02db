"""Point the AWS SDKs of this process (and its children) at a moto server."""

from __future__ import annotations

import os
from collections.abc import MutableMapping


def point_sdks_at(endpoint: str, env: MutableMapping[str, str] | None = None) -> None:
    env = os.environ if env is None else env
    env["AWS_ENDPOINT_URL"] = endpoint
    # moto accepts any credentials; fixed ones keep a developer's real profile out of it.
    env["AWS_ACCESS_KEY_ID"] = "testing"
    env["AWS_SECRET_ACCESS_KEY"] = "testing"  # noqa: S105
    env.pop("AWS_SESSION_TOKEN", None)
    env.pop("AWS_PROFILE", None)
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
