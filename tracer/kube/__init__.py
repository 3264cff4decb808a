"""The Kubernetes / kube-proxy layer: manifests the lab renders, the iptables
rules kube-proxy would write for them, and the inverse (resolving Services from
a node's real rules) for the capture engine.

Modules, one job each:
    model            frozen dataclasses (Service, Deployment, Endpoint, Manifest)
    manifest         YAML -> Manifest, with one-line errors that say where
    manifest_fields  the YAML documents and typed fields manifest reads, located errors
    manifest_deployment  a Deployment document -> Deployment
    manifest_service     a Service document -> ServiceDraft (fields checked)
    manifest_allocation  deterministic cluster IPs and node ports for drafts without them
    naming           kube-proxy's chain-name hashing (iptables and nftables modes)
    resolved         ResolvedService / ResolvedServicePort / ResolvedEndpoint: what
                     resolving a node's rules yields, in either mode
    proxy_plan       what kube-proxy decides per service port in either mode (addresses
                     checked, endpoints ordered and categorized), before any rule
    iptables_render  Services + Endpoints -> `iptables-restore` input for the nat table
    iptables_filter  Services + Endpoints -> the filter-table half (REJECTs of Services
                     without endpoints, kube-proxy's jump chains)
    iptables_table   `iptables-save -t nat` text -> NatTable (chains of tokenized rules)
    iptables_parse   `iptables-save -t nat` text (read by iptables_table) -> ResolvedService list
    iptables_fields  kube-proxy's iptables chain names, rule fields, the per-port draft
    iptables_port_chains  what one service port's nat chains say (endpoint split,
                     affinity, policies, LB source ranges)
    iptables_no_endpoints  the filter table's REJECTs -> ports without endpoints
    nftables_render  Services + Endpoints -> kube-proxy's `nft -f` transaction
                     for table ip kube-proxy (nftables mode)
    nftables_table   NftTable facts (chains, rules, map elements); nft JSON -> NftTable
    nftables_text    `nft list` text / knftables transaction -> NftTable
    nftables_parse   nft JSON or text (read_nft) -> NftTable -> ResolvedService list
    rules_source     read a node's kube-proxy rules (either mode); find a service by name
"""
