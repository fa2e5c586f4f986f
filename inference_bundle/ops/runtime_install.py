"""Install the node runtime (functions/) into a cluster's endpoint environment when needed."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

VERSION_PROBE = "import node_runtime; print(node_runtime.__version__)"
_VERSION = re.compile(r"""^__version__\s*=\s*["']([^"']+)["']""", re.MULTILINE)
INSTALL_TIMEOUT_S = 600.0


class RuntimeInstallError(RuntimeError):
    """The runtime could not be checked or installed; the message says what to do."""


def bundled_version(root: Path) -> str:
    """The node runtime version in this checkout (functions/node_runtime/version.py)."""
    path = root / "functions" / "node_runtime" / "version.py"
    found = _VERSION.search(path.read_text(encoding="utf-8"))
    if found is None:
        raise RuntimeInstallError(f"{path} sets no __version__; restore it")
    return found.group(1)


def installed_version(python: str) -> str | None:
    """The node runtime version importable by ``python``; None when it has none."""
    if not Path(python).is_file():
        raise RuntimeInstallError(
            f"endpoint_python {python} does not exist; create the endpoint environment "
            "there or fix endpoint_python in the cluster profile"
        )
    try:
        done = subprocess.run(
            [python, "-c", VERSION_PROBE],
            cwd="/",
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise RuntimeInstallError(f"{python} could not be run: {err}") from None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def install(python: str, functions_dir: Path) -> None:
    """`python -m pip install <functions>`: a copy, so the checkout may move afterwards."""
    argv = [python, "-m", "pip", "install", "--quiet", str(functions_dir)]
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise RuntimeInstallError(f"`{' '.join(argv)}` did not complete: {err}") from None
    if done.returncode != 0:
        tail = " | ".join((done.stderr.strip() or done.stdout.strip()).splitlines()[-5:])
        raise RuntimeInstallError(
            f"`{' '.join(argv)}` failed (exit {done.returncode}): {tail}; fix the endpoint "
            "environment (pip must work there) and deploy again"
        )
