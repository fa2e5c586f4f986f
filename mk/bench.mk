# The router-overhead benchmark (bench/router_overhead.py) and the peers it is measured
# against, each in its own environment: the benchmark client (aiohttp, and py-spy for
# --profile), vllm-router (Rust, from PyPI), the LiteLLM proxy, and Debian's nginx-light.
# The script itself runs in the bundle's venv (it starts the router and reads the runtime's
# state). Not part of `make test`: nothing here goes into TEST_PREREQS. nginx-package, which
# `make test` needs too, lives in services.mk.
# Pins and figures: docs/platform-notes.md ("Peers to measure against").

BENCH_VENV := $(VENVS)/bench
VLLM_ROUTER_VENV := $(VENVS)/vllm-router
LITELLM_VENV := $(VENVS)/litellm
BENCH_PINS := aiohttp==3.14.5 py-spy==0.4.3
VLLM_ROUTER_PINS := vllm-router==0.1.17
LITELLM_PINS := litellm[proxy]==1.108.7
BENCH_STAMP := $(BENCH_VENV)/.installed-aiohttp-3.14.5-py-spy-0.4.3
VLLM_ROUTER_STAMP := $(VLLM_ROUTER_VENV)/.installed-vllm-router-0.1.17
LITELLM_STAMP := $(LITELLM_VENV)/.installed-litellm-1.108.7

.PHONY: bench-peers bench-router
bench-peers: $(BENCH_STAMP) $(VLLM_ROUTER_STAMP) $(LITELLM_STAMP) nginx-package

$(BENCH_STAMP): | $(UV)
	rm -rf $(BENCH_VENV)
	$(INSTALL_ENV) create $(BENCH_VENV)
	$(INSTALL_ENV) install $(BENCH_VENV) -- $(foreach p,$(BENCH_PINS),'$(p)')
	touch $@

$(VLLM_ROUTER_STAMP): | $(UV)
	rm -rf $(VLLM_ROUTER_VENV)
	$(INSTALL_ENV) create $(VLLM_ROUTER_VENV)
	$(INSTALL_ENV) install $(VLLM_ROUTER_VENV) -- $(foreach p,$(VLLM_ROUTER_PINS),'$(p)')
	$(VLLM_ROUTER_VENV)/bin/vllm-router --help >/dev/null
	touch $@

$(LITELLM_STAMP): | $(UV)
	rm -rf $(LITELLM_VENV)
	$(INSTALL_ENV) create $(LITELLM_VENV)
	$(INSTALL_ENV) install $(LITELLM_VENV) -- $(foreach p,$(LITELLM_PINS),'$(p)')
	LITELLM_LOCAL_MODEL_COST_MAP=True $(LITELLM_VENV)/bin/litellm --help >/dev/null
	touch $@

# BENCH_ARGS passes options through, e.g. BENCH_ARGS='--profile .state/bench/profile'.
bench-router: bench-peers vllm-venv local-models venv
	$(BIN)/python bench/router_overhead.py $(BENCH_ARGS)

# The batch benchmark (bench/batch.py): the bundle's batch path against vLLM's run_batch (cold,
# end to end) and against the running vLLM server fed directly (warm req/s). It needs the
# benchmark client's venv (aiohttp) only, none of the peers.
.PHONY: bench-batch
bench-batch: $(BENCH_STAMP) vllm-venv local-models venv
	$(BIN)/python bench/batch.py $(BENCH_ARGS)

# The streaming benchmark (bench/streaming.py): vLLM's own benchmark client, run in the vLLM
# venv, through the router against direct vLLM (median TTFT and inter-token latency).
# BENCH_ARGS='--peer vllm-router' measures vllm-router beside them (`make bench-peers` first).
.PHONY: bench-streaming bench-streaming-remote
bench-streaming: vllm-venv local-models venv
	$(BIN)/python bench/streaming.py $(BENCH_ARGS)
# bench-streaming-remote: vLLM on a namespaced remote node (root; bench/streaming.py --remote).
bench-streaming-remote: vllm-venv local-models venv
	$(BIN)/python bench/streaming.py --remote $(BENCH_ARGS)

# The limiter benchmark (bench/limiter_overhead.py): routers with limits OFF and ON side by
# side on one vLLM server, on SQLite and then on a PostgreSQL server started for the run.
# It needs the benchmark client's venv (aiohttp) only, none of the peers.
.PHONY: bench-limits
bench-limits: $(BENCH_STAMP) vllm-venv local-models venv postgres-packages
	$(BIN)/python bench/limiter_overhead.py $(BENCH_ARGS)

# The replica benchmark (bench/replicas.py): stand-in servers of fixed capacity behind the real
# router and dial-out agent, so that the ratio measures the balancing, not this machine's cores.
.PHONY: bench-replicas
bench-replicas: venv
	$(BIN)/python bench/replicas.py $(BENCH_ARGS)

# The tracing benchmark (bench/tracing_overhead.py): the same router with tracing OFF and ON,
# each over a stand-in node on the real data plane; no model server.
.PHONY: bench-tracing
bench-tracing: venv
	$(BIN)/python bench/tracing_overhead.py $(BENCH_ARGS)

# The fair-queue benchmark (bench/fairness.py): a light user beside a heavy one with the queue
# on and off, and its cost on a model that is not full, on stand-ins of fixed capacity;
# BENCH_ARGS='--real' adds the run on real vLLM (two routers, queue on and off, one server).
.PHONY: bench-fairness
bench-fairness: venv
	$(BIN)/python bench/fairness.py $(BENCH_ARGS)
