"""The client of the router's HTTP API that deploy and status use (stdlib urllib).

Kept to this module so that the rest of the commands layer never sees urllib.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RouterClient:
    """One router, called with one API key."""

    url: str
    key: str

    def healthy(self) -> bool:
        """True when the router answers its health check."""
        return router_healthy(self.url)

    def get(self, path: str) -> Any:
        """GET a JSON answer; OSError (urllib's errors) when it does not come."""
        request = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Bearer {self.key}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        """POST a JSON body and read the JSON answer, waiting up to 10 minutes."""
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.load(response)

    def post_until_answered(self, path: str, body: dict[str, Any]) -> str | None:
        """POST until an answer comes, retrying while the model is loading (HTTP 503).

        None on an answer, else why none came.
        """
        while True:
            try:
                self.post(path, body)
                return None
            except urllib.error.HTTPError as err:
                if err.code != 503:
                    return f"HTTP {err.code}: {err.read().decode(errors='replace')}"
            except OSError as err:
                return f"the router did not answer: {err}"

    def model_state(self, cluster: str, framework: str, model: str) -> str | None:
        """A model's state as the router lists it; None if unknown or unreachable."""
        try:
            listing = self.get("/resource_server/list-endpoints")
        except OSError:
            return None
        models = listing["clusters"].get(cluster, {}).get("frameworks", {}).get(framework, {})
        for entry in models.get("models", []):
            if entry["id"] == model:
                return str(entry["state"])
        return None


def router_healthy(url: str) -> bool:
    """True when the router at ``url`` answers its health check (no key needed)."""
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False
