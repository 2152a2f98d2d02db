"""The docs' assets ship with the ingest function, and cost its cold start nothing."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

from devstack.template import load_template
from ingest import docs

ROOT = Path(__file__).resolve().parents[2]
DIST = "fastapi-standalone-docs"


def pins(requirements: Path) -> dict[str, str]:
    found = {}
    for line in requirements.read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            found[name.strip().lower()] = version.strip()
    return found


def ingest_layer_requirements() -> list[Path]:
    """The requirements files that `sam build` installs into the ingest function's layers."""
    template = load_template()
    function = template["Resources"]["IngestFunction"]["Properties"]
    refs = [*template["Globals"]["Function"].get("Layers", []), *function.get("Layers", [])]
    files = []
    for ref in refs:
        layer = template["Resources"][ref["Ref"]]
        if str(layer.get("Metadata", {}).get("BuildMethod", "")).startswith("python"):
            files.append(ROOT / layer["Properties"]["ContentUri"] / "requirements.txt")
    return files


def test_the_ingest_functions_layer_pins_the_installed_docs_assets_package() -> None:
    installed = importlib.metadata.version(DIST)
    layers = ingest_layer_requirements()
    assert any(pins(path).get(DIST) == installed for path in layers), (layers, installed)
    # And the local stack's virtualenv (the Makefile installs requirements.txt) the same.
    assert pins(ROOT / "requirements.txt").get(DIST) == installed


def test_every_asset_the_pages_name_is_a_file_of_the_installed_package() -> None:
    files = {str(path) for path in importlib.metadata.files(DIST) or ()}
    package = DIST.replace("-", "_")
    for file in docs.ASSETS.values():
        assert f"{package}/static/{file}" in files, file


def test_importing_the_app_neither_imports_nor_locates_the_docs_package() -> None:
    code = (
        "import sys, warnings; warnings.simplefilter('ignore')\n"
        "import ingest.app\n"
        "from ingest import docs\n"
        f"print({docs.ASSETS_PACKAGE!r} in sys.modules, docs._static_files.cache_info().currsize)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "0"]
