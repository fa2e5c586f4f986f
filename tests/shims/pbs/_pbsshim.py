"""A qsub/qstat/qdel stand-in for PBS Pro, which has no Debian package.

Enough for Parsl's real PBSProProvider to run end to end: a job is a local process group
started by `qsub`; `qstat -f -F json` answers in PBS Pro's shape; `qdel` kills the group.
The state is one JSON file a job under $PBS_SHIM_DIR. The executables beside this file call
`main()` with their own name.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SERVER = "pbs-shim"
STATE = Path(os.environ.get("PBS_SHIM_DIR", f"/tmp/pbs-shim-{os.getuid()}"))
CTIME_FMT = "%a %b %d %H:%M:%S %Y"


def new_job_id() -> str:
    """Next sequence number, under a lock, as PBS's `<seq>.<server>`."""
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / "seq", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        seq = int(f.read() or "1000") + 1
        f.seek(0)
        f.truncate()
        f.write(str(seq))
    return f"{seq}.{SERVER}"


def job_path(job_id: str) -> Path:
    return STATE / f"{job_id.split('.')[0]}.json"


def load(job_id: str) -> dict[str, Any] | None:
    try:
        job: dict[str, Any] = json.loads(job_path(job_id).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return job


def save(job: dict[str, Any]) -> None:
    tmp = job_path(job["id"]).with_suffix(".tmp")
    tmp.write_text(json.dumps(job))
    tmp.replace(job_path(job["id"]))


def all_ids() -> list[str]:
    seqs = sorted(int(p.stem) for p in STATE.glob("*.json")) if STATE.is_dir() else []
    return [f"{s}.{SERVER}" for s in seqs]


def _stat(pid: int | str) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name; None if gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in "ZX" else fields


def start_ticks(pid: int) -> str | None:
    """The process's start time (so a reused pid is not taken for the job), or None."""
    fields = _stat(pid)
    return fields[19] if fields else None


def group_alive(pgid: int) -> bool:
    """Whether any live (not zombie) process is left in the process group."""
    return any(
        (f := _stat(p.name)) is not None and f[2] == str(pgid)
        for p in Path("/proc").iterdir()
        if p.name.isdigit()
    )


def exit_path(job_id: str) -> Path:
    return STATE / f"{job_id.split('.')[0]}.exit"


def exit_status(job: dict[str, Any]) -> int | None:
    """None while the job's leader runs; its exit status (271: killed) once it is gone."""
    if start_ticks(job["pid"]) == job["ticks"]:
        return None
    try:
        return int(exit_path(job["id"]).read_text())
    except (OSError, ValueError):
        return 271


def hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def to_pbs_json(job: dict[str, Any], status: int | None) -> dict[str, Any]:
    """One job in the attribute names and shape of `qstat -f -F json`."""
    done = exit_path(job["id"])
    end = done.stat().st_mtime if status is not None and done.exists() else time.time()
    out: dict[str, Any] = {
        "Job_Name": job["name"],
        "Job_Owner": f"{os.environ.get('USER', 'root')}@{socket.gethostname()}",
        "resources_used": {"ncpus": job["ncpus"], "walltime": hms(end - job["stime"])},
        "job_state": "R" if status is None else "F",
        "queue": job["queue"],
        "server": SERVER,
        "ctime": time.strftime(CTIME_FMT, time.localtime(job["stime"])),
        "exec_host": f"{socket.gethostname()}/0*{job['ncpus']}",
        "exec_vnode": f"({socket.gethostname()}:ncpus={job['ncpus']})",
        "Output_Path": f"{socket.gethostname()}:{job['out']}",
        "Error_Path": f"{socket.gethostname()}:{job['err']}",
        "Resource_List": {k: int(v) if v.isdigit() else v for k, v in job["resources"].items()},
        "stime": time.strftime(CTIME_FMT, time.localtime(job["stime"])),
        "session_id": job["pid"],
        "comment": f"Job run at {time.ctime(job['stime'])} on ({socket.gethostname()})",
        "Submit_arguments": job["argv"],
        "project": job["account"] or "_pbs_project_default",
    }
    if job["account"]:
        out["Account_Name"] = job["account"]
    if status is not None:
        out["Exit_status"] = status
        out["comment"] += " and finished"
    return out


def qsub(argv: list[str]) -> int:
    """Run the script as its own process group; print the job id as PBS does."""
    script = argv[-1]
    opts = {"-q": "workq", "-A": "", "-N": os.path.basename(script), "-o": "", "-e": ""}
    res: dict[str, str] = {}
    with open(script) as f:
        directives = [w for ln in f if ln.startswith("#PBS ") for w in shlex.split(ln[5:])]
    for words in (directives, argv[:-1]):  # the command line wins, as in PBS
        for flag, value in zip(words, words[1:], strict=False):
            if flag == "-l":
                res.update(item.partition("=")[::2] for item in value.split(","))
            elif flag in opts:
                opts[flag] = value
    job_id = new_job_id()
    seq = job_id.split(".")[0]
    out, err = opts["-o"] or f"{script}.o{seq}", opts["-e"] or f"{script}.e{seq}"
    nodefile = STATE / f"{seq}.nodes"
    nodefile.write_text(socket.gethostname() + "\n")
    env = dict(os.environ, PBS_JOBID=job_id, PBS_NODEFILE=str(nodefile))
    env["PBS_O_WORKDIR"] = os.getcwd()
    wrapper = f"bash {shlex.quote(script)}; echo $? > {shlex.quote(str(exit_path(job_id)))}"
    with open(out, "ab") as o, open(err, "ab") as e:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", wrapper],
            stdin=subprocess.DEVNULL,
            stdout=o,
            stderr=e,
            env=env,
            start_new_session=True,
        )
    select = res.get("select", "1")
    ncpus = int(select.partition("ncpus=")[2].split(":")[0] or 1)
    res |= {"ncpus": str(ncpus), "nodect": select.split(":")[0]}
    job = {"id": job_id, "name": opts["-N"], "pid": proc.pid, "ticks": start_ticks(proc.pid)}
    job |= {"stime": time.time(), "queue": opts["-q"], "account": opts["-A"]}
    job |= {"resources": res, "ncpus": ncpus, "out": out, "err": err, "argv": " ".join(argv)}
    save(job)
    print(job_id)
    return 0


def qstat(argv: list[str]) -> int:
    """Only `qstat [-x] -f -F json [ids]`: what PBSProProvider and the job listing ask."""
    flags = [a for a in argv if a.startswith("-")]
    ids = [a for a in argv if not a.startswith("-") and a != "json"]
    if "-f" not in flags or "-F" not in flags:
        print("qstat shim: only `qstat [-x] -f -F json [job ids]` is supported", file=sys.stderr)
        return 2
    jobs, rc = {}, 0
    for job_id in ids or all_ids():
        job = load(job_id)
        if job is None:
            print(f"qstat: Unknown Job Id {job_id}", file=sys.stderr)
            rc = 153
            continue
        status = exit_status(job)
        if status is not None and "-x" not in flags:
            if ids:
                print(f"qstat: {job_id} Job has finished, use -x or -H", file=sys.stderr)
                rc = 35
            continue
        jobs[job["id"]] = to_pbs_json(job, status)
    answer = {"timestamp": int(time.time()), "pbs_version": "2022.1.1", "pbs_server": SERVER}
    print(json.dumps(answer | ({"Jobs": jobs} if jobs else {}), indent=4))
    return rc


def qdel(argv: list[str]) -> int:
    """TERM each job's process group, then KILL whatever is left after a grace."""
    rc = 0
    for job_id in argv:
        job = load(job_id)
        if job is None or exit_status(job) is not None:
            why = "Unknown Job Id" if job is None else "Job has finished"
            print(f"qdel: {why} {job_id}", file=sys.stderr)
            rc = 153 if job is None else 35
            continue
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(job["pid"], sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + 3.0
            while group_alive(job["pid"]) and time.monotonic() < deadline:
                time.sleep(0.05)
    return rc


def main() -> None:
    command = {"qsub": qsub, "qstat": qstat, "qdel": qdel}[os.path.basename(sys.argv[0])]
    sys.exit(command(sys.argv[1:]))
