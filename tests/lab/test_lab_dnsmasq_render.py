"""dnsmasq config rendering (checked by dnsmasq's own --test) and the query
log parser, on real files. No network namespace needed."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tracer.errors import UsageError
from tracer.lab import dnsmasq, query_log
from tracer.system import require_program

POD = "udp-demo-6d5f7c9b8-x2x9q"


def _render(tmp_path: Path, **over) -> str:
    args = dict(pod=POD, ip="10.244.1.5", node="node-a", files=dnsmasq.files(tmp_path / POD, 53))
    args.update(over)
    return dnsmasq.render_config(**args)


def test_files_live_in_the_pods_own_dnsmasq_dir(tmp_path):
    f = dnsmasq.files(tmp_path / POD, 5353)
    d = tmp_path / POD / "dnsmasq"
    assert (f.config, f.pid_file, f.query_log, f.port, f.pid) == (
        str(d / "5353.conf"), str(d / "5353.pid"), str(d / "5353.log"), 5353, None
    )


def test_config_serves_only_the_pod_line(tmp_path):
    lines = _render(tmp_path).splitlines()
    settings = [line for line in lines if line and not line.startswith("#")]
    f = dnsmasq.files(tmp_path / POD, 53)
    assert settings == [
        "port=53",
        "interface=*",
        "no-resolv",
        "no-poll",
        "no-hosts",
        "local=/lab/",
        f'txt-record=whoami.lab,"pod={POD} ip=10.244.1.5 node=node-a"',
        "user=nobody",
        "group=nogroup",
        f"pid-file={f.pid_file}",
        f"log-facility={f.query_log}",
        "log-queries=extra",
    ]
    # No DHCP, no upstream server, no daemon-wide files of the host.
    assert not any(s.startswith(("dhcp", "server=", "resolv-file", "addn-hosts", "conf-dir"))
                   for s in settings)


def test_dnsmasq_accepts_the_config(tmp_path):
    f = dnsmasq.files(tmp_path / POD, 53)
    dnsmasq.prepare(pod=POD, ip="10.244.1.5", node="node-a", files=f)
    proc = subprocess.run([require_program("dnsmasq"), "--test", f"--conf-file={f.config}"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "syntax check OK" in proc.stderr


def test_prepare_modes_and_fresh_start(tmp_path):
    f = dnsmasq.files(tmp_path / POD, 53)
    d = Path(f.config).parent
    d.mkdir(parents=True)
    d.chmod(0o755)
    Path(f.pid_file).write_text("12345\n")
    Path(f.query_log).write_text("old\n")
    Path(f.config).symlink_to("/etc/passwd")  # replaced, never written through
    before = hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest()
    dnsmasq.prepare(pod=POD, ip="10.244.1.5", node="node-a", files=f)
    assert hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest() == before
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert not Path(f.config).is_symlink()
    assert stat.S_IMODE(os.stat(f.config).st_mode) == 0o600
    assert not Path(f.pid_file).exists() and not Path(f.query_log).exists()
    # The pod dir above (nginx's pages are read from it by nobody) is left as it was.
    assert stat.S_IMODE(os.stat(tmp_path / POD).st_mode) == 0o755


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"pod": 'evil"\nserver=8.8.8.8'}, "dnsmasq: bad pod name"),
        ({"node": "node a"}, "dnsmasq: bad node name"),
        ({"ip": "10.244.1"}, "dnsmasq: bad pod address '10.244.1'"),
        ({"user": "no body"}, "dnsmasq: bad user"),
        ({"pod": "p" * 250}, "dnsmasq: TXT text too long"),
    ],
)
def test_bad_values_are_one_line_usage_errors(tmp_path, over, message):
    with pytest.raises(UsageError) as exc:
        _render(tmp_path, **over)
    assert exc.value.exit_code == 2
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


@pytest.mark.parametrize("port", [0, 65536, -1, True, "53"])
def test_bad_ports(tmp_path, port):
    with pytest.raises(UsageError, match="dnsmasq: bad UDP port") as exc:
        dnsmasq.files(tmp_path, port)
    assert exc.value.exit_code == 2


def test_run_as_nobody_here():
    assert dnsmasq.run_as() == ("nobody", "nogroup")


# --- the query log -------------------------------------------------------------------

# Real lines of dnsmasq 2.90 with log-queries=extra (start-up and answers included).
LOG = """\
Dec  5 05:12:03 dnsmasq[6398]: started, version 2.90 cachesize 150
Dec  5 05:12:03 dnsmasq[6398]: warning: no upstream servers configured
Dec  5 05:12:12 dnsmasq[6398]: 1 10.199.250.2/35253 query[TXT] whoami.lab from 10.199.250.2
Dec  5 05:12:12 dnsmasq[6398]: 1 10.199.250.2/35253 config whoami.lab is <TXT>
Dec  5 05:12:12 dnsmasq[6398]: 2 10.199.250.3/59967 query[TXT] whoami.lab from 10.199.250.3
Dec  5 05:12:12 dnsmasq[6398]: 2 10.199.250.3/59967 config whoami.lab is <TXT>
Dec  5 05:12:12 dnsmasq[6398]: 3 10.199.250.3/59967 query[A] example.com from 10.199.250.3
Dec  5 05:12:12 dnsmasq[6398]: 3 10.199.250.3/59967 config error is REFUSED (EDE: not ready)
Dec 15 05:12:13 dnsmasq[6398]: 4 fd00:199::2/40000 query[TXT] WhoAmI.lab from fd00:199::2
"""


def test_parse_query_line():
    e = query_log.parse_line(LOG.splitlines()[2], "p1")
    assert e == query_log.QueryEntry(
        pod="p1", time="Dec  5 05:12:12", pid=6398, serial=1, client_addr="10.199.250.2",
        client_port=35253, qtype="TXT", name="whoami.lab",
    )
    assert [query_log.parse_line(line, "p1") for line in LOG.splitlines()[:2]] == [None, None]
    assert query_log.parse_line(LOG.splitlines()[3], "p1") is None  # an answer, not a query


def test_counts_since_offsets_on_real_files(tmp_path):
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_text(LOG)
    logs = {str(a): "pod-a", str(b): "pod-b"}  # b not written yet
    marks = query_log.offsets(logs)
    assert marks == {str(a): len(LOG), str(b): 0}
    with a.open("a") as f:
        f.write(LOG)
        f.write("Dec  5 05:12:14 dnsmasq[6398]: 9 10.199.250.2/1234 query[TX")  # torn
    b.write_text(LOG.splitlines()[2] + "\n")
    digests = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in logs}
    entries = query_log.read_since(logs, marks)
    assert {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in logs} == digests
    assert len(entries) == 5  # 4 from a (the torn line waits), 1 from b
    whoami = query_log.for_name(entries, "whoami.lab.")
    assert query_log.count_by_pod(whoami) == {"pod-a": 3, "pod-b": 1}
    assert query_log.count_by_client(whoami) == {
        "10.199.250.2": 2, "10.199.250.3": 1, "fd00:199::2": 1
    }
    assert query_log.read_since({str(tmp_path / "gone.log"): "x"}, {}) == []
