"""kube-proxy's chain names, computed the way kube-proxy computes them.

iptables mode (kubernetes/kubernetes pkg/proxy/iptables/proxier.go, v1.30 and
later; checked at commits b0f823e6 and 531be812):

    portProtoHash(spn, proto) = base32(sha256(spn + proto))[:16]
    KUBE-SVC-<hash>   cluster-policy chain   (servicePortPolicyClusterChain)
    KUBE-SVL-<hash>   local-policy chain     (servicePortPolicyLocalChainName)
    KUBE-EXT-<hash>   external destinations  (serviceExternalChainName)
    KUBE-FW-<hash>    loadBalancerSourceRanges firewall (serviceFirewallChainName)
    KUBE-SEP-<base32(sha256(spn + proto + endpoint))[:16]>  (servicePortEndpointChainName)

where spn is ServicePortName.String() (pkg/proxy/types.go): "ns/name" plus
":portname" only when the port has a name, proto is the lower-case protocol,
and endpoint is BaseEndpointInfo.String(), i.e. net.JoinHostPort(ip, port).

Older kube-proxy releases formatted spn as "ns/name:portname" even for an
unnamed port ("ns/name:"). The seed article's chain names come from such a
release: KUBE-SVC-JKOCBQALQGD3X3RT is "default/nginx-demo-1:" + "tcp".
`legacy_format=True` reproduces that.

nftables mode (pkg/proxy/nftables/proxier.go): chain names are readable,
"<prefix><HASH8>-ns/name/proto/portname" for service chains and
"...__ip/port" for endpoint chains, where HASH8 = base32(sha256(name))[:8] of
the readable part, truncated with "..." past 240 characters.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress

# iptables-mode prefixes (pkg/proxy/iptables/proxier.go).
SERVICE_CHAIN_PREFIX = "KUBE-SVC-"
SERVICE_LOCAL_CHAIN_PREFIX = "KUBE-SVL-"
FIREWALL_CHAIN_PREFIX = "KUBE-FW-"
EXTERNAL_CHAIN_PREFIX = "KUBE-EXT-"
ENDPOINT_CHAIN_PREFIX = "KUBE-SEP-"
SERVICE_PORT_CHAIN_PREFIXES = (
    SERVICE_CHAIN_PREFIX,
    SERVICE_LOCAL_CHAIN_PREFIX,
    FIREWALL_CHAIN_PREFIX,
    EXTERNAL_CHAIN_PREFIX,
)

# nftables-mode prefixes (pkg/proxy/nftables/proxier.go).
NFT_SERVICE_CHAIN_PREFIX = "service-"
NFT_LOCAL_CHAIN_PREFIX = "local-"
NFT_EXTERNAL_CHAIN_PREFIX = "external-"
NFT_ENDPOINT_CHAIN_PREFIX = "endpoint-"
NFT_AFFINITY_SET_PREFIX = "affinity-"
NFT_FIREWALL_CHAIN_PREFIX = "firewall-"
# knftables.NameLengthMax (256) minus the longest prefix allowance (16).
NFT_CHAIN_NAME_BASE_MAX = 240


def _base32_sha256(text: str) -> str:
    # Go's base32.StdEncoding is RFC 4648 with padding, as Python's b32encode.
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode("ascii")


def service_port_name(
    namespace: str, name: str, port_name: str, *, legacy_format: bool = False
) -> str:
    """ServicePortName.String(): "ns/name" or "ns/name:port"."""
    if port_name or legacy_format:
        return f"{namespace}/{name}:{port_name}"
    return f"{namespace}/{name}"


def endpoint_string(ip: str, port: int) -> str:
    """net.JoinHostPort: "10.0.0.1:80", "[fd00::1]:80"."""
    if ipaddress.ip_address(ip).version == 6:
        return f"[{ip}]:{port}"
    return f"{ip}:{port}"


def port_proto_hash(spn: str, protocol: str) -> str:
    """portProtoHash: the 16-character hash shared by a service port's chains."""
    return _base32_sha256(spn + protocol.lower())[:16]


def service_chain(spn: str, protocol: str) -> str:
    return SERVICE_CHAIN_PREFIX + port_proto_hash(spn, protocol)


def service_local_chain(spn: str, protocol: str) -> str:
    return SERVICE_LOCAL_CHAIN_PREFIX + port_proto_hash(spn, protocol)


def firewall_chain(spn: str, protocol: str) -> str:
    return FIREWALL_CHAIN_PREFIX + port_proto_hash(spn, protocol)


def external_chain(spn: str, protocol: str) -> str:
    return EXTERNAL_CHAIN_PREFIX + port_proto_hash(spn, protocol)


def endpoint_chain(spn: str, protocol: str, endpoint: str) -> str:
    """KUBE-SEP-...; endpoint is endpoint_string(ip, port)."""
    return ENDPOINT_CHAIN_PREFIX + _base32_sha256(spn + protocol.lower() + endpoint)[:16]


def chain_hash(chain: str) -> str | None:
    """The hash part of a KUBE-SVC/SVL/EXT/FW chain; all four share it."""
    for prefix in SERVICE_PORT_CHAIN_PREFIXES:
        if chain.startswith(prefix):
            return chain[len(prefix) :]
    return None


# --- nftables mode -----------------------------------------------------------


def _nft_hash_and_truncate(name: str) -> str:
    name = _base32_sha256(name)[:8] + "-" + name
    if len(name) > NFT_CHAIN_NAME_BASE_MAX:
        name = name[: NFT_CHAIN_NAME_BASE_MAX - 3] + "..."
    return name


def nft_service_chain_base(namespace: str, name: str, protocol: str, port_name: str) -> str:
    """servicePortChainNameBase: "HASH-ns/name/proto/portname"."""
    return _nft_hash_and_truncate(f"{namespace}/{name}/{protocol.lower()}/{port_name}")


def nft_endpoint_chain_base(
    namespace: str, name: str, protocol: str, port_name: str, ip: str, port: int
) -> str:
    """servicePortEndpointChainNameBase: "HASH-ns/name/proto/portname__ip/port".

    IPv6 colons become dots (colons are not allowed in nftables chain names)."""
    ip_part = ip.replace(":", ".")
    readable = f"{namespace}/{name}/{protocol.lower()}/{port_name}__{ip_part}/{port}"
    return _nft_hash_and_truncate(readable)


def nft_service_chain(namespace: str, name: str, protocol: str, port_name: str) -> str:
    return NFT_SERVICE_CHAIN_PREFIX + nft_service_chain_base(namespace, name, protocol, port_name)


def nft_local_chain(namespace: str, name: str, protocol: str, port_name: str) -> str:
    return NFT_LOCAL_CHAIN_PREFIX + nft_service_chain_base(namespace, name, protocol, port_name)


def nft_external_chain(namespace: str, name: str, protocol: str, port_name: str) -> str:
    base = nft_service_chain_base(namespace, name, protocol, port_name)
    return NFT_EXTERNAL_CHAIN_PREFIX + base


def nft_firewall_chain(namespace: str, name: str, protocol: str, port_name: str) -> str:
    base = nft_service_chain_base(namespace, name, protocol, port_name)
    return NFT_FIREWALL_CHAIN_PREFIX + base


def nft_endpoint_chain(
    namespace: str, name: str, protocol: str, port_name: str, ip: str, port: int
) -> str:
    base = nft_endpoint_chain_base(namespace, name, protocol, port_name, ip, port)
    return NFT_ENDPOINT_CHAIN_PREFIX + base


def nft_affinity_set(
    namespace: str, name: str, protocol: str, port_name: str, ip: str, port: int
) -> str:
    base = nft_endpoint_chain_base(namespace, name, protocol, port_name, ip, port)
    return NFT_AFFINITY_SET_PREFIX + base
