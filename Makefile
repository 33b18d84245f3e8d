# Two commands do everything on a fresh Debian machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEBIAN_PACKAGES := dataset-fashion-mnist qemu-user-static gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross pocl-opencl-icd ocl-icd-libopencl1
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test check lint setup debian clean peers

demo: setup
	$(BIN)/tvm-pattern demo

test: setup  # everything, as CI runs it
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

check: setup  # the fast loop: lint, architecture contracts, the tests not marked slow
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

setup: debian $(STAMP)

debian:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# The runtimes `tvm-pattern bench --model` compares with, each set in its own venv under .peers/ (never the
# project's: DeepSparse pins numpy<2 and onnx 1.14). Idempotent: a stamp per venv (after changing a pin: rm -r .peers).
# Elsewhere: `make peers PEERS=DIR`, then TVM_PATTERN_PEERS=DIR for `tvm-pattern bench --model` to find them.
PEERS ?= .peers
PEERS_PYTHON ?= python3.11
PEERS_RUNTIMES := onnxruntime==1.32.0 openvino==2026.4.1 numpy onnx
PEERS_DEEPSPARSE := deepsparse==1.8.0

peers: $(PEERS)/runtimes/.installed $(PEERS)/deepsparse/.installed

$(PEERS)/runtimes/.installed:
	$(PEERS_PYTHON) -m venv $(PEERS)/runtimes
	$(PEERS)/runtimes/bin/pip install -q $(PEERS_RUNTIMES)
	touch $@

$(PEERS)/deepsparse/.installed:
	$(PEERS_PYTHON) -m venv $(PEERS)/deepsparse
	$(PEERS)/deepsparse/bin/pip install -q $(PEERS_DEEPSPARSE)
	NM_DISABLE_ANALYTICS=1 $(PEERS)/deepsparse/bin/python -c "import deepsparse"
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info
