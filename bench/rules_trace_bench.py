"""What `--rules` costs: TCP connections per second through a node with
kube-proxy's iptables-mode rules (iptables-nft), without and with the
tracer's trace table and a reader draining the trace messages, side by side
in one run. Private namespaces only (tests/rules/topology.py); run as root:

    PYTHONPATH=$PWD python bench/rules_trace_bench.py [--connections N] [--rounds R]

Every connection is the Service's (its VIP), so every packet is traced: the
worst case. Rounds alternate off/on so drift hits both alike."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time

from tests.rules.topology import POD_IP, POD_PORT, TCP, VIP, VIP_PORT, Topology
from tracer.kube.iptables_render import render_nat_table
from tracer.kube.manifest import SHIPPED_MANIFEST, load_manifest
from tracer.kube.model import Endpoint
from tracer.rules import RuleTracer

# The client runs in its own process (so the tracer's reader thread does not
# share its interpreter lock) and closes with RST (SO_LINGER 0) so that
# TIME_WAIT sockets do not pile up across rounds.
CLIENT = """
import socket, struct, sys, time
n = int(sys.argv[1]); start = time.perf_counter()
for _ in range(n):
    s = socket.socket(); s.settimeout(2)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.connect((sys.argv[2], int(sys.argv[3]))); s.close()
print(n / (time.perf_counter() - start))
"""


def connections_per_second(topo: Topology, n: int) -> float:
    out = subprocess.run(["ip", "netns", "exec", topo.client, sys.executable, "-c", CLIENT, str(n), VIP,
                          str(VIP_PORT)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"the client failed: {out.stderr.strip().splitlines()[-1:]}")
    return float(out.stdout)


def traced(topo: Topology, n: int) -> tuple[float, int, int]:
    with RuleTracer(topo.path(topo.node), [(VIP, VIP_PORT, TCP), (POD_IP, POD_PORT, TCP)]) as tracer:
        count, stop = [0], threading.Event()

        def drain() -> None:
            while not stop.is_set():
                count[0] += len(tracer.poll(0.05))

        reader = threading.Thread(target=drain)
        reader.start()
        try:
            rate = connections_per_second(topo, n)
        finally:
            time.sleep(0.2)
            stop.set()
            reader.join()
        return rate, count[0], tracer.overruns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    services = load_manifest(SHIPPED_MANIFEST).services
    rules = render_nat_table(services, {s.key: [Endpoint(POD_IP, POD_PORT)] for s in services},
                             node_ips=["192.168.64.57"])
    off, on, events, lost = [], [], 0, 0
    with Topology("-bench") as topo:
        topo.in_node("iptables-restore", "--noflush", input=rules)
        connections_per_second(topo, 100)  # warm up
        for _ in range(args.rounds):
            off.append(connections_per_second(topo, args.connections))
            rate, seen, overruns = traced(topo, args.connections)
            on.append(rate)
            events, lost = events + seen, lost + overruns
    a, b = statistics.median(off), statistics.median(on)
    print(f"connections per round: {args.connections}, rounds: {args.rounds}")
    print(f"{'':14}{'conn/s (median)':>16}{'rounds':>30}")
    print(f"{'without':14}{a:16.0f}   {' '.join(f'{r:.0f}' for r in off)}")
    print(f"{'with --rules':14}{b:16.0f}   {' '.join(f'{r:.0f}' for r in on)}")
    print(f"ratio with/without: {b / a:.2f}; trace events read: {events} "
          f"({events / (args.rounds * args.connections):.1f} per connection); overruns: {lost}")


if __name__ == "__main__":
    main()
