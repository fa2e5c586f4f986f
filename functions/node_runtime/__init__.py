"""Node runtime: what runs on a compute node inside a Globus Compute worker."""

__version__ = "0.1.0"
