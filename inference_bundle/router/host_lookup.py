"""Whether the hosts a request's media URLs name resolve: asked of the event loop's resolver,
answers remembered a while. The service keeps one ``HostCheck`` so that answers outlive a
request; ``api.media_checks`` finds the URLs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass, field

from inference_bundle.router.errors import APIError

# The hosts of a request that are looked up; a request naming more has the rest unchecked
# (its server fetches them as before), so that no request costs more than this many lookups.
MOST_HOSTS = 16
# The resolver's answers that say the name does not exist (not that DNS is down).
_NO_SUCH_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


@dataclass(frozen=True)
class MediaURL:
    """An http(s) URL a request names, with the field it came in (for the 400's param)."""

    param: str
    host: str


@dataclass
class HostCheck:
    """Whether the hosts of media URLs resolve: asked of the event loop's resolver (which
    runs in threads), within ``timeout_s`` for all of a request's hosts, answers kept
    ``remember_s``. Only a resolver's "no such name" refuses a request: a slow or failing
    resolver lets it through, for the server to fetch as before."""

    timeout_s: float = 1.5
    remember_s: float = 60.0
    remembered: int = 4096
    _known: dict[str, tuple[float, bool]] = field(default_factory=dict)

    async def check(self, urls: list[MediaURL]) -> None:
        """The 400 naming the first host (of ``media_urls``' one a host) that does not
        resolve."""
        checked = [url for url in urls[:MOST_HOSTS] if not _is_address(url.host)]
        now = time.monotonic()
        unknown = []
        for url in checked:
            known = self._known.get(url.host)
            if known is None or now - known[0] > self.remember_s:
                self._known.pop(url.host, None)  # stale: a lookup that times out keeps none
                unknown.append(url.host)
        if unknown:
            await self._look_up(unknown)
        for url in checked:
            if self._known.get(url.host, (0.0, True))[1] is False:
                raise APIError(
                    400,
                    f"The {url.param} names the host {url.host[:255]!r}, which does not "
                    "resolve; check the URL, or send the file itself as a base64 data: URL.",
                    param=url.param,
                    code="invalid_value",
                )

    async def _look_up(self, hosts: list[str]) -> None:
        tasks = {asyncio.ensure_future(_resolves(host)): host for host in hosts}
        done, pending = await asyncio.wait(tasks, timeout=self.timeout_s)
        for task in pending:
            task.cancel()
        now = time.monotonic()
        if len(self._known) + len(done) > self.remembered:
            self._known.clear()  # a bounded memory; the next requests ask again
        for task in done:
            answer = task.result()
            if answer is not None:
                self._known[tasks[task]] = (now, answer)


async def _resolves(host: str) -> bool | None:
    """True when ``host`` resolves, False when it names nothing, None when DNS did not say."""
    try:
        await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        return False if err.errno in _NO_SUCH_NAME else None
    except ValueError:
        return False  # no host name at all: an empty or too long label, a NUL
    except OSError:
        return None
    return True


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
