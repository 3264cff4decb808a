"""Traffic policies and loadBalancerSourceRanges as kube-proxy writes them
(pkg/proxy/iptables/proxier.go and pkg/proxy/nftables/proxier.go: the cluster
IP enters KUBE-SVL / local-<B> under internalTrafficPolicy Local; KUBE-EXT /
external-<B> short-circuits pods and the node to KUBE-SVC under
externalTrafficPolicy Local; KUBE-FW / firewall-<B> admit the source
ranges), parsed from real iptables-save and `nft list` output back into every
field of the model; partial rule text is refused; `tracer services` shows it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from tracer import cli as cli_module
from tracer.kube import rules_source
from tracer.kube.iptables_parse import parse_iptables_nat_rules
from tracer.kube.nftables_parse import parse_kube_proxy_table
from tracer.kube.resolved import PartialRulesError, ResolvedEndpoint, ResolvedServicePort

DATA = Path(__file__).parent / "data"
IPTABLES_SAVE = (DATA / "kube_proxy_policies.txt").read_text()
NFT_LIST = (DATA / "kube_proxy_nft_policies.txt").read_text()

# Chain hashes of the iptables mode (naming.service_chain etc. of "ns-p/<name>").
IPT = {"itp-local": "LRT3VC6GYJC6GSK2", "itp-local-np": "6MDMXMHVM7MVLLON",
       "etp-local-lb": "CSHH4EXW5LNTJZ3M"}
IPT_SEP = {("itp-local", "10.217.1.5"): "KUBE-SEP-6QEW5ITP5C7F55NK",
           ("itp-local-np", "10.217.1.5"): "KUBE-SEP-METPD274BK4774YY",
           ("itp-local-np", "10.217.2.5"): "KUBE-SEP-LP2YR5HEBXP7XEDE",
           ("etp-local-lb", "10.217.1.5"): "KUBE-SEP-2EV4ZPH373XRUPNC",
           ("etp-local-lb", "10.217.2.5"): "KUBE-SEP-ZH34MHKS5A6A7ZA3"}
NFT = {"itp-local": "HQ4OH7BZ", "itp-local-np": "SA6LLD2T", "etp-local-lb": "5FZRSJXM"}
NFT_EP = {("itp-local", "10.217.1.5"): "JVOFM3EH", ("itp-local-np", "10.217.1.5"): "EX65AELR",
          ("itp-local-np", "10.217.2.5"): "ULGUD52D", ("etp-local-lb", "10.217.1.5"): "GBIFWYCG",
          ("etp-local-lb", "10.217.2.5"): "5YZ7L6VW"}


def chain(mode: str, kind: str, name: str) -> str:
    if mode == "iptables":
        return f"KUBE-{kind}-{IPT[name]}"
    prefix = {"SVC": "service", "SVL": "local", "EXT": "external", "FW": "firewall"}[kind]
    return f"{prefix}-{NFT[name]}-ns-p/{name}/tcp/"


def endpoints(mode: str, name: str, ips: list[str]) -> tuple[ResolvedEndpoint, ...]:
    """kube-proxy's even split: 1/(n-i) in iptables, one numgen slot each in nftables."""
    out, left = [], 1.0
    for i, ip in enumerate(ips):
        if mode == "iptables":
            p = 1.0 if i == len(ips) - 1 else 1.0 / (len(ips) - i)
            share = left * p
            left -= share
            sep = IPT_SEP[(name, ip)]
        else:
            p = share = 1.0 / len(ips)
            sep = f"endpoint-{NFT_EP[(name, ip)]}-ns-p/{name}/tcp/__{ip}/80"
        out.append(ResolvedEndpoint(ip, 80, "tcp", p, share, sep))
    return tuple(out)


def expected(mode: str) -> dict[str, ResolvedServicePort]:
    both = ["10.217.1.5", "10.217.2.5"]
    local = ["10.217.1.5"]
    return {
        "itp-local": ResolvedServicePort(
            port_name="", protocol="tcp", port=80, cluster_ips=("10.96.10.10",),
            local_chain=chain(mode, "SVL", "itp-local"),
            local_endpoints=endpoints(mode, "itp-local", local),
            cluster_ip_chain=chain(mode, "SVL", "itp-local"), internal_policy="Local"),
        "itp-local-np": ResolvedServicePort(
            port_name="", protocol="tcp", port=80, cluster_ips=("10.96.10.11",), node_port=30111,
            service_chain=chain(mode, "SVC", "itp-local-np"),
            external_chain=chain(mode, "EXT", "itp-local-np"),
            local_chain=chain(mode, "SVL", "itp-local-np"), external_policy="Cluster",
            endpoints=endpoints(mode, "itp-local-np", both),
            local_endpoints=endpoints(mode, "itp-local-np", local),
            cluster_ip_chain=chain(mode, "SVL", "itp-local-np"), internal_policy="Local"),
        "etp-local-lb": ResolvedServicePort(
            port_name="", protocol="tcp", port=80, cluster_ips=("10.96.10.12",),
            load_balancer_ips=("192.0.2.10",), node_port=30112,
            service_chain=chain(mode, "SVC", "etp-local-lb"),
            external_chain=chain(mode, "EXT", "etp-local-lb"),
            local_chain=chain(mode, "SVL", "etp-local-lb"),
            firewall_chain=chain(mode, "FW", "etp-local-lb"), external_policy="Local",
            endpoints=endpoints(mode, "etp-local-lb", both),
            local_endpoints=endpoints(mode, "etp-local-lb", local),
            cluster_ip_chain=chain(mode, "SVC", "etp-local-lb"), internal_policy="Cluster",
            load_balancer_chain=chain(mode, "FW", "etp-local-lb"),
            # iptables keeps the rules' order; nft lists a set's elements sorted.
            load_balancer_source_ranges=("203.0.113.0/25", "192.168.64.0/24")
            if mode == "iptables" else ("192.168.64.0/24", "203.0.113.0/25"),
            pod_cidrs=("10.217.0.0/16",)),
        # Endpoints only on node-b: kube-proxy writes no nat rule for the
        # cluster IP, only the filter DROP (tracer.kube.local_drops).
        "itp-local-none": ResolvedServicePort(
            port_name="", protocol="tcp", port=80, cluster_ips=("10.96.10.13",),
            internal_policy="Local", no_local_endpoints=("internal",),
            drop_in=("KUBE-SERVICES",) if mode == "iptables" else ("no-endpoint-services",)),
    }


def rounded(value):
    if isinstance(value, float):
        return round(value, 8)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_every_field_of_each_policy_case(mode: str) -> None:
    parse = parse_iptables_nat_rules if mode == "iptables" else parse_kube_proxy_table
    services = parse(IPTABLES_SAVE if mode == "iptables" else NFT_LIST)
    got = {s.name: s for s in services if s.namespace == "ns-p"}
    want = expected(mode)
    assert sorted(got) == sorted(want)
    for name, port in want.items():
        assert [rounded(p.to_dict()) for p in got[name].ports] == [rounded(port.to_dict())], name


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_entry_points_name_the_chain_and_policy_per_address_kind(mode: str) -> None:
    parse = parse_iptables_nat_rules if mode == "iptables" else parse_kube_proxy_table
    services = {s.name: s for s in parse(IPTABLES_SAVE if mode == "iptables" else NFT_LIST)}
    lb = services["etp-local-lb"].ports[0].to_dict()["entry_points"]
    assert lb == [
        {"kind": "cluster_ip", "addresses": ["10.96.10.12"],
         "chain": chain(mode, "SVC", "etp-local-lb"), "policy": "Cluster"},
        {"kind": "load_balancer_ip", "addresses": ["192.0.2.10"],
         "chain": chain(mode, "FW", "etp-local-lb"), "policy": "Local"},
        {"kind": "node_port", "addresses": [], "chain": chain(mode, "EXT", "etp-local-lb"),
         "policy": "Local"},
    ]
    np_ = services["itp-local-np"].ports[0].to_dict()["entry_points"]
    assert [(e["kind"], e["policy"]) for e in np_] == [("cluster_ip", "Local"),
                                                       ("node_port", "Cluster")]


def test_round_trip_through_json_keeps_the_policy_fields() -> None:
    for service in parse_iptables_nat_rules(IPTABLES_SAVE):
        again = type(service).from_dict(json.loads(json.dumps(service.to_dict())))
        assert again == service


# --- partial rule text -------------------------------------------------------------------

def _drop_chain(text: str, chain_name: str) -> str:
    """kube-proxy's partial restore input: an unchanged service's chains are
    neither declared nor written, but KUBE-SERVICES (rewritten whole) still
    jumps to them."""
    return "\n".join(line for line in text.splitlines()
                     if not line.startswith((f":{chain_name} ", f"-A {chain_name} ")))


@pytest.mark.parametrize("missing", ["SVL", "FW", "EXT"])
def test_partial_iptables_text_is_refused(missing: str) -> None:
    name = "etp-local-lb" if missing != "SVL" else "itp-local"
    gone = chain("iptables", missing, name)
    with pytest.raises(PartialRulesError) as caught:
        parse_iptables_nat_rules(_drop_chain(IPTABLES_SAVE, gone))
    message = str(caught.value)
    assert "\n" not in message and gone in message and "partial" in message


def test_partial_iptables_text_missing_an_endpoint_chain_is_refused() -> None:
    sep = IPT_SEP[("itp-local-np", "10.217.2.5")]
    with pytest.raises(PartialRulesError, match=sep):
        parse_iptables_nat_rules(_drop_chain(IPTABLES_SAVE, sep))


def test_partial_nft_transaction_is_refused() -> None:
    """A knftables transaction of a partial sync: map elements still name
    service chains the transaction does not add."""
    local = chain("nftables", "SVL", "itp-local")
    text = (
        "add table ip kube-proxy\n"
        "add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }\n"
        f"add element ip kube-proxy service-ips {{ 10.96.10.10 . tcp . 80 : goto {local} }}\n"
    )
    with pytest.raises(PartialRulesError, match="service-ips jumps to local-"):
        parse_kube_proxy_table(text)


def test_whole_text_of_a_port_with_empty_chain_still_parses() -> None:
    """A chain declared but empty (kube-proxy just flushed it) is not partial text."""
    emptied = "\n".join(line for line in IPTABLES_SAVE.splitlines()
                        if not line.startswith(f"-A {chain('iptables', 'SVL', 'itp-local')} "))
    services = {s.name: s for s in parse_iptables_nat_rules(emptied)}
    assert services["itp-local"].ports[0].local_endpoints == ()


def _serve_iptables_save(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    """`tracer services` reads the node's rules with iptables-save: serve
    text in its place (as tests/kube/test_kube_no_endpoints.py does)."""

    filt = text[: text.index("*nat")]
    nat = text[text.index("*nat"):]

    def fake_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 0, filt if cmd[1:] == ["-t", "filter"] else nat, "")

    monkeypatch.setattr(rules_source, "_find", lambda p: p if p == "iptables-save" else None)
    monkeypatch.setattr(rules_source, "run", fake_run)


def test_cli_services_refuses_partial_text_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    _serve_iptables_save(monkeypatch, _drop_chain(IPTABLES_SAVE, chain("iptables", "SVL", "itp-local")))
    with pytest.raises(SystemExit) as exited:
        cli_module.main(["services"])
    assert exited.value.code == PartialRulesError.exit_code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1
    assert lines[0].startswith("tracer: error: the rules are partial: KUBE-SERVICES jumps to "
                               + chain("iptables", "SVL", "itp-local"))


def test_cli_services_shows_policies_in_text_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    _serve_iptables_save(monkeypatch, IPTABLES_SAVE)
    result = CliRunner().invoke(cli_module.cli, ["services", "--json"])
    assert result.exit_code == 0, result.output
    lb = next(s for s in json.loads(result.output) if s["name"] == "etp-local-lb")["ports"][0]
    assert lb["internal_policy"] == "Cluster" and lb["external_policy"] == "Local"
    assert lb["load_balancer_source_ranges"] == ["203.0.113.0/25", "192.168.64.0/24"]
    assert lb["pod_cidrs"] == ["10.217.0.0/16"]
    assert lb["load_balancer_chain"] == chain("iptables", "FW", "etp-local-lb")
    text = CliRunner().invoke(cli_module.cli, ["services"])
    assert text.exit_code == 0, text.output
    rows = {line.split()[0]: line for line in text.output.splitlines()[1:]}
    assert rows["ns-p/itp-local"].endswith("internal Local")
    assert chain("iptables", "SVL", "itp-local") in rows["ns-p/itp-local"]
    assert rows["ns-p/etp-local-lb"].endswith(
        "internal Cluster, external Local; source ranges 203.0.113.0/25, 192.168.64.0/24")
