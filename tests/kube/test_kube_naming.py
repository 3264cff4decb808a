"""Chain names against kube-proxy's own test fixtures.

iptables mode: kubernetes/kubernetes pkg/proxy/iptables/proxier_test.go
(commit 531be81208e2274ef42e72525a26610a9622bcdf), TestParseIPTablesData
("basic test") and TestOverallIPTablesRules expected output.
nftables mode: kubernetes/kubernetes pkg/proxy/nftables/proxier_test.go
(commit 030880a5dc5449403c6d1f0aa146a7dc21d6c6dc), TestOverallNFTablesRules
expected output, and the examples in pkg/proxy/nftables/proxier.go comments.
"""

from __future__ import annotations

import pytest

from tracer.kube import naming


@pytest.mark.parametrize(
    ("spn", "chain"),
    [
        # TestParseIPTablesData / TestOverallIPTablesRules
        ("ns1/svc1:p80", "KUBE-SVC-XPGD46QRK7WJZT7O"),
        ("ns2/svc2:p80", "KUBE-SVC-GNZBNJ2PO5MGZ6GT"),
        ("ns3/svc3:p80", "KUBE-SVC-X27LE4BHSL4DOUIK"),
        ("ns4/svc4:p80", "KUBE-SVC-4SW47YFZTEDKD3PK"),
        ("ns5/svc5:p80", "KUBE-SVC-NUKIZ6OKUXPJNT4C"),
    ],
)
def test_service_chain(spn: str, chain: str) -> None:
    assert naming.service_chain(spn, "tcp") == chain
    assert naming.service_chain(spn, "TCP") == chain  # kube-proxy lower-cases the protocol


def test_port_chains_share_the_hash() -> None:
    # TestOverallIPTablesRules: KUBE-EXT-4SW47YFZTEDKD3PK, KUBE-EXT-GNZBNJ2PO5MGZ6GT,
    # KUBE-FW-NUKIZ6OKUXPJNT4C.
    assert naming.external_chain("ns4/svc4:p80", "tcp") == "KUBE-EXT-4SW47YFZTEDKD3PK"
    assert naming.external_chain("ns2/svc2:p80", "tcp") == "KUBE-EXT-GNZBNJ2PO5MGZ6GT"
    assert naming.firewall_chain("ns5/svc5:p80", "tcp") == "KUBE-FW-NUKIZ6OKUXPJNT4C"
    assert naming.service_local_chain("ns2/svc2:p80", "tcp") == "KUBE-SVL-GNZBNJ2PO5MGZ6GT"
    assert naming.port_proto_hash("ns1/svc1:p80", "tcp") == "XPGD46QRK7WJZT7O"
    assert naming.chain_hash("KUBE-EXT-GNZBNJ2PO5MGZ6GT") == "GNZBNJ2PO5MGZ6GT"
    assert naming.chain_hash("KUBE-SEP-SXIVWICOYRO3J4NJ") is None


@pytest.mark.parametrize(
    ("spn", "endpoint", "chain"),
    [
        ("ns1/svc1:p80", "10.180.0.1:80", "KUBE-SEP-SXIVWICOYRO3J4NJ"),
        ("ns2/svc2:p80", "10.180.0.2:80", "KUBE-SEP-RS4RBKLTHTF2IUXJ"),
        ("ns3/svc3:p80", "10.180.0.3:80", "KUBE-SEP-OYPFS5VJICHGATKP"),
        ("ns4/svc4:p80", "10.180.0.4:80", "KUBE-SEP-UKSFD7AGPMPPLUHC"),
        ("ns4/svc4:p80", "10.180.0.5:80", "KUBE-SEP-C6EBXVWJJZMIWKLZ"),
        ("ns5/svc5:p80", "10.180.0.3:80", "KUBE-SEP-I77PXRDZVX7PMWMN"),
    ],
)
def test_endpoint_chain(spn: str, endpoint: str, chain: str) -> None:
    assert naming.endpoint_chain(spn, "tcp", endpoint) == chain


def test_service_port_name_format() -> None:
    assert naming.service_port_name("ns1", "svc1", "p80") == "ns1/svc1:p80"
    assert naming.service_port_name("default", "nginx-demo-1", "") == "default/nginx-demo-1"
    assert naming.endpoint_string("10.180.0.1", 80) == "10.180.0.1:80"
    assert naming.endpoint_string("fd00:10:180::1", 80) == "[fd00:10:180::1]:80"


def test_seed_article_chain_names_use_the_legacy_port_name_format() -> None:
    # The seed article lists KUBE-SVC-JKOCBQALQGD3X3RT, KUBE-SVC-6JCCLZMUQSW27LLD,
    # KUBE-SEP-CRT5ID3374EWFAWN and KUBE-SEP-SRE6BJUIAABTZ4UR, and DNAT to
    # 10.217.120.72:80. They come out of the older "ns/name:" format of an
    # unnamed port, not today's "ns/name".
    demo1 = naming.service_port_name("default", "nginx-demo-1", "", legacy_format=True)
    demo2 = naming.service_port_name("default", "nginx-demo-2", "", legacy_format=True)
    assert demo1 == "default/nginx-demo-1:"
    assert naming.service_chain(demo1, "tcp") == "KUBE-SVC-JKOCBQALQGD3X3RT"
    assert naming.service_chain(demo2, "tcp") == "KUBE-SVC-6JCCLZMUQSW27LLD"
    assert naming.endpoint_chain(demo1, "tcp", "10.217.120.72:80") == "KUBE-SEP-CRT5ID3374EWFAWN"
    assert naming.endpoint_chain(demo2, "tcp", "10.217.120.72:80") == "KUBE-SEP-SRE6BJUIAABTZ4UR"
    # Today's kube-proxy names the same service differently.
    current = naming.service_port_name("default", "nginx-demo-1", "")
    assert naming.service_chain(current, "tcp") != "KUBE-SVC-JKOCBQALQGD3X3RT"


def test_nftables_names() -> None:
    # pkg/proxy/nftables/proxier.go comments: "ULMVA6XW-ns1/svc1/tcp/p80" and
    # "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80".
    assert naming.nft_service_chain_base("ns1", "svc1", "TCP", "p80") == "ULMVA6XW-ns1/svc1/tcp/p80"
    assert (
        naming.nft_endpoint_chain_base("ns1", "svc1", "tcp", "p80", "10.180.0.1", 80)
        == "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    )
    # TestOverallNFTablesRules expected output.
    assert naming.nft_service_chain("ns4", "svc4", "tcp", "p80") == (
        "service-LAUZTJTB-ns4/svc4/tcp/p80"
    )
    assert naming.nft_external_chain("ns4", "svc4", "tcp", "p80") == (
        "external-LAUZTJTB-ns4/svc4/tcp/p80"
    )
    assert naming.nft_external_chain("ns5", "svc5", "tcp", "p80") == (
        "external-HVFWP5L3-ns5/svc5/tcp/p80"
    )
    assert naming.nft_firewall_chain("ns5", "svc5", "tcp", "p80") == (
        "firewall-HVFWP5L3-ns5/svc5/tcp/p80"
    )
    assert naming.nft_endpoint_chain("ns5", "svc5", "tcp", "p80", "10.180.0.3", 80) == (
        "endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80"
    )
    assert naming.nft_endpoint_chain("ns4", "svc4", "tcp", "p80", "10.180.0.5", 80) == (
        "endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80"
    )
    assert naming.nft_affinity_set("ns5", "svc5", "tcp", "p80", "10.180.0.3", 80) == (
        "affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80"
    )
    assert naming.nft_local_chain("ns2", "svc2", "tcp", "p80").startswith("local-")


def test_nftables_ipv6_endpoint_and_truncation() -> None:
    base = naming.nft_endpoint_chain_base("ns", "svc", "tcp", "p", "fd00::1", 80)
    assert base.endswith("-ns/svc/tcp/p__fd00..1/80")
    long_name = "n" * 63
    base = naming.nft_endpoint_chain_base(
        long_name, long_name, "sctp", long_name, "fd00:1111:2222:3333:4444:5555:6666:7777", 65535
    )
    assert len(base) == naming.NFT_CHAIN_NAME_BASE_MAX
    assert base.endswith("...")
