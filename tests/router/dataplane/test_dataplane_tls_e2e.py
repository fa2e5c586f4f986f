"""The data plane over TLS: a router serving https with a certificate this test makes.

The node dials ``wss://`` and checks the router's certificate: against the CA file the
router's ``data_plane.ca_file`` names, else against the system's CAs, which do not know this
test's CA (so it refuses the router, and requests stay on the task path). The test's own
clients trust the CA. Real router, real Infinity (MiniLM: the quickest server to start).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme
import yaml

from tests.dataplane_e2e import (
    EMBEDDINGS,
    connected_servers,
    dial_file,
    embedding,
    pin_server,
    post,
    server_paths,
    via,
    wait_connected,
)
from tests.e2e_router import MINILM, RunningRouter, scratch_root, stop_router, stop_servers
from tests.remote_node import restart_router, start_router_on

# A cold Infinity on a busy machine, and a router restart.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
NAME = "tls"


@dataclass
class TLSRouter:
    """The module's https router (a new one after a restart), its root and its CA."""

    router: RunningRouter
    root: Path
    ca_file: Path
    trust: ssl.SSLContext  # what the test's clients trust: the CA

    @property
    def log(self) -> Path:
        return self.root / ".state" / f"{NAME}.log"

    def embed(self) -> httpx.Response:
        answer = post(
            self.router.url, self.router.key, EMBEDDINGS, embedding(MINILM), verify=self.trust
        )
        assert answer.status_code == 200, answer.text
        return answer


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSRouter]:
    root = scratch_root(tmp_path_factory.mktemp("dataplane-tls"))
    (root / ".state" / "batches").mkdir()  # the profile's batch_input_roots
    folder = root / ".state" / "tls"
    folder.mkdir()
    ca = trustme.CA()
    certificate = ca.issue_cert("127.0.0.1")
    certificate.private_key_pem.write_to_path(str(folder / "router.key"))
    for n, pem in enumerate(certificate.cert_chain_pems):
        pem.write_to_path(str(folder / "router.pem"), append=n > 0)
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    trust = ssl.create_default_context(cafile=str(folder / "ca.pem"))

    def https(url: str) -> dict[str, object]:
        # No ca_file at first: the node trusts only the system's CAs.
        listen = {"tls_cert": str(folder / "router.pem"), "tls_key": str(folder / "router.key")}
        return {"listen": listen, "data_plane": {"dial_url": url}}

    running = start_router_on(root, NAME, "127.0.0.1", https, scheme="https", verify=trust)
    state = TLSRouter(running, root, folder / "ca.pem", trust)
    try:
        yield state
    finally:
        try:
            stop_router(state.router)
        finally:
            stop_servers(root)


def test_the_router_serves_https_only_to_clients_that_trust_its_ca(tls: TLSRouter) -> None:
    assert tls.router.url.startswith("https://127.0.0.1:")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(tls.router.url + "/health", timeout=10)
    assert httpx.get(tls.router.url + "/health", verify=tls.trust, timeout=10).status_code == 200


def test_a_node_that_does_not_trust_the_certificate_does_not_connect(tls: TLSRouter) -> None:
    first = tls.embed()
    assert via(tls.log, first) == "task"
    written = dial_file(tls.root, MINILM)
    assert written["url"] == tls.router.url and written["ca_file"] is None
    server_log = server_paths(tls.root, MINILM).log
    deadline = time.monotonic() + 30
    # The agent's warning, in the server's log (Infinity's logger wraps lines: read the
    # words run together).
    while "CERTIFICATE_VERIFY_FAILED" not in "".join(
        server_log.read_text(errors="replace").split()
    ):
        assert time.monotonic() < deadline, "the node's agent did not try the router"
        time.sleep(0.5)
    # Requests still answer, through tasks.
    assert via(tls.log, tls.embed()) == "task"
    assert connected_servers(tls.router.url, tls.router.key, MINILM, verify=tls.trust) == []
    assert "connected from" not in tls.log.read_text()


def test_a_node_given_the_ca_dials_wss_and_warm_requests_ride_it(tls: TLSRouter) -> None:
    tls.embed()  # the server runs (if this test runs alone)
    pin_server(tls.root, MINILM)  # it outlives the router's restart
    config = tls.root / "config" / "router" / f"{NAME}.yaml"
    settings = yaml.safe_load(config.read_text())
    settings["data_plane"]["ca_file"] = str(tls.ca_file)
    config.write_text(yaml.safe_dump(settings))
    tls.router = restart_router(tls.router, NAME, verify=tls.trust)
    # The first request is a task: it brings the server a credential and the CA file.
    assert via(tls.log, tls.embed()) == "task"
    written = dial_file(tls.root, MINILM)
    assert written["url"].startswith("https://") and written["ca_file"] == str(tls.ca_file)
    [server] = wait_connected(tls.router.url, tls.router.key, MINILM, verify=tls.trust)
    warm = [tls.embed() for _ in range(3)]
    assert [via(tls.log, answer) for answer in warm] == ["connection"] * 3
    [after] = connected_servers(tls.router.url, tls.router.key, MINILM, verify=tls.trust)
    assert after["server"] == server["server"] and after["requests"] >= 3
