"""Naming conventions shared by rendering, the router and the operator's commands."""

from __future__ import annotations

# Margin so the runtime's own idle watchdog stops the server before the job goes away.
IDLE_MARGIN_S = 120


def batch_twin_name(endpoint_name: str) -> str:
    """The name of a model's batch twin endpoint (rendered next to the model's own)."""
    return f"{endpoint_name}-batch"


def jobs_endpoint_name(cluster: str) -> str:
    """The cluster's job-listing endpoint, a LocalProvider on the login node."""
    return f"{cluster}-jobs"
