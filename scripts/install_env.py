"""Create and fill a virtual environment with uv when it is there, else with venv and pip.

    python3.11 scripts/install_env.py --uv UV get-uv REQUIREMENT
    python3.11 scripts/install_env.py --uv UV create DIR
    python3.11 scripts/install_env.py --uv UV install DIR [--drop NAME]... -- REQUIREMENT...

The Makefile builds every environment through this script (mk/installer.mk). get-uv
installs uv with pip so that UV runs; where it cannot, the other commands use venv and pip
(slower, same result). uv installs in seconds from its shared wheel cache (~/.cache/uv, or
UV_CACHE_DIR), so a second clone on a machine reuses what the first one downloaded.

uv does not read pip's configuration: what pip is configured with where this runs
(`pip config list`: its files and the PIP_* variables) is passed to uv as uv's own options,
and uv resolves across several indexes as pip does (the best version from any index, not
the first index that has the package). --drop names packages that must not stay installed:
uv leaves them out of the resolution, pip installs then uninstalls them.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

# pip's sections for `pip install`, later ones winning (as pip's own option parser orders them).
SECTIONS = ("global", "install", ":env:")
# `pip config list` prints one `section.key='value'` a line (the value as Python's repr).
_CONFIG_LINE = re.compile(
    r"""^(?P<section>[^.]*)\.(?P<key>[^=]+)=(?P<q>['"])(?P<value>.*)(?P=q)$"""
)
_TRUE = {"1", "true", "yes", "on"}
# pip option → uv option, for the options that take a list (whitespace-separated in pip).
LIST_OPTIONS = {
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
    "trusted-host": "--allow-insecure-host",
    "only-binary": "--only-binary",
    "no-binary": "--no-binary",
}
# pip option → the environment variable uv reads for the same thing.
ENV_OPTIONS = {
    "cert": "SSL_CERT_FILE",
    "client-cert": "SSL_CLIENT_CERT",
    "timeout": "UV_HTTP_TIMEOUT",
    "default-timeout": "UV_HTTP_TIMEOUT",
    "proxy": "HTTPS_PROXY",
}
# A requirement whose marker is never true: how uv leaves a dependency out of a resolution.
NEVER = 'sys_platform == "never"'


def pip_settings(listing: str) -> dict[str, str]:
    """The settings `pip install` uses, from `pip config list`'s output."""
    found: dict[str, dict[str, str]] = {}
    for line in listing.splitlines():
        match = _CONFIG_LINE.match(line.strip())
        if match:
            key = match["key"].replace("_", "-").lstrip("-")
            found.setdefault(match["section"], {})[key] = match["value"]
    settings: dict[str, str] = {}
    for section in SECTIONS:
        settings |= found.get(section, {})
    return settings


def uv_options(settings: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """uv's command-line options and environment for pip's settings."""
    options = ["--index-strategy", "unsafe-best-match"]
    if "index-url" in settings:
        options += ["--index-url", settings["index-url"]]
    for pip_key, uv_flag in LIST_OPTIONS.items():
        for value in settings.get(pip_key, "").split():
            options += [uv_flag, value]
    if settings.get("no-index", "").lower() in _TRUE:
        options.append("--no-index")
    if settings.get("pre", "").lower() in _TRUE:
        options += ["--prerelease", "allow"]
    env = {var: settings[key] for key, var in ENV_OPTIONS.items() if settings.get(key)}
    return options, env


def base_python() -> str:
    """The interpreter under this one's virtual environment, if any (it has pip)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    base = Path(sys.base_prefix) / "bin" / version
    return str(base) if base.is_file() else sys.executable


def read_pip_config() -> str:
    """`pip config list` of the base interpreter's pip; empty when pip cannot say."""
    done = subprocess.run(
        [base_python(), "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout if done.returncode == 0 else ""


def run(argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
    """Run one installer command; its failure stops the build with its exit status."""
    done = subprocess.run(argv, env=None if env is None else {**os.environ, **env}, check=False)
    if done.returncode != 0:
        sys.exit(done.returncode)


def get_uv(uv: Path, requirement: str) -> None:
    """Install uv where ``uv`` names it; say so, and go on, when pip cannot."""
    folder = uv.parent.parent
    shutil.rmtree(folder, ignore_errors=True)
    argv = [base_python(), "-m", "pip", "install", "-q", "--target", str(folder), requirement]
    env = {**os.environ, "PIP_ROOT_USER_ACTION": "ignore"}
    if subprocess.run(argv, env=env, check=False).returncode != 0 or not uv.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        print(f"{requirement} could not be installed: venv and pip build the environments")


def create(uv: Path | None, venv: Path) -> None:
    """A new virtual environment on this interpreter (without pip when uv fills it)."""
    if uv is None:
        run([sys.executable, "-m", "venv", str(venv)])
    else:
        run([str(uv), "venv", "--quiet", "--python", base_python(), str(venv)])


def install(uv: Path | None, venv: Path, requirements: Sequence[str], drop: Sequence[str]) -> None:
    """Install ``requirements`` into ``venv``; none of ``drop`` is installed afterwards."""
    python = str(venv / "bin" / "python")
    if uv is None:
        run([python, "-m", "pip", "install", "-q", *requirements])
        if drop:
            run([python, "-m", "pip", "uninstall", "-q", "-y", *drop])
        return
    quiet_into = ["--quiet", "--python", python]
    options, env = uv_options(pip_settings(read_pip_config()))
    # pip compiles what it installs; uv only when asked. Where PYTHONDONTWRITEBYTECODE is set
    # (as on the development machines) nothing else would, and every server start would
    # compile torch, transformers and vLLM again.
    options.append("--compile-bytecode")
    with tempfile.TemporaryDirectory() as scratch:
        if drop:
            overrides = Path(scratch) / "overrides.txt"
            overrides.write_text("".join(f"{name} ; {NEVER}\n" for name in drop))
            options += ["--overrides", str(overrides)]
        run([str(uv), "pip", "install", *quiet_into, *options, *requirements], env)
    if drop:  # uv installed none of them; an environment filled earlier may hold them
        run([str(uv), "pip", "uninstall", *quiet_into, *drop])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uv", type=Path, required=True, help="uv's executable (may be absent)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("get-uv").add_argument("requirement")
    commands.add_parser("create").add_argument("venv", type=Path)
    filling = commands.add_parser("install")
    filling.add_argument("venv", type=Path)
    filling.add_argument("--drop", action="append", default=[], metavar="NAME")
    filling.add_argument("requirements", nargs="+", metavar="REQUIREMENT")
    args = parser.parse_args(argv)
    uv = args.uv if os.access(args.uv, os.X_OK) else None
    if args.command == "get-uv":
        get_uv(args.uv, args.requirement)
    elif args.command == "create":
        create(uv, args.venv)
    else:
        install(uv, args.venv, args.requirements, args.drop)


if __name__ == "__main__":
    main()
