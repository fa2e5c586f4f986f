"""Which server may dial in as what: the key digests that tasks reported for their servers.

A task's envelope names the server it ran on and the digest of that server's key
(``node_runtime.dialout.node_key``). The envelope comes back through the executor, which a
reader of the node's files cannot forge; the key's secret half never leaves the server's
process. A dial is admitted only when its proof hashes to the digest reported for its
server; a dial that comes before its task's envelope waits for it, a little.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac

from inference_bundle.router.node_envelope import NodeReport

# How long a dial waits for the envelope that vouches for its server: a task writes the dial
# file just before it returns, so the envelope is normally here first.
VOUCH_WAIT_S = 30.0


class NodeKeys:
    """Key digests by (endpoint, server id), as this router's tasks reported them."""

    def __init__(self) -> None:
        self._digests: dict[tuple[str, str], str] = {}
        self._arrivals: dict[tuple[str, str], asyncio.Event] = {}

    def vouch(self, endpoint: str, node: NodeReport | None) -> None:
        """Take the server and key digest a task's envelope reports, if it reports them."""
        if node is None or node.key is None:
            return
        self._digests[(endpoint, node.server_id)] = node.key
        arrival = self._arrivals.pop((endpoint, node.server_id), None)
        if arrival is not None:
            arrival.set()

    def forget(self, endpoint: str, server_id: str) -> None:
        """The server stopped: its key proves nothing any more."""
        self._digests.pop((endpoint, server_id), None)

    async def proves(
        self, endpoint: str, server_id: str, proof: str, wait_s: float = VOUCH_WAIT_S
    ) -> bool:
        """Whether ``proof`` is the key of that server, waiting up to ``wait_s`` for a task
        to report it."""
        key = (endpoint, server_id)
        if key not in self._digests:
            arrival = self._arrivals.setdefault(key, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrival.wait(), wait_s)
            if key not in self._digests:
                self._arrivals.pop(key, None)  # ids a stranger chose leave nothing behind
        digest = self._digests.get(key)
        if digest is None or not proof:
            return False
        actual = hashlib.sha256(proof.encode()).hexdigest()
        return hmac.compare_digest(actual, digest)
