# Set-up and the commands the README names. Works on a fresh machine: `make test` creates the venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Pinned: torch 2.13.0's CPU build is what this project's machines install without a multi-GB CUDA
# download; an unpinned or open-ended torch would pull one.
PINS := torch==2.13.0 torchdata==0.11.0 pytorch_lightning==2.6.6 pytest==9.0.3 hypothesis==6.155.2 ruff==0.17.6 radon==6.0.1
# The Hugging Face integration's tested versions (they install against torch==2.13.0 without another torch).
PINS += transformers==5.23.0 accelerate==1.15.0
# Data where it lives and the trainers' checkpoints (Parquet/Arrow, Hugging Face datasets, object storage, DCP,
# torchtitan). torchtitan 0.3.0 pins datasets<4.8 and an older fsspec, hence fsspec/s3fs 2026.2.0; boto3 is the
# one aiobotocore 3.10 accepts; moto's standalone server is the S3-compatible server the tests start on loopback.
PINS += pyarrow==26.0.1 datasets==4.7.0 fsspec==2026.2.0 s3fs==2026.2.0 boto3==1.43.117 obstore==0.12.1
PINS += torchtitan==0.3.0 'moto[server]==5.2.6' matplotlib==3.11.2
# The documentation site's tools (make docs), with the packages they pull in pinned too; installed with the set-up's
# torch==2.13.0 in the same pip command, so that pip never moves torch.
DOCS_PINS := mkdocs==1.6.1 mkdocs-material==9.8.1 'mkdocstrings[python]==1.0.8' mkdocstrings-python==2.0.11
DOCS_PINS += griffelib==2.4.1 mkdocs-autorefs==1.4.5 pymdown-extensions==13.1.2 Markdown==3.11.4

.PHONY: setup test fuzz test-lightning-floor wheel-smoke demo demo-ddp bench bench-quick bench-peers lint docs

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(PINS)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

test: setup
	$(PY) -m pytest -q

# Every test marked `fuzz` (the pipeline state machine, the readers' and index's property tests) with many more
# examples than make test runs, and a fresh random seed each time: HYPOTHESIS_FUZZ_EXAMPLES=N make fuzz.
HYPOTHESIS_FUZZ_EXAMPLES ?= 2000
fuzz: setup
	HYPOTHESIS_FUZZ_EXAMPLES=$(HYPOTHESIS_FUZZ_EXAMPLES) $(PY) -m pytest -q -m fuzz -p no:cacheprovider

# The Lightning tests against the lowest pytorch_lightning the [lightning] extra declares, in a venv of its own.
LIGHTNING_FLOOR := pytorch_lightning==2.6.0
FLOOR_VENV := .venv-lightning-floor
test-lightning-floor: $(FLOOR_VENV)/.installed
	$(FLOOR_VENV)/bin/python -m pytest -q tests/integrations/test_lightning.py

$(FLOOR_VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install --quiet --disable-pip-version-check $(filter torch==% torchdata==% pytest==% hypothesis==%,$(PINS)) $(LIGHTNING_FLOOR)
	$(FLOOR_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

# The wheel as users get it: built from the checkout, installed (not editable) into a fresh venv with the pinned
# torch and torchdata only, then .ci/wheel_smoke.py runs from a folder outside the checkout (so the sources cannot
# be imported): the public names, every module file and py.typed installed, a save/restore, the CLI and the script.
# --no-compile: byte-compiling all of torch at install costs more than compiling what the smoke test imports.
WHEEL_VENV := .venv-wheel-smoke
wheel-smoke: setup
	rm -rf build $(WHEEL_VENV) dist/torch_input_ckpt-*.whl
	$(PY) -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation -w dist .
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-compile \
		$(filter torch==% torchdata==%,$(PINS)) dist/torch_input_ckpt-*.whl
	smoke=$$(mktemp -d) && cd "$$smoke" && env -u PYTHONPATH $(abspath $(WHEEL_VENV))/bin/python \
		$(CURDIR)/.ci/wheel_smoke.py $(CURDIR); status=$$?; rm -rf "$$smoke"; exit $$status

demo: setup
	$(PY) examples/preempt_demo.py

demo-ddp: setup
	$(PY) examples/ddp_demo.py

bench: setup
	$(PY) -m benchmarks

bench-quick: setup
	$(PY) -m benchmarks --quick

# The peers on object storage (Mosaic Streaming, LitData) over moto's server on loopback: benchmarks/peers_remote.py,
# in a venv of its own because the peers pull packages that would move this project's pins (mosaicml-streaming brings
# torchvision 0.28.0 and an older transformers and numpy). torch==2.13.0 in the same pip command so pip never moves
# it. Not part of make test or CI. PEERS_ARGS=--quick for a smoke run.
PEERS_VENV := .venv-peers
PEERS_PINS := mosaicml-streaming==0.13.0 litdata==0.2.76 'moto[server]==5.2.6' pyarrow==26.0.1 boto3 torch==2.13.0
PEERS_ARGS ?=
bench-peers: $(PEERS_VENV)/.installed
	PYTHONPATH=$(CURDIR) $(PEERS_VENV)/bin/python benchmarks/peers_remote.py $(PEERS_ARGS)

$(PEERS_VENV)/.installed: Makefile
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check $(PEERS_PINS)
	touch $@

lint: setup
	$(VENV)/bin/ruff check torch_input_ckpt tests benchmarks examples .ci
	$(VENV)/bin/ruff format --check torch_input_ckpt tests benchmarks examples .ci

# The documentation site (mkdocs.yml, docs/): --strict fails on a broken link, a missing include or an API entry
# that does not resolve. The site goes to site/.
docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

$(VENV)/.docs-installed: $(VENV)/.installed Makefile
	$(PY) -m pip install --quiet --disable-pip-version-check $(DOCS_PINS) $(filter torch==%,$(PINS))
	touch $@
