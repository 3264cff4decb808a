"""Analysis of capture files: packet journeys across nodes, NAT latency, Service fairness.

Reads what ``tracer capture`` writes (tracer.capfile); needs neither root
nor BCC. Modules, one job each:

- events     load_events(paths) -> EventSet: captures as one normalized frame
- packets    assemble(EventSet) -> Packets: events grouped into packets
             (skb + time within a node, fingerprint across nodes), hops in causal order
- clocks     node clock offsets from crossing traffic (NTP-style bounds)
- flows      parse_flow("a:p->b:q/tcp"), packet selection
- timeline   journey(packets, id) / format_journey: a packet hop by hop
- correlate  merge(paths, out): per-node captures -> one capture on one clock
- latency    analyze(packets): NAT hook time, node traversal, cross-node hop
- fairness   analyze(packets): new connections per endpoint vs kube-proxy's promise
- fairness_text  format_text(report): what `tracer fairness` prints
- diagnose   diagnose(captures) -> Diagnosis: each connection's or flow's outcome, failures grouped
- diagnose_text  format_text(diagnosis): what `tracer diagnose` prints
- endpoint_placement  endpoint_nodes(...): on which node each endpoint lives
- service    the promise: endpoints and shares from the Service metadata
- promises   the connections counted (dnat_decisions), each one's promised endpoints and shares
- affinity   session affinity: first connections per client judged, the rest checked sticky
- request_counts  requests per connection (keep-alive pinning)
- stats      chi-square (no scipy), Wilson interval, Jain index
- pcap       export_pcapng(source, path): one synthesized packet per event
- plots      PNG charts (matplotlib, Agg)     report   build(paths, dir): Markdown + HTML
- key_figures  summarize(captures): the few figures `tracer demo` prints
- commands   what each CLI command prints (tracer/cli.py calls these)

The names below are the stable entry points; plots and report are imported
on use (they pull in matplotlib).
"""

from tracer.analysis.correlate import MergeResult, merge
from tracer.analysis.events import EventSet, load_events
from tracer.analysis.flows import FlowSpec, parse_flow
from tracer.analysis.packets import PacketOptions, Packets, assemble
from tracer.analysis.pcap import export_pcapng
from tracer.analysis.timeline import format_journey, journey, journeys, packets_of, select

__all__ = [
    "EventSet",
    "FlowSpec",
    "MergeResult",
    "PacketOptions",
    "Packets",
    "assemble",
    "export_pcapng",
    "format_journey",
    "journey",
    "journeys",
    "load_events",
    "merge",
    "packets_of",
    "parse_flow",
    "select",
]
