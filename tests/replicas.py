"""nginx in front of several routers, as an operator runs it (docs/nginx-replicas.conf).

Tests that run two routers on one shared store put this round-robin reverse proxy in front
of them, so that clients see one address as they would at a site. It is Debian's nginx
(`make nginx-package`) run as a child process with its own configuration, pid file, logs
and temporary files in a temporary folder; nothing under /etc or /var is read or written.

    with Nginx(["http://127.0.0.1:8001", "http://127.0.0.1:8002"]) as proxy:
        httpx.get(proxy.url + "/health")
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
REPLICAS_CONF = ROOT / "docs" / "nginx-replicas.conf"
MISSING = (
    "nginx was not found (on PATH or as /usr/sbin/nginx): run `make nginx-package` "
    "(as root), which installs Debian's nginx-light"
)
UPSTREAM_BLOCK = re.compile(r"^upstream bundle_routers \{\n(.*?)^\}", re.DOTALL | re.MULTILINE)
UPSTREAM_SERVER = re.compile(r"^( +)server [^;]+;\n", re.MULTILINE)
LISTEN = re.compile(r"^( +)listen [^;]+;$", re.MULTILINE)

# The process-wide part an operator's /etc/nginx/nginx.conf holds, with every path in the
# prefix folder (Debian's build has /var/lib/nginx and /var/log/nginx compiled in).
MAIN_CONF = """\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
{user}
events {{
    worker_connections 1024;
}}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/temp/body;
    proxy_temp_path {prefix}/temp/proxy;
    fastcgi_temp_path {prefix}/temp/fastcgi;
    uwsgi_temp_path {prefix}/temp/uwsgi;
    scgi_temp_path {prefix}/temp/scgi;
    include {prefix}/replicas.conf;
}}
"""


class NginxMissing(RuntimeError):
    """nginx is not installed."""


class NginxFailed(RuntimeError):
    """nginx did not start; the message carries its error log."""


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )
    if found is None:
        raise NginxMissing(MISSING)
    return found


def upstream_address(url: str) -> str:
    """``host:port`` of an upstream given as ``http://host:port`` (or already ``host:port``)."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.port is None or parts.path not in ("", "/"):
        raise ValueError(f"an upstream for nginx is http://host:port, not {url!r}")
    return f"{parts.hostname}:{parts.port}"


def render_replicas_conf(upstreams: Sequence[str], listen: str, template: str) -> str:
    """docs/nginx-replicas.conf with these upstream servers and this ``listen`` address."""
    if not upstreams:
        raise ValueError("nginx needs at least one upstream")
    block = UPSTREAM_BLOCK.search(template)
    first = UPSTREAM_SERVER.search(block.group(1)) if block else None
    if block is None or first is None or len(LISTEN.findall(template)) != 1:
        raise ValueError(
            f"{REPLICAS_CONF}: expected one `upstream bundle_routers {{...}}` block with "
            "`server` lines and one `listen` line; the tests render it by replacing those"
        )
    servers = "".join(f"{first.group(1)}server {upstream_address(url)};\n" for url in upstreams)
    # The new servers go where the first old one was; comments and keepalive stay in place.
    inner = block.group(1)
    inner = inner[: first.start()] + servers + UPSTREAM_SERVER.sub("", inner[first.start() :])
    rendered = template[: block.start(1)] + inner + template[block.end(1) :]
    return LISTEN.sub(lambda match: f"{match.group(1)}listen {listen};", rendered)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Nginx:
    """A round-robin reverse proxy on a free 127.0.0.1 port in front of ``upstreams``."""

    def __init__(self, upstreams: Sequence[str], port: int | None = None) -> None:
        self.binary = nginx_binary()
        self.upstreams = [upstream_address(url) for url in upstreams]
        self.port = port or free_port()
        self.prefix = Path(tempfile.mkdtemp(prefix="bundle-nginx-"))
        # As root nginx's workers run as nobody, who must reach the temporary files.
        self.prefix.chmod(0o755)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def error_log(self) -> Path:
        return self.prefix / "error.log"

    def write_config(self) -> Path:
        """Write nginx.conf and replicas.conf (rendered from the operator's example)."""
        (self.prefix / "temp").mkdir(exist_ok=True)
        replicas = render_replicas_conf(
            self.upstreams, f"127.0.0.1:{self.port}", REPLICAS_CONF.read_text()
        )
        (self.prefix / "replicas.conf").write_text(replicas)
        user = "user nobody nogroup;" if os.geteuid() == 0 else ""
        conf = self.prefix / "nginx.conf"
        conf.write_text(MAIN_CONF.format(prefix=self.prefix, user=user))
        return conf

    def start(self, wait_s: float = 15) -> None:
        """Start nginx in the foreground of a child process; wait until its port answers."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"nginx already runs on port {self.port}")
        conf = self.write_config()
        argv = [self.binary, "-e", str(self.error_log), "-p", str(self.prefix), "-c", str(conf)]
        with open(self.prefix / "stderr.log", "ab") as stderr:
            self.process = subprocess.Popen(
                [*argv, "-g", "daemon off;"], stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr
            )
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise NginxFailed(self._failure(f"exited with {self.process.returncode}"))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise NginxFailed(self._failure(f"did not listen within {wait_s} s"))

    def stop(self) -> None:
        """Stop nginx at once (SIGTERM: open connections are closed, not drained)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def remove(self) -> None:
        """Stop nginx and delete its folder."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.prefix, ignore_errors=True)

    def __enter__(self) -> Nginx:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.remove()

    def _failure(self, what: str) -> str:
        logs = ""
        for log in (self.prefix / "stderr.log", self.error_log):
            if log.exists():
                logs += f"\n{log}:\n{log.read_text(errors='replace')[-4000:]}"
        return f"nginx on 127.0.0.1:{self.port} (config {self.prefix}/nginx.conf) {what}{logs}"
