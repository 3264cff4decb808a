#!/usr/bin/env python3
"""A stand-in for kubectl, for tests of `tracer cluster capture`: it records
every call and answers as a cluster would whose capture pods ran and left
the capture directories found under $FAKE_KUBECTL_SERVE/<node>/.

Environment:
  FAKE_KUBECTL_LOG    file: one JSON line (argv) per call
  FAKE_KUBECTL_STATE  directory: what `apply` created (kept between calls)
  FAKE_KUBECTL_SERVE  directory: <node>/ capture dirs (and <node>.summary.json)
  FAKE_KUBECTL_NODES  comma-separated node names (default: the served ones)
  FAKE_KUBECTL_FAIL   "VERB:message": that verb fails with message on stderr
  FAKE_KUBECTL_DONE   exit code the captures report (default 0)
  FAKE_KUBECTL_WAITING  a container waiting reason (e.g. ImagePullBackOff)
Only the standard library: it runs under any python3."""

import io
import json
import os
import re
import sys
import tarfile
from pathlib import Path

argv = sys.argv[1:]
with open(os.environ["FAKE_KUBECTL_LOG"], "a") as log:
    log.write(json.dumps(argv) + "\n")

state = Path(os.environ["FAKE_KUBECTL_STATE"])
state.mkdir(parents=True, exist_ok=True)
serve = Path(os.environ.get("FAKE_KUBECTL_SERVE", "/nonexistent"))

args = []
it = iter(argv)
for a in it:
    if a in ("--context", "--namespace", "-n"):
        next(it, None)
        continue
    args.append(a)
verb = args[0] if args else ""

fail = os.environ.get("FAKE_KUBECTL_FAIL", "")
if fail and fail.split(":", 1)[0] == verb:
    sys.stderr.write("some noise first\n" + fail.split(":", 1)[1] + "\n")
    sys.exit(1)


def nodes():
    given = os.environ.get("FAKE_KUBECTL_NODES")
    if given:
        return given.split(",")
    return sorted(p.name for p in serve.iterdir() if p.is_dir())


def jobs():
    path = state / "jobs.json"
    return json.loads(path.read_text()) if path.exists() else []


def pod_node(pod):
    for job in jobs():
        if pod == job["job"] + "-x7k2p":
            return job["node"]
    sys.stderr.write(f'Error from server (NotFound): pods "{pod}" not found\n')
    sys.exit(1)


if verb == "get" and args[1] == "nodes":
    print(json.dumps({"items": [{"metadata": {"name": n}} for n in nodes()]}))
elif verb == "apply":
    created = jobs()
    for doc in sys.stdin.read().split("\n---\n"):
        # The template quotes its string fields (deploy/capture-job.yaml).
        name = re.search(r'^  name: "?([^"\s]+)"?$', doc, re.MULTILINE).group(1)
        node = re.search(r'^      nodeName: "?([^"\s]+)"?$', doc, re.MULTILINE).group(1)
        created.append({"job": name, "node": node, "yaml": doc})
        print(f"job.batch/{name} created")
    (state / "jobs.json").write_text(json.dumps(created))
elif verb == "get" and args[1] == "pods":
    waiting = os.environ.get("FAKE_KUBECTL_WAITING")
    items = []
    for job in jobs():
        status = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                  "containerStatuses": [{"name": "tracer", "state": {"running": {}}}]}
        if waiting:
            status = {"phase": "Pending", "conditions": [],
                      "containerStatuses": [{"name": "tracer", "state": {"waiting": {
                          "reason": waiting, "message": "pull access denied"}}}]}
        items.append({"metadata": {"name": job["job"] + "-x7k2p"},
                      "spec": {"nodeName": job["node"]}, "status": status})
    print(json.dumps({"items": items}))
elif verb == "exec":
    pod = args[1]
    node = pod_node(pod)
    command = args[args.index("--") + 1:]
    if command[0] == "sh" and ".done" in command[2]:
        print(os.environ.get("FAKE_KUBECTL_DONE", "0"))
    elif command[0] == "sh" and "capture.log" in command[2]:
        print("tracer: error: no service 'nginx-demo-9' in the kube-proxy rules")
    elif command[0] == "tar":
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(serve / node, arcname=node)
            summary = serve / f"{node}.summary.json"
            if summary.exists():
                tar.add(summary, arcname=f"{node}.summary.json")
        sys.stdout.buffer.write(buffer.getvalue())
    elif command[0] == "touch":
        (state / f"collected-{node}").touch()
    else:
        sys.stderr.write(f"fake kubectl: unexpected exec {command}\n")
        sys.exit(1)
elif verb == "logs":
    print("tracer: error: something went wrong")
elif verb == "delete":
    for job in jobs():
        print(f'job.batch "{job["job"]}" deleted')
    (state / "deleted").write_text(json.dumps(args))
else:
    sys.stderr.write(f"fake kubectl: unexpected call {argv}\n")
    sys.exit(1)
