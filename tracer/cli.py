"""Command line: parses arguments and calls the library. Every library error
(TracerError) becomes one line on stderr and its exit code; nothing here does
real work."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from pathlib import Path

import click

from tracer import __version__
from tracer.cluster.cli import cluster as _cluster_commands
from tracer.errors import TracerError
from tracer.lab.cli import lab as _lab_commands


class _ReaderLeft(Exception):
    """stdout's reader closed it (`tracer ... | head -1`)."""


class _TracerGroup(click.Group):
    """Lets a closed stdout reach main() as itself: click would otherwise
    catch the EPIPE and exit 1 without a word."""

    def invoke(self, ctx: click.Context):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except BrokenPipeError as exc:
            raise _ReaderLeft() from exc


@click.group(cls=_TracerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tracer")
def cli() -> None:
    """eBPF packet tracer for Kubernetes nodes."""


@cli.command("services")
@click.option("--json", "as_json", is_flag=True, help="Print the resolved services as JSON.")
@click.option(
    "--netns",
    metavar="NAME|PATH",
    help="Read the rules of this network namespace (a name under /run/netns, or a path).",
)
def services_command(as_json: bool, netns: str | None) -> None:
    """List the Services kube-proxy programmed in the nat table."""
    import json

    from tracer.kube.rules_source import format_services_table, services_in_netns

    services = services_in_netns(netns)
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in services], indent=2))
    else:
        click.echo(format_services_table(services))


# `tracer lab ...`: the network-namespace lab (tracer/lab/cli.py).
cli.add_command(_lab_commands)
# `tracer cluster ...`: many nodes of a real cluster through kubectl (tracer/cluster/cli.py).
cli.add_command(_cluster_commands)


@cli.command("capture")
@click.option("--svc", "service", required=True, metavar="[NAMESPACE/]NAME",
              help="Service to trace, resolved from the node's kube-proxy rules.")
@click.option("--netns", metavar="NAME|PATH",
              help="Capture as the node whose network namespace this is (e.g. lab-node-a).")
@click.option("--node", metavar="NAME", help="Node name to record (default: netns name or hostname).")
@click.option("-o", "--output", type=click.Path(path_type=Path), metavar="DIR",
              help="Write the capture (a directory of Parquet parts + metadata).")
@click.option("--force", is_flag=True, help="Overwrite an existing capture directory.")
@click.option("--mode", type=click.Choice(["events", "hist"]), default="events", show_default=True,
              help="events: every packet; hist: only in-kernel NAT latency histograms (cheapest).")
@click.option("--duration", type=float, metavar="S", help="Stop after S seconds.")
@click.option("--count", type=int, metavar="N", help="Stop after N events.")
@click.option("-q", "--quiet", is_flag=True, help="No per-event lines; summary only.")
@click.option("--backend", metavar="SPEC",
              help="Force backends: 'kprobe' (wherever possible) or 'nat=kprobe,rx=tracepoint'.")
@click.option("--probes", default="rx,nat,tx,drop", show_default=True,
              help="Probe points to attach, comma-separated.")
@click.option("--client", metavar="IP", help="Only flows of this client address.")
@click.option("--endpoint", metavar="IP", help="Only flows to this pod/endpoint address.")
@click.option("--port", type=int, metavar="PORT", help="Only packets with this port (any side, any stage).")
@click.option("--proto", metavar="PROTO", help="Only this protocol (tcp, udp, sctp, icmp).")
@click.option("--ringbuf-mb", type=int, default=16, show_default=True,
              help="Ring buffer size in MiB (a power of two).")
@click.option("--summary-json", type=click.Path(path_type=Path), metavar="FILE",
              help="Also write the summary and counters as JSON.")
@click.option("--max-size", metavar="SIZE",
              help="Bound the capture's files (e.g. 2G): drop the oldest segments (counted), "
                   "or stop with --on-full stop.")
@click.option("--on-full", type=click.Choice(["drop-oldest", "stop"]), default="drop-oldest",
              show_default=True, help="What --max-size does when reached.")
@click.option("--keep", type=int, metavar="N", help="Keep only the newest N segments (rotation).")
@click.option("--segment-size", default="64M", show_default=True, metavar="SIZE",
              help="A segment (one file) stops growing at this size.")
@click.option("--segment-seconds", type=float, default=3600, show_default=True, metavar="S",
              help="... or when it spans this long.")
@click.option("--rules", is_flag=True,
              help="Also record every netfilter rule the Service's packets walk, with its verdict "
                   "(nf_tables tracing; iptables-nft or nftables, not legacy xtables). Costs: "
                   "see docs/benchmarks.md.")
# Fault injection for the tests of unmeasured NAT hook times (bpf/nat.bpf.h).
@click.option("--fault-nat-entry-one-in", "fault_nat_entry_one_in", type=int, default=1, hidden=True)
def capture_command(service: str, netns: str | None, node: str | None, output: Path | None,
                    force: bool, mode: str, duration: float | None, count: int | None,
                    quiet: bool, backend: str | None, probes: str, client: str | None,
                    endpoint: str | None, port: int | None, proto: str | None, ringbuf_mb: int,
                    summary_json: Path | None, max_size: str | None, on_full: str,
                    keep: int | None, segment_size: str, segment_seconds: float, rules: bool,
                    fault_nat_entry_one_in: int) -> None:
    """Trace every packet of one Service as this node handles it."""
    from tracer.capture.live import StatusLine
    from tracer.capture.options import parse_size
    from tracer.capture.session import Callbacks, CaptureOptions, run_capture

    opts = CaptureOptions(
        service=service, netns=netns, node=node, output=output, force=force, mode=mode,
        duration=duration, count=count, quiet=quiet, backend=backend,
        probes=tuple(p.strip() for p in probes.split(",") if p.strip()), client=client,
        endpoint=endpoint, port=port, proto=proto, ringbuf_mb=ringbuf_mb,
        fault_nat_entry_one_in=fault_nat_entry_one_in, summary_json=summary_json,
        max_size=None if max_size is None else parse_size(max_size, "--max-size"),
        on_full=on_full, keep=keep, segment_size=parse_size(segment_size, "--segment-size"),
        segment_seconds=segment_seconds, rules=rules,
    )
    status = StatusLine(lambda text, nl: click.echo(text, err=True, nl=nl), sys.stderr.isatty())
    callbacks = Callbacks(line=click.echo, status=status.status, notice=status.notice,
                          ready=lambda s: click.echo(s, err=True))
    try:
        result = run_capture(opts, callbacks)
    finally:
        status.end_line()
    if summary_json is not None:  # first: stdout may be closed (`| head`)
        result.write_summary_json(summary_json)
    click.echo(result.text)


@cli.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def doctor_command(as_json: bool) -> int:
    """What this kernel offers and which backend each probe point would use."""
    from tracer.doctor import NOT_ROOT, run_doctor

    report = run_doctor()
    click.echo(json.dumps(report.to_dict(), indent=1) if as_json else report.render())
    if not report.root:
        click.echo(f"tracer: error: {NOT_ROOT}", err=True)
    return report.exit_code


# ---- analysis (tracer.analysis): reads captures; needs neither root nor BCC.
# Each command parses its arguments and prints what tracer.analysis.commands yields.


def _echo_all(lines, notes=None) -> None:
    for line in lines:
        click.echo(line)
    for note in notes or []:
        click.echo(f"tracer: {note}", err=True)


@cli.command()
@click.argument("captures", nargs=-1, required=True)
@click.option("--packet", type=int, help="Show this packet (ids as printed: 1, 2, ...).")
@click.option("--flow", help="Packets of a flow: SRC[:PORT]->DST[:PORT][/PROTO], parts optional.")
@click.option("--limit", type=int, default=20, show_default=True, help="Packets to show; 0 = all.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per packet, one per line.")
@click.option("--plot", type=click.Path(dir_okay=False),
              help="Also draw swimlanes to this file (.png, .svg or .pdf).")
def timeline(captures, packet, flow, limit, as_json, plot) -> None:
    """What happened to each packet, hop by hop, across nodes."""
    from tracer.analysis import commands

    notes: list[str] = []
    _echo_all(commands.timeline(captures, packet=packet, flow=flow, limit=limit, as_json=as_json,
                                plot=plot, notes=notes), notes)


@cli.command()
@click.argument("captures", nargs=-1, required=True)
@click.option("-o", "--output", "out", required=True, type=click.Path(file_okay=False),
              help="Directory for the merged capture (created 0700).")
@click.option("--force", is_flag=True,
              help="Replace an existing merged capture (once the new one is complete).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document.")
def correlate(captures, out, force, as_json) -> None:
    """Merge per-node captures into one, on one clock estimated from the traffic."""
    from tracer.analysis import commands

    notes: list[str] = []
    _echo_all(commands.correlate(captures, out, force=force, as_json=as_json, notes=notes), notes)


@cli.command()
@click.argument("captures", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the diagnosis as one JSON document.")
def diagnose(captures, as_json) -> None:
    """Which client connections failed, how, and where their packets stopped."""
    from tracer.analysis import commands

    notes: list[str] = []
    _echo_all(commands.diagnose(captures, as_json=as_json, notes=notes), notes)


@cli.command()
@click.argument("captures", nargs=-1, required=True)
@click.option("--plot", type=click.Path(dir_okay=False),
              help="Also plot the distributions to this file (.png, .svg or .pdf).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def latency(captures, plot, as_json) -> None:
    """NAT hook time, node traversal and cross-node hop latency distributions."""
    from tracer.analysis import commands

    notes: list[str] = []
    _echo_all(commands.latency(captures, as_json=as_json, plot=plot, notes=notes), notes)


@cli.command()
@click.argument("captures", nargs=-1, required=True)
@click.option("--plot", type=click.Path(dir_okay=False),
              help="Also chart observed vs promised to this file (.png, .svg or .pdf).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--window", "window_s", type=float, help="Time window for the over-time view, seconds.")
@click.option("--confidence", type=float, default=0.95, show_default=True,
              help="Confidence of the intervals.")
def fairness(captures, plot, as_json, window_s, confidence) -> None:
    """New connections per endpoint against the share kube-proxy's rules promise."""
    from tracer.analysis import commands

    notes: list[str] = []
    _echo_all(commands.fairness(captures, as_json=as_json, plot=plot, window_s=window_s,
                                confidence=confidence, notes=notes), notes)


@cli.command()
@click.argument("capture")
@click.option("--pcap", required=True, type=click.Path(dir_okay=False), help="pcapng file to write.")
@click.option("--payload", type=click.Choice(["omit", "zeros"]), default="omit", show_default=True,
              help="Leave payload out (original length kept) or zero-fill it.")
def export(capture, pcap, payload) -> None:
    """Write a capture as pcapng (one packet per event) for Wireshark or tcpdump."""
    from tracer.analysis import commands

    notes: list[str] = []
    _echo_all(commands.export(capture, pcap, payload=payload, notes=notes), notes)


@cli.command()
@click.argument("captures", nargs=-1, required=True)
@click.option("-o", "--output", "out", required=True, type=click.Path(file_okay=False),
              help="Directory for report.md, report.html and the PNGs (created 0700).")
@click.option("--force", is_flag=True,
              help="Replace an existing report (once the new one is complete).")
def report(captures, out, force) -> None:
    """One page: capture metadata, sample timelines, latency, fairness."""
    from tracer.analysis import commands

    notes: list[str] = []
    _echo_all(commands.report(captures, out, force=force, notes=notes), notes)


@cli.command()
@click.option("-o", "--output", "out", type=click.Path(file_okay=False, path_type=Path),
              default=Path("out/demo"), show_default=True,
              help="Directory for the captures, the merged capture, the report and summary.json.")
@click.option("--requests", type=click.IntRange(min=1), default=400, show_default=True,
              help="Requests sent on new connections (one each).")
@click.option("--keepalive-requests", type=click.IntRange(min=0), default=100, show_default=True,
              help="Requests sent over 4 keep-alive connections.")
@click.option("--fault", "fault", metavar="KIND", default=None,
              help="The broken-Service story instead: inject KIND (`tracer lab fault list`), "
                   "capture, diagnose, clear (default output out/demo-fault-KIND, 40 requests).")
def demo(out, requests, keepalive_requests, fault) -> None:
    """The main job on the lab: capture both nodes under real traffic, correlate, report."""
    from tracer.demo import DemoOptions, format_result, run_demo

    if fault is not None:
        from tracer.fault_demo import FaultDemoOptions, format_fault_result, run_fault_demo

        given = _given_options(click.get_current_context())
        fault_result = run_fault_demo(
            FaultDemoOptions(kind=fault, out=out if "out" in given else None,
                             **({"requests": requests} if "requests" in given else {})),
            progress=lambda s: click.echo(s, err=True),
        )
        click.echo(format_fault_result(fault_result))
        return
    result = run_demo(
        DemoOptions(out=out, requests=requests, keepalive_requests=keepalive_requests),
        progress=lambda s: click.echo(s, err=True),
    )
    click.echo(format_result(result))


def _given_options(ctx: click.Context) -> set[str]:
    """The options the user gave (not left to their defaults)."""
    return {name for name in ctx.params
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT}


def _reader_left() -> None:
    """End quietly with exit 0, as the reader chose to stop reading (grep or
    cat would die of SIGPIPE, 141 in a shell; 0 keeps `set -o pipefail`
    scripts with `tracer ... | head` working). stdout goes to /dev/null so
    that the interpreter's last flush of it fails no more."""
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)


def main(argv: list[str] | None = None) -> None:
    try:
        rv = cli.main(args=argv, prog_name="tracer", standalone_mode=False)
        sys.stdout.flush()  # what is still buffered, while a closed pipe can be handled
    except (_ReaderLeft, BrokenPipeError):
        _reader_left()
    except TracerError as exc:
        click.echo(f"tracer: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("tracer: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        # Usage errors: click's own one-line message.
        click.echo(f"tracer: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("tracer: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug: one line, the traceback only on request
        if os.environ.get("TRACER_DEBUG"):
            traceback.print_exc()
        click.echo(
            f"tracer: internal error: {type(exc).__name__}: {exc} "
            "(set TRACER_DEBUG=1 for a traceback)",
            err=True,
        )
        sys.exit(70)
    sys.exit(rv if isinstance(rv, int) else 0)
