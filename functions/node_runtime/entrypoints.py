"""The functions registered with Globus Compute: thin, self-contained, source-serialized.

Each is registered with a source strategy (``PureSourceTextInspect``), so only its own text
travels: it must import everything inside its body, and its annotations may name builtins
only (the source is exec'd in an empty namespace). It imports the node runtime installed in
the cluster's environment and refuses to run against another version than the router expects.
"""


def serve(
    expected_runtime_version: str, spec: dict[str, object], request: dict[str, object]
) -> dict[str, object]:
    """Ensure the spec's model server on this node and forward one request to it.

    Returns the runtime's envelope: {"runtime_version", "status", "body", "timings":
    {"start_wait_s", "latency_s"}, "server": "started" | "reused"}. Raises RuntimeError,
    before anything is started, if the installed runtime is not expected_runtime_version.
    """
    import node_runtime

    if node_runtime.__version__ != expected_runtime_version:
        raise RuntimeError(
            f"node runtime version mismatch: the router expects {expected_runtime_version}, "
            f"but this node's environment has inference-node-runtime "
            f"{node_runtime.__version__} ({node_runtime.__file__}); install the matching "
            "version into the cluster environment (make deploy) or re-register the functions"
        )
    return node_runtime.handle(spec, request)
