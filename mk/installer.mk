# Every virtual environment is created and filled by scripts/install_env.py: with uv when
# pip could install it (into .venvs/uv, once, before the environments), else with venv and
# pip. uv keeps its wheel cache in its default shared place (~/.cache/uv, or UV_CACHE_DIR),
# so another clone on this machine installs from it instead of downloading; it is given
# pip's indexes, find-links, constraints and certificate, and picks versions as pip does.
# The Makefile includes this fragment before the others, which use its names in their rules.
VENVS := .venvs
UV := $(VENVS)/uv/bin/uv
UV_REQUIREMENT := uv>=0.13.8,<0.14
INSTALL_ENV := $(PYTHON) scripts/install_env.py --uv $(UV)

# An environment's rule names it after `|`: built once, and not a reason to rebuild.
$(UV):
	$(INSTALL_ENV) get-uv '$(UV_REQUIREMENT)'
