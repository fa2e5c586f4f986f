"""Executors: how the router runs a registered function on an endpoint.

``engine`` runs a GlobusComputeEngine in-process from the rendered endpoint directory (no
Globus cloud: the local cluster, CI, a site without the cloud hop); ``globus`` will use
``globus_compute_sdk.Executor`` against registered endpoints in production.
"""
