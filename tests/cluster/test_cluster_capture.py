"""`tracer cluster capture` against a FAKE kubectl (tests/cluster/fake_kubectl.py)
that serves synthetic two-node captures of the seed scenario, written by the
capture engine's own writer: the kubectl calls made, the Job manifests
applied, collection, the merge (the same code as `tracer correlate`), and
every error path's one line. The real-capture variant is
test_cluster_capture_lab.py. None of this has run against a real cluster."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.analysis.synthetic import two_node_captures
from tests.cluster.fake_cluster import FakeCluster, make_fake_cluster
from tracer.analysis.correlate import merge
from tracer.capfile import load
from tracer.cluster import jobs
from tracer.cluster.capture import ClusterCaptureOptions, run_cluster_capture
from tracer.errors import UsageError

NODES = ("lab-node-a", "lab-node-b")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("synthetic")
    _, paths = two_node_captures(root, connections=60)
    return {node: str(path) for node, path in paths.items()}


@pytest.fixture
def fake(tmp_path, synthetic) -> FakeCluster:
    return make_fake_cluster(tmp_path / "fake", {n: synthetic[n] for n in NODES})


def test_captures_every_node_collects_and_merges(fake, synthetic, tmp_path):
    out = tmp_path / "out"
    proc = fake.run("--svc", "nginx-demo-1", "--duration", "0.2", "-o", str(out),
                    "--image", "registry.example/tracer:0.1")
    assert proc.returncode == 0, proc.stderr
    assert "cluster capture" in proc.stdout and "merged ->" in proc.stdout

    # Each node's capture came back whole, under nodes/<node>.
    for node in NODES:
        got, served = load(out / "nodes" / node), load(synthetic[node])
        assert len(got.events) == len(served.events) and got.meta["node"] == served.meta["node"]
    # The merge is tracer correlate's, on the same captures.
    merged = load(out / "merged")
    direct = merge([synthetic[n] for n in NODES], tmp_path / "direct")
    assert len(merged.events) == direct.events == sum(len(load(synthetic[n]).events) for n in NODES)
    assert merged.meta["correlation"]["cross_node_links"] == direct.links > 0

    # The kubectl calls, in order, all in the tracer namespace but get nodes.
    calls = fake.calls()
    verbs = [c[2] if c[:1] == ["--namespace"] else c[0] for c in calls]
    assert verbs[:3] == ["get", "apply", "get"]
    assert calls[0] == ["get", "nodes", "-o", "json"]
    assert calls[1] == ["--namespace", "tracer", "apply", "-f", "-"]
    run_id = calls[2][-3].split("=", 1)[1]
    assert calls[2] == ["--namespace", "tracer", "get", "pods", "-l", f"tracer.dev/run={run_id}",
                        "-o", "json"]
    tars = [c for c in calls if "tar" in c]
    assert len(tars) == 2 and all(c[c.index("--") + 1:][:4] == ["tar", "-C", "/captures", "-cf"]
                                  for c in tars)
    assert calls[-1] == ["--namespace", "tracer", "delete", "job", "-l", f"tracer.dev/run={run_id}",
                         "--wait=false"]
    for node in NODES:
        assert (fake.state / f"collected-{node}").exists()  # each pod was told to end

    # One Job per node, pinned to it, least privilege, the image and arguments given.
    applied = fake.applied_jobs()
    assert [j["spec"]["template"]["spec"]["nodeName"] for j in applied] == list(NODES)
    for job in applied:
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == "registry.example/tracer:0.1"
        script = container["args"][0]
        assert 'tracer capture --svc "nginx-demo-1" --node "$NODE_NAME" --duration 0.2' in script
        sc = container["securityContext"]
        assert sc["privileged"] is False and sc["capabilities"]["drop"] == ["ALL"]
        assert set(sc["capabilities"]["add"]) == {"BPF", "PERFMON", "NET_ADMIN"}
        assert pod["hostNetwork"] is True and pod["hostPID"] is False
        assert job["metadata"]["labels"]["tracer.dev/run"] == run_id


def test_selected_nodes_only(fake, tmp_path):
    out = tmp_path / "one"
    proc = fake.run("--svc", "default/nginx-demo-1", "--nodes", "lab-node-b", "--duration", "0.1",
                    "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "one node: nothing to merge" in proc.stdout
    assert [p.name for p in (out / "nodes").iterdir() if p.is_dir()] == ["lab-node-b"]
    assert [j["spec"]["template"]["spec"]["nodeName"] for j in fake.applied_jobs()] == ["lab-node-b"]


def one_error_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("tracer: error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_unknown_node_lists_the_nodes(fake, tmp_path):
    proc = fake.run("--svc", "nginx-demo-1", "--nodes", "worker-9", "--duration", "1",
                    "-o", str(tmp_path / "x"))
    assert proc.returncode == 2
    assert one_error_line(proc) == ("tracer: error: no node worker-9 in the cluster "
                                    "(nodes: lab-node-a, lab-node-b)")
    assert fake.applied_jobs() == []  # nothing started


def test_missing_kubectl_is_one_line_naming_it(fake, tmp_path):
    (fake.bin / "kubectl").unlink()
    env_path = str(fake.bin)  # a PATH with no kubectl on it
    proc = fake.run("--svc", "nginx-demo-1", "--duration", "1", "-o", str(tmp_path / "x"),
                    PATH=env_path)
    assert proc.returncode == 4
    assert one_error_line(proc).startswith("tracer: error: 'kubectl' not found")
    proc = fake.run("--svc", "nginx-demo-1", "--duration", "1", "-o", str(tmp_path / "x"),
                    "--kubectl", str(tmp_path / "no-such-kubectl"))
    assert proc.returncode == 4 and "no-such-kubectl' not found" in one_error_line(proc)


def test_kubectl_failure_is_one_line(fake, tmp_path):
    proc = fake.run("--svc", "nginx-demo-1", "--duration", "1", "-o", str(tmp_path / "x"),
                    FAKE_KUBECTL_FAIL="get:error: You must be logged in to the server (Unauthorized)")
    assert proc.returncode == 1
    assert one_error_line(proc) == ("tracer: error: kubectl get nodes -o: error: You must be "
                                    "logged in to the server (Unauthorized)")
    proc = fake.run("--svc", "nginx-demo-1", "--duration", "1", "-o", str(tmp_path / "y"),
                    FAKE_KUBECTL_FAIL="apply:Error from server (Forbidden): jobs.batch is forbidden")
    assert proc.returncode == 1
    assert one_error_line(proc).endswith("jobs.batch is forbidden")
    assert (fake.state / "deleted").exists()  # cleaned up even so


def test_a_failed_node_capture_says_why_and_cleans_up(fake, tmp_path):
    proc = fake.run("--svc", "nginx-demo-9", "--duration", "0.1", "-o", str(tmp_path / "x"),
                    FAKE_KUBECTL_DONE="2")
    assert proc.returncode == 1
    assert one_error_line(proc) == ("tracer: error: capture on lab-node-a failed (exit 2): "
                                    "tracer: error: no service 'nginx-demo-9' in the kube-proxy rules")
    assert json.loads((fake.state / "deleted").read_text())[:2] == ["delete", "job"]


def test_a_pod_that_cannot_start(fake, tmp_path):
    proc = fake.run("--svc", "nginx-demo-1", "--duration", "1", "-o", str(tmp_path / "x"),
                    FAKE_KUBECTL_WAITING="ImagePullBackOff")
    assert proc.returncode == 1
    assert one_error_line(proc).startswith(
        "tracer: error: capture on lab-node-a did not start: ImagePullBackOff: pull access denied")


def test_output_must_be_new(fake, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    opts = ClusterCaptureOptions(service="nginx-demo-1", duration=1, output=tmp_path / "full")
    with pytest.raises(UsageError, match="not empty"):
        run_cluster_capture(opts)
    with pytest.raises(UsageError, match="duration"):
        run_cluster_capture(ClusterCaptureOptions(service="x", duration=0, output=tmp_path / "n"))


@pytest.mark.parametrize("field,value,message", [
    ("service", 'x"; rm -rf /', "NAMESPACE"),
    ("node", "Node_A", "node name"),
    ("image", "img with space", "image"),
])
def test_job_fields_cannot_change_the_manifest(field, value, message):
    spec = jobs.JobSpec(run_id="abc123", node="worker-1", service="nginx-demo-1", duration=5)
    spec = jobs.JobSpec(**{**spec.__dict__, field: value})
    with pytest.raises(UsageError, match=message):
        jobs.render_job(spec, jobs.load_template())


def test_long_node_names_make_valid_job_names():
    spec = jobs.JobSpec(run_id="abc123", node="ip-10-0-0-1." + "x" * 80 + ".internal",
                        service="nginx-demo-1", duration=5)
    name = spec.job_name
    assert len(name) <= 63 and name[-1].isalnum()
    doc = yaml.safe_load(jobs.render_job(spec, jobs.load_template()))
    assert doc["metadata"]["name"] == name


def test_numeric_run_ids_and_node_names_stay_strings(tmp_path):
    """token_hex(3) is digits only one time in ~17 (801026 failed the fake
    cluster's label check); unquoted, YAML reads it as a number, which the
    API server refuses as a label value."""
    spec = jobs.JobSpec(run_id="801026", node="123", service="nginx-demo-1", duration=5)
    doc = yaml.safe_load(jobs.render_job(spec, jobs.load_template()))
    pod = doc["spec"]["template"]
    assert doc["metadata"]["labels"]["tracer.dev/run"] == "801026"
    assert pod["metadata"]["labels"] == {"app.kubernetes.io/name": "tracer-capture",
                                         "tracer.dev/run": "801026", "tracer.dev/node": "123"}
    assert pod["spec"]["nodeName"] == "123"
    # A template that leaves a field unquoted is refused, not applied.
    text = (jobs.DEPLOY_DIR / jobs.JOB_TEMPLATE).read_text()
    (tmp_path / jobs.JOB_TEMPLATE).write_text(text.replace('"${run_id}"', "${run_id}"))
    with pytest.raises(UsageError, match="not a string"):
        jobs.render_job(spec, jobs.load_template(tmp_path))
