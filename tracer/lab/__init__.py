"""The lab: the seed article's two-node Kubernetes setup rebuilt in network
namespaces with the real kernel pieces (kube-proxy's iptables rules, Calico-style
routing learned over BGP from BIRD, nginx pods).

Modules, one job each:
    plan        pure: manifest + replicas -> the LabState to build (names, addresses)
    state       the typed LabState and its JSON in /run/tracer-lab (load_state)
    netdev      namespaces, links, routes, sysctls, always inside lab namespaces
    bird        BIRD configs (Calico-like nodes, route-reflector ToR), BGP checks
    nginx       per-pod nginx config, page and start
    kubeproxy   render the nat table per node and load it; read rules and counters
    procs       find and stop the lab's processes
    build       make a whole lab from a plan: namespaces, LAN, pods, daemons, rules
    reconcile   can the running infrastructure stay; make pods, rules, tunnels match
    teardown    stop the lab's processes, delete its namespaces and run dir
    controller  up / down / exec / fault add|clear (serialised by a lock file)
    faults      the record of injected faults: add, list, clear
    fault_kinds one small definition per fault kind (policy-drop, route-withdrawn)
    status      what runs: nodes, pods, BGP sessions and routes, services
    access_log  read the pods' nginx access logs
    traffic     real HTTP load from the client (or a pod), with exact counts
"""
