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
