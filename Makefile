# Two commands: `make run` starts the local stack, `make test` runs every check.
# Both set themselves up: a virtualenv for the app (.venv), and one each for aws-sam-cli
# (.venv-sam) and checkov (.venv-checkov), whose pinned boto3 would clash with the app's.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SAM_VENV := .venv-sam
APP_STAMP := $(VENV)/.installed
SAM_STAMP := $(SAM_VENV)/.installed
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
export AWS_DEFAULT_REGION ?= us-east-1
export SAM_CLI_TELEMETRY := 0

.PHONY: run test lint typecheck validate checkov unit build bench clean browser

$(APP_STAMP): requirements.txt requirements-dev.txt requirements-asr.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	# The offline AI: --no-deps, as requirements-asr.txt explains.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-asr.txt
	$(PY) -c "import pathlib, site; root = pathlib.Path.cwd(); \
	  pathlib.Path(site.getsitepackages()[0], 'pbx-call-processor.pth').write_text( \
	  '\n'.join(str(root / p) for p in ('.', 'src', 'functions/ingest', 'functions/ai_worker')) + '\n')"
	touch $@

$(SAM_STAMP): requirements-sam.txt
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-sam.txt
	touch $@

$(CHECKOV_STAMP): requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-checkov.txt
	touch $@

run: $(APP_STAMP)
	$(PY) -m devstack

# The second pass runs the `chaos` tests (invariants under real concurrency, and a
# 200-call simulator run) against a moto server answering like AWS under stress. Its
# seed is printed, so a failing run can be replayed: `make test CHAOS_SEED=<seed>`.
CHAOS_SEED ?= $(shell date +%s)

test: lint typecheck validate checkov browser
	$(PY) -m pytest
	@echo "chaos pass: LOCAL_FAULTS=chaos LOCAL_FAULTS_SEED=$(CHAOS_SEED)"
	LOCAL_FAULTS=chaos LOCAL_FAULTS_SEED=$(CHAOS_SEED) $(PY) -m pytest -m chaos tests/integration

# The console's browser tests (tests/integration/test_console.py) drive Debian's Chromium
# through Debian's chromedriver, the same build, so the two always match and nothing is
# downloaded at test time. Installed once (as root, or through sudo), skipped when both
# packages are installed: a missing browser is an install step here, never a skipped test.
BROWSER_PACKAGES := chromium chromium-driver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

browser:
	@if [ "$$(dpkg-query -W -f='$${db:Status-Abbrev}\n' $(BROWSER_PACKAGES) 2>/dev/null | grep -c '^ii')" != 2 ]; then \
	  echo "installing $(BROWSER_PACKAGES) (Debian's packages)"; \
	  $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y $(BROWSER_PACKAGES); \
	fi

lint: $(APP_STAMP)
	$(PY) -m ruff check .

typecheck: $(APP_STAMP)
	$(PY) -m mypy

# sam's own lint, then cfn-lint with AWS's serverless rules (cfn-lint-serverless): each
# finding is fixed, or ignored in template.yaml on its resource with the reason.
validate: $(SAM_STAMP)
	$(SAM_VENV)/bin/sam validate --lint --template template.yaml
	$(SAM_VENV)/bin/cfn-lint --append-rules cfn_lint_serverless.rules -- template.yaml

# Security scan of the template (checkov's cloudformation framework reads SAM too). Fails
# on any finding: each accepted risk is skipped in template.yaml itself, with its reason.
# checkov exits 0 on a template it cannot parse, so a parsing error fails here too.
checkov: $(CHECKOV_STAMP)
	@out=$$($(CHECKOV_VENV)/bin/checkov --file template.yaml --framework cloudformation \
	  --quiet --compact --skip-download 2>&1); status=$$?; echo "$$out"; \
	if echo "$$out" | grep -q "Parsing errors"; then echo "checkov could not parse template.yaml" >&2; exit 1; fi; \
	exit $$status

unit: $(APP_STAMP)
	$(PY) -m pytest tests/unit

# Package for Lambda with Python 3.13 (the runtime: pocketsphinx has no cp312 wheel), then
# ship compiled bytecode: the Lambda file system is read-only, so without it every cold
# start compiles from source.
PY313 ?= $(shell ls -d $$HOME/.pyenv/versions/3.13*/bin 2>/dev/null | head -n1)
build: $(SAM_STAMP)
	PATH="$(PY313):$$PATH" $(SAM_VENV)/bin/sam build
	PATH="$(PY313):$$PATH" python3.13 -m compileall -q -j 0 .aws-sam/build

# Performance against the budgets in README.md (Performance), every figure a ratio against a baseline
# measured in the same run. Not part of `make test`: timings are noisy on shared machines.
bench: $(APP_STAMP)
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) $(SAM_VENV) $(CHECKOV_VENV) .aws-sam .mypy_cache .ruff_cache .pytest_cache
