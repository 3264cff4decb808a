"""Traffic report math, wrk parsing, target choice, access-log parsing. No
root needed."""

from __future__ import annotations

import json

import pytest

from tracer.errors import UsageError
from tracer.kube.manifest import load_manifest
from tracer.lab import access_log, load_math, traffic
from tracer.lab.plan import DEFAULT_MANIFEST, make_plan


@pytest.fixture(scope="module")
def planned():
    return make_plan(load_manifest(DEFAULT_MANIFEST))


def test_percentile_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert load_math.percentile(values, 50) == 50
    assert load_math.percentile(values, 90) == 90
    assert load_math.percentile(values, 99) == 99
    assert load_math.percentile(values, 100) == 100
    assert load_math.percentile([7.0], 99) == 7
    assert load_math.percentile([], 50) == 0


def test_latency_summary_and_rate():
    s = load_math.latency_summary([0.001, 0.002, 0.003, 0.010])
    assert s == {"p50": 2.0, "p90": 10.0, "p99": 10.0, "max": 10.0, "mean": 4.0}
    assert load_math.latency_summary([]) == {}
    assert load_math.rate(200, 0.5) == 400.0
    assert load_math.rate(5, 0) == 0.0


def test_pod_of_body():
    body = b"<p>pod=nginx-demo-1-abc-xyz12 ip=10.217.120.72 node=node-a namespace=default</p>"
    assert load_math.pod_of_body(body) == "nginx-demo-1-abc-xyz12"
    assert load_math.pod_of_body(b"<html>nothing</html>") is None


WRK = """\
Running 2s test @ http://192.168.64.57:8088/
  2 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   312.12us  590.01us  12.50ms   94.12%
    Req/Sec     5.60k   412.33     6.20k    70.00%
  Latency Distribution
     50%  76.00us
     75%  137.00us
     90%  301.00us
     99%    2.27ms
  22283 requests in 2.00s, 11.31MB read
  Socket errors: connect 0, read 3, write 0, timeout 1
  Non-2xx or 3xx responses: 2
Requests/sec:  11141.50
Transfer/sec:      5.65MB
"""


def test_parse_wrk():
    r = traffic.parse_wrk(WRK)
    assert r["requests"] == 22283 and r["seconds"] == 2.0
    assert r["latency_ms"] == {"p50": 0.076, "p75": 0.137, "p90": 0.301, "p99": 2.27}
    assert r["errors"] == {"read": 3, "timeout": 1}
    assert r["non2xx"] == 2


def test_resolve_target(planned):
    t = traffic.resolve_target(planned, "external-ip")
    assert (t.address, t.port, t.source_netns, t.service) == (
        "192.168.64.57", 8088, "lab-client", "nginx-demo-1")
    t = traffic.resolve_target(planned, "node-port", node="b")
    assert (t.address, t.port, t.service) == ("192.168.64.58", 30089, "nginx-demo-2")
    t = traffic.resolve_target(planned, "cluster-ip")
    assert (t.address, t.port) == ("10.96.88.88", 8088)
    assert t.source == planned.pods[0].name and t.source_netns == planned.pods[0].netns
    t = traffic.resolve_target(planned, "cluster-ip", service="nginx-demo-2",
                               source=planned.pods[1].name)
    assert (t.address, t.port, t.source) == ("10.96.88.89", 8089, planned.pods[1].name)
    assert t.url == "http://10.96.88.89:8089/"
    with pytest.raises(UsageError, match="only reachable inside the cluster"):
        traffic.resolve_target(planned, "cluster-ip", source="client")
    with pytest.raises(UsageError, match="unknown target"):
        traffic.resolve_target(planned, "pod")
    with pytest.raises(UsageError, match="no lab service has a node port"):
        traffic.resolve_target(planned, "node-port", service="nginx-demo-1")


def test_format_result_mentions_everything():
    r = traffic.TrafficResult(
        target="external-ip", service="nginx-demo-1", url="http://192.168.64.57:8088/",
        source="client", source_netns="lab-client", engine="exact", keepalive=False,
        concurrency=4, requested=10, ok=9, failed=1, errors={"timeout": 1},
        status_codes={"200": 9}, connections=10, by_pod={"p1": 5, "p2": 4},
        served_by_pod={"p1": 5, "p2": 4}, duration_s=0.5, requests_per_s=18.0,
        latency_ms={"p50": 1.0},
    )
    text = traffic.format_result(r)
    assert "ok 9  failed 1" in text and "timeout 1" in text and "p1" in text
    assert r.served == 9
    assert json.loads(json.dumps(r.to_dict()))["by_pod"] == {"p1": 5, "p2": 4}


LINE = ('{"time":"2026-11-25T10:42:24+00:00","msec":1795603344.835,'
        '"remote_addr":"192.168.64.57","remote_port":38424,"server_addr":"10.217.121.8",'
        '"server_port":80,"connection":7,"connection_requests":1,"request":"GET / HTTP/1.1",'
        '"status":200,"bytes_sent":460,"request_time":0.000,"pod":"p1"}')


def test_access_log_parse_line():
    e = access_log.parse_line(LINE)
    assert e is not None
    assert (e.pod, e.remote_addr, e.remote_port, e.connection, e.status) == (
        "p1", "192.168.64.57", 38424, 7, 200)
    assert e.new_connection
    assert access_log.parse_line("") is None
    assert access_log.parse_line('{"torn": ') is None


def test_access_log_read_since_skips_a_torn_last_line(planned, tmp_path):
    from dataclasses import replace

    from tracer.lab.plan import nginx_files

    pods = tuple(replace(p, nginx=nginx_files(tmp_path, p.name)) for p in planned.pods)
    state = replace(planned, run_dir=str(tmp_path), pods=pods)
    for p in pods:
        (tmp_path / "pods" / p.name).mkdir(parents=True)
    first = pods[0].nginx.access_log
    with open(first, "w") as f:
        f.write(LINE.replace('"p1"', f'"{pods[0].name}"') + "\n")
    marks = access_log.offsets(state)
    with open(first, "a") as f:
        f.write(LINE.replace('"p1"', f'"{pods[0].name}"') + "\n" + LINE[:40])
    new = access_log.read_since(marks, state)
    assert len(new) == 1
    assert access_log.count_by_pod(new) == {pods[0].name: 1}
    assert len(access_log.read_access_log(pods[0])) == 2
    assert access_log.read_access_log(pods[1]) == []
