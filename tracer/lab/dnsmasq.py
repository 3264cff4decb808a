"""Real dnsmasq in a pod: a UDP server for the lab's UDP Services.

One dnsmasq per pod and port (dnsmasq listens on exactly one port), each
with its own config, pid file and query log under the pod's run dir, in a
directory of its own (0700: nginx's workers must read the pod dir, dnsmasq
opens its files as root before it drops to nobody).

What it serves: a TXT record for `whoami.lab` whose text is
`pod=<name> ip=<ip> node=<node>`, the same words as nginx's page, so one
parser (traffic.pod_of_body) tells which pod answered. Nothing else: no
DHCP (no dhcp-range), no upstream servers (no-resolv, no server=), no
/etc/hosts, and every other name under .lab is answered NXDOMAIN locally.

Every query is logged (`log-queries=extra`: a serial number and the client's
address/port) to the query log, an independent witness read by query_log.py.
Logging is synchronous (no log-async: its queue drops lines under load).
dnsmasq also listens on TCP at the port (it has no switch to stop that), so
a pod's UDP port must not be a TCP port of its nginx.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import re
import subprocess
import time
from pathlib import Path

from tracer.errors import LabError, UsageError
from tracer.lab import procs
from tracer.lab.state import Dnsmasq
from tracer.system import require_program

WHOAMI = "whoami.lab"
# Names every pod answers for locally; nothing under it is sent anywhere.
LOCAL_DOMAIN = "lab"
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


def files(pod_dir: str | os.PathLike[str], port: int) -> Dnsmasq:
    """Where the dnsmasq of a pod (run dir `pod_dir`) for `port` keeps its files."""
    _check_port(port)
    d = Path(pod_dir) / "dnsmasq"
    return Dnsmasq(
        port=port,
        config=str(d / f"{port}.conf"),
        pid_file=str(d / f"{port}.pid"),
        query_log=str(d / f"{port}.log"),
    )


def txt_of(pod: str, ip: str, node: str) -> str:
    """The TXT answer's text: the pod line of nginx's page."""
    return f"pod={pod} ip={ip} node={node}"


def run_as() -> tuple[str, str]:
    """(user, group) dnsmasq drops to after binding: nobody where it exists
    (its primary group), else root (dnsmasq refuses an unknown user)."""
    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        return "root", "root"
    try:
        return "nobody", grp.getgrgid(user.pw_gid).gr_name
    except KeyError:
        return "nobody", "nogroup"


def render_config(*, pod: str, ip: str, node: str, files: Dnsmasq,
                  user: str = "nobody", group: str = "nogroup") -> str:
    for what, value in (("pod name", pod), ("node name", node), ("user", user), ("group", group)):
        if not _WORD.fullmatch(value):
            raise UsageError(f"dnsmasq: bad {what} {value[:80]!r}")
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise UsageError(f"dnsmasq: bad pod address {ip[:80]!r}") from None
    _check_port(files.port)
    for path in (files.pid_file, files.query_log):
        if "\n" in path or not os.path.isabs(path):
            raise UsageError(f"dnsmasq: bad path {path[:80]!r}")
    text = txt_of(pod, ip, node)
    if len(text) > 255:  # one DNS character-string
        raise UsageError(f"dnsmasq: TXT text too long ({len(text)} > 255 bytes)")
    return f"""\
# dnsmasq of lab pod {pod}, UDP port {files.port}.
port={files.port}
# Every address of the pod (the interface filter is what stops dnsmasq's
# default of answering only clients on a local subnet: lab clients are not).
interface=*
# No upstream, no resolv.conf, no /etc/hosts: only what is below.
no-resolv
no-poll
no-hosts
local=/{LOCAL_DOMAIN}/
txt-record={WHOAMI},"{text}"
user={user}
group={group}
pid-file={files.pid_file}
log-facility={files.query_log}
log-queries=extra
"""


def prepare(*, pod: str, ip: str, node: str, files: Dnsmasq) -> None:
    """Write the config (0600, in a 0700 dir); remove an old pid file and
    query log (a started server's log starts empty)."""
    user, group = run_as()
    config = render_config(pod=pod, ip=ip, node=node, files=files, user=user, group=group)
    d = Path(files.config).parent
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    d.chmod(0o700)
    for path in (files.config, files.pid_file, files.query_log):
        Path(path).unlink(missing_ok=True)
    _create(files.config, 0o600, config.encode())


def start(*, netns: str, pod: str, ip: str, node: str, files: Dnsmasq,
          timeout: float = 10.0) -> int:
    """Start dnsmasq in netns; its pid.

    dnsmasq binds, writes its pid file and only then lets the command
    return (a failure to bind is the command's exit status and last line).
    """
    dnsmasq = require_program("dnsmasq")
    prepare(pod=pod, ip=ip, node=node, files=files)
    argv = ["ip", "netns", "exec", netns, dnsmasq, f"--conf-file={files.config}"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise LabError(f"dnsmasq of {pod} (port {files.port}): timed out starting") from None
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        last = lines[-1] if lines else f"exit {proc.returncode}"
        raise LabError(f"dnsmasq of {pod} (port {files.port}) did not start: {last}")
    deadline = time.monotonic() + timeout
    while True:
        pid = read_pid(files.pid_file)
        if pid is not None and is_this(pid, files) and os.path.exists(files.query_log):
            # dnsmasq makes its log 0660 (group root) and gives it to its
            # user, who keeps writing through the open file: 0600 is enough.
            os.chmod(files.query_log, 0o600)
            return pid
        if time.monotonic() > deadline:
            raise LabError(f"dnsmasq of {pod} (port {files.port}) wrote no pid file or log")
        time.sleep(0.005)


def read_pid(pid_file: str) -> int | None:
    try:
        return int(Path(pid_file).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def is_this(pid: int | None, files: Dnsmasq) -> bool:
    """pid is alive and is the dnsmasq of these files (a pid file can outlive
    its process, its number be reused, and dnsmasq, as nobody, owns it)."""
    return (
        pid is not None
        and procs.alive(pid)
        and procs.comm(pid) == "dnsmasq"
        and f"--conf-file={files.config}" in procs.cmdline(pid)
    )


def running(files: Dnsmasq) -> int | None:
    """The pid of the dnsmasq of these files if it runs, else None."""
    pid = read_pid(files.pid_file)
    return pid if is_this(pid, files) else None


def stop(files: Dnsmasq, *, grace: float = 2.0) -> int | None:
    """Stop the dnsmasq of these files (checked first); its pid, or None if
    none ran. The query log stays (it is the witness)."""
    pid = running(files)
    if pid is None:
        return None
    procs.stop([pid], grace=grace)
    if procs.alive(pid):
        raise LabError(f"dnsmasq {pid} did not stop")
    Path(files.pid_file).unlink(missing_ok=True)
    return pid


def _create(path: str, mode: int, data: bytes = b"") -> None:
    """A new file (never through a link or over one left in place)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _check_port(port: int) -> None:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise UsageError(f"dnsmasq: bad UDP port {port!r}")
