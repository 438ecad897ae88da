"""A real one-node SLURM cluster on this host, for tests and for trying ``--launcher slurm``.

Writes a munge key and a ``slurm.conf`` for this host into a folder, starts ``munged``,
``slurmctld`` and ``slurmd`` in the foreground as child processes (every file they write,
sockets, state, logs, in that folder) and stops them by their PIDs. Accounting is off
(``accounting_storage/none``), as on many small clusters. Needs Debian's ``slurm-wlm`` and
``munge`` packages and root (``slurmd`` starts jobs as their user).

As a script::

    python tests/slurm_cluster.py /tmp/slurm-dev      # starts it, prints the SLURM_CONF to export, Ctrl-C stops it
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol")
PARTITION = "debug"
MAX_TIME_MIN = 120  # the partition's time limit: a longer --time-min is refused (EnforcePartLimits)


def missing() -> str | None:
    """Why a cluster cannot be started here (None: it can)."""
    absent = [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if absent:
        return (f"SLURM test cluster: {', '.join(absent)} not found (apt-get install slurm-wlm munge, as root)")
    if os.geteuid() != 0:
        return "SLURM test cluster: slurmd must run as root to start jobs"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class SlurmCluster:
    """``with SlurmCluster(folder) as cluster:``; ``cluster.env`` holds ``SLURM_CONF``."""

    def __init__(self, root: Path, cpus: int | None = None) -> None:
        self.root = Path(root)
        self.host = socket.gethostname()
        self.cpus = cpus or max(1, os.cpu_count() or 1)
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = self.root / "slurm.conf"
        self.env = {"SLURM_CONF": str(self.conf)}

    # ---------------------------------------------------------------- files
    def _write_files(self) -> None:
        r = self.root
        for d in ("state", "spool", "log", "munge"):
            (r / d).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o700)
        key = r / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        memory = max(1024, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2)
        self.conf.write_text(f"""\
ClusterName=mutualbench-test
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={r}/munge/munge.socket,cred_expire=5
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldDebug=error
SlurmdDebug=error
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
EnforcePartLimits=ALL
KillWait=2
MinJobAge=600
InactiveLimit=0
MessageTimeout=10
SlurmdTimeout=60
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={memory} State=UNKNOWN
PartitionName={PARTITION} Nodes={self.host} Default=YES MaxTime={MAX_TIME_MIN} State=UP
""")

    # ---------------------------------------------------------------- daemons
    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")  # noqa: SIM115 - kept open by the child
        self.procs[name] = subprocess.Popen([_binary(name), *args], stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env={**os.environ, **self.env},
                                            start_new_session=True)
        log.close()

    def start(self, timeout_s: float = 60) -> SlurmCluster:
        self._write_files()
        m = self.root / "munge"
        self._spawn("munged", ["--foreground", "--force", f"--socket={m}/munge.socket", f"--key-file={m}/munge.key",
                               f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log",
                               f"--seed-file={m}/munged.seed", "--num-threads=1"])
        self._wait(lambda: (m / "munge.socket").exists(), timeout_s, "munged")
        self._spawn("slurmctld", ["-D", "-i", "-f", str(self.conf)])
        self._wait(lambda: self._run(["scontrol", "ping"]).returncode == 0, timeout_s, "slurmctld")
        self._spawn("slurmd", ["-D", "-f", str(self.conf), "-N", self.host])
        self._wait(self._node_idle, timeout_s, "slurmd")
        return self

    def _run(self, cmd: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **self.env}, timeout=30)

    def _node_idle(self) -> bool:
        out = self._run(["sinfo", "-h", "-N", "-o", "%T"]).stdout.strip()
        return out.startswith("idle")

    def _wait(self, ready, timeout_s: float, what: str) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"{name} exited {p.returncode}; see {self.root / 'log'}")
            if ready():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{what} not ready after {timeout_s:.0f} s; see {self.root / 'log'}")

    def scontrol(self, *args: str) -> str:
        return self._run(["scontrol", *args]).stdout

    def stop(self) -> None:
        """Cancel what is left, then stop the daemons (slurmd, slurmctld, munged) by PID."""
        if self.procs.get("slurmctld") is not None and self.procs["slurmctld"].poll() is None:
            self._run(["scancel", "--full", "--user", str(os.getuid())])
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.pop(name, None)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tests/slurm_cluster.py FOLDER", file=sys.stderr)
        return 2
    why = missing()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the daemons on `kill` too
    with SlurmCluster(Path(argv[0]).resolve()) as cluster:
        print(f"one-node SLURM cluster up (partition {PARTITION}, {cluster.cpus} CPUs, no GPUs, accounting off); in "
              f"another shell: export SLURM_CONF={cluster.conf}; Ctrl-C stops it", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
