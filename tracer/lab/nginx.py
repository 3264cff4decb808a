"""Real nginx in every pod: config, page and start.

Each pod's nginx has its own config, pid file, temp dirs and logs under the
lab run dir, so pods never share a file and nothing is written to
/var/log/nginx or /var/lib/nginx. The access log is one JSON object per line
with what a test needs to tell which pod served a request, for which source
address and on which connection (see access_log.py).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from tracer.errors import LabError
from tracer.lab.state import Pod
from tracer.system import require_program

# escape=json: every field a valid JSON string; $msec etc. are numbers.
# A path every pod serves with a large page (64 KiB: some 45 full-size
# segments), what `tracer lab traffic --path /large` asks for.
LARGE_PATH = "/large"
LARGE_PAGE_BYTES = 64 * 1024

LOG_FORMAT = (
    '{"time":"$time_iso8601","msec":$msec,'
    '"remote_addr":"$remote_addr","remote_port":$remote_port,'
    '"server_addr":"$server_addr","server_port":$server_port,'
    '"connection":$connection,"connection_requests":$connection_requests,'
    '"request":"$request","status":$status,"bytes_sent":$bytes_sent,'
    '"request_time":$request_time,"pod":"{pod}"}'
)


def render_config(pod: Pod) -> str:
    files = pod.nginx
    tmp = Path(files.root).parent / "tmp"
    # A dual-stack pod listens on both families ([::] is IPv6 only: nginx
    # sets ipv6only on by default).
    families = ("{port}", "[::]:{port}") if pod.ip6 else ("{port}",)
    listens = "\n".join(f"        listen {f.format(port=port)};"
                        for port in pod.ports for f in families)
    return f"""\
# nginx of lab pod {pod.name}, rendered by `tracer lab up`.
daemon on;
master_process on;
worker_processes 1;
user nobody nogroup;
pid {files.pid_file};
lock_file {tmp}/nginx.lock;
error_log {files.error_log} warn;

events {{
    worker_connections 4096;
}}

http {{
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;

    log_format lab escape=json '{LOG_FORMAT.replace("{pod}", pod.name)}';
    # Unbuffered: each request is in the log when its response has gone.
    access_log {files.access_log} lab;

    server_tokens off;
    keepalive_timeout 65;
    keepalive_requests 10000;

    server {{
{listens}
        root {files.root};
        default_type text/html;
        # Every path answers with the page that names the pod (liveness
        # probes included); {LARGE_PATH} with a large one (responses of many
        # full-size segments, for MTU faults).
        location / {{
            try_files /index.html =404;
        }}
        location = {LARGE_PATH} {{
            try_files {LARGE_PATH}.html =404;
        }}
    }}
}}
"""


def render_page(pod: Pod) -> str:
    """The page every request gets. The `pod=... ip=... node=...` line is what
    the traffic generator parses to tell which pod answered."""
    return f"""\
<!DOCTYPE html>
<html>
<head><title>{pod.name}</title></head>
<body>
<h1>{pod.name}</h1>
<p>pod={pod.name} ip={pod.ip} node={pod.node} namespace={pod.namespace}</p>
</body>
</html>
"""


def render_large_page(pod: Pod) -> str:
    """The page at LARGE_PATH: the same pod line, then LARGE_PAGE_BYTES of
    filler, so that a response is many full-size TCP segments."""
    page = render_page(pod)
    filler_line = "<p>" + "x" * 72 + "</p>\n"
    lines = (LARGE_PAGE_BYTES - len(page)) // len(filler_line) + 1
    return page.replace("</body>", filler_line * lines + "</body>")


def prepare(pod: Pod) -> None:
    """Write config, page and directories (the logs start empty)."""
    files = pod.nginx
    root = Path(files.root)
    tmp = root.parent / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    Path(files.config).write_text(render_config(pod))
    (root / "index.html").write_text(render_page(pod))
    (root / f"{LARGE_PATH.lstrip('/')}.html").write_text(render_large_page(pod))
    for path in (files.pid_file, files.access_log, files.error_log):
        Path(path).unlink(missing_ok=True)


def start_many(pods: Sequence[Pod], timeout: float = 10.0) -> dict[str, int]:
    """Start nginx in each pod's namespace, all at once; pod name -> master pid.

    `nginx` binds its sockets before it daemonizes, so when the command
    returns the pod listens; the pid file follows a moment later.
    """
    if not pods:
        return {}
    nginx = require_program("nginx")
    for pod in pods:
        prepare(pod)
    procs = {
        pod.name: subprocess.Popen(
            ["ip", "netns", "exec", pod.netns, nginx,
             "-c", pod.nginx.config, "-e", pod.nginx.error_log,
             "-p", str(Path(pod.nginx.root).parent)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for pod in pods
    }
    failed = []
    for name, proc in procs.items():
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            failed.append(f"{name}: timed out")
            continue
        if proc.returncode != 0:
            lines = err.strip().splitlines()
            failed.append(f"{name}: {lines[-1] if lines else f'exit {proc.returncode}'}")
    if failed:
        raise LabError(f"nginx did not start in {len(failed)} pod(s): {failed[0]}")
    pids = {}
    deadline = time.monotonic() + timeout
    for pod in pods:
        while True:
            try:
                pids[pod.name] = int(Path(pod.nginx.pid_file).read_text().split()[0])
                break
            except (FileNotFoundError, IndexError, ValueError):
                if time.monotonic() > deadline:
                    raise LabError(f"nginx of {pod.name} wrote no pid file") from None
                time.sleep(0.005)
    return pids
