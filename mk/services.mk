# The local one-node Slurm that the scheduler tests run Parsl's SlurmProvider against.
# The tests start it themselves when it is not running (and stop what they started);
# `make test` only needs its Debian packages installed. PBS Pro needs nothing: its stand-in
# is the qsub/qstat/qdel shim under tests/shims/pbs.
LOCAL_SLURM_DIR ?= $(CURDIR)/.state/slurm
export LOCAL_SLURM_DIR

.PHONY: slurm-packages slurm-start slurm-stop slurm-status

slurm-packages:
	scripts/local-slurm.sh install

slurm-start:
	scripts/local-slurm.sh start

slurm-stop:
	scripts/local-slurm.sh stop

slurm-status:
	scripts/local-slurm.sh status

TEST_PREREQS += slurm-packages

# PostgreSQL and nginx for the tests that run several routers on one shared store behind one
# address (tests/postgres.py, tests/replicas.py). The tests start their own servers in
# temporary folders on free ports and remove them; `make test` only installs the Debian
# packages. bench.mk's peers use nginx-package too.
.PHONY: postgres-packages nginx-package

postgres-packages:
	scripts/service-packages.sh postgres

nginx-package:
	scripts/service-packages.sh nginx

TEST_PREREQS += postgres-packages nginx-package

# Chromium and its driver for the status page's browser test
# (tests/router/api/test_status_page_browser_e2e.py, driven by selenium headless).
.PHONY: browser-packages

browser-packages:
	scripts/service-packages.sh browser

TEST_PREREQS += browser-packages

# `make test` builds its prerequisites side by side (make -j): the apt steps take turns, the
# Slurm packages first (service-packages.sh serializes its own installs with a lock).
postgres-packages nginx-package browser-packages: | slurm-packages
