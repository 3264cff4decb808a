"""Checks that run INSIDE the Debian 6.1 VM, as one pytest session.

Started by tests/kernel_vm/test_vm_harness.py through run_in_vm; the file name
does not match test_*.py on purpose, so a pytest run on the host never
collects it (it is only ever named explicitly). Each check records what it
measured in $TRACER_VM_REPORT_DIR/report.json, which the host reads back.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import time
from pathlib import Path

import pytest
from bcc import BPF
from module_fentry import attach_module_tracing, vmlinux_func_names
from nat_lab import NODE, nat_lab, sh

REPORT_DIR = Path(os.environ.get("TRACER_VM_REPORT_DIR", "/nonexistent"))
PROBE_TARGETS = (
    "nf_nat_inet_fn",
    "nf_nat_ipv4_fn",
    "nf_nat_manip_pkt",
    "__netif_receive_skb_core",
    "__netif_receive_skb",
    "netif_receive_skb",
)
NF_INET_PRE_ROUTING, NF_INET_POST_ROUTING = 0, 4
NF_ACCEPT = 1
CONNECTIONS = 5
PROBE_NAMES = {0: "kprobe", 1: "kretprobe", 2: "fentry", 3: "fexit", 4: "fentry_nf_hook_slow"}

_report: dict[str, object] = {}


@pytest.fixture(scope="session", autouse=True)
def in_the_vm():
    # Fail, never skip: this file only makes sense inside run_in_vm's guest.
    assert os.environ.get("TRACER_IN_VM") == "1", "run this only through tracer.testing.run_in_vm"
    assert REPORT_DIR.is_dir(), f"TRACER_VM_REPORT_DIR {REPORT_DIR} is not a shared directory"
    yield
    (REPORT_DIR / "report.json").write_text(json.dumps(_report, indent=2, sort_keys=True))


def record(**facts: object) -> None:
    _report.update(facts)
    # Written after each check too, so a crash later still leaves the facts.
    (REPORT_DIR / "report.json").write_text(json.dumps(_report, indent=2, sort_keys=True))


def test_runs_the_distro_kernel():
    release = platform.release()
    record(kernel_release=release)
    assert release == os.environ["TRACER_VM_EXPECT_RELEASE"]
    assert release.startswith("6.1.")


def test_kernel_has_kprobes_fentry_and_the_nat_functions():
    config = Path(os.environ["TRACER_VM_KERNEL_CONFIG"]).read_text()
    options = {
        opt: (m.group(1) if (m := re.search(rf"^{opt}=(\S+)$", config, re.M)) else None)
        for opt in (
            "CONFIG_KPROBES",
            "CONFIG_KPROBE_EVENTS",
            "CONFIG_FUNCTION_TRACER",
            "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS",
            "CONFIG_DEBUG_INFO_BTF",
            "CONFIG_DEBUG_INFO_BTF_MODULES",
            "CONFIG_BPF_JIT",
            "CONFIG_NF_NAT",
        )
    }
    kallsyms = Path("/proc/kallsyms").read_text()
    found = {}
    for name in PROBE_TARGETS:
        # GCC clones keep the name with a suffix (e.g. __netif_receive_skb_core
        # is only __netif_receive_skb_core.constprop.0 here): a kprobe on the
        # bare name fails, so report the exact symbols.
        found[name] = sorted(
            set(re.findall(rf"^\w+ \w ({re.escape(name)}(?:\.\w+)*)(?:\s|$)", kallsyms, re.M))
        )
    btf_funcs = vmlinux_func_names()
    record(
        config=options,
        kallsyms=found,
        # fentry through BCC's KFUNC_PROBE needs the function in vmlinux BTF.
        in_vmlinux_btf={name: name in btf_funcs for name in PROBE_TARGETS},
        kprobe_pmu=Path("/sys/bus/event_source/devices/kprobe").exists(),
        module_btf_nf_nat=Path("/sys/kernel/btf/nf_nat").exists(),
    )
    assert options["CONFIG_KPROBES"] == "y"
    assert options["CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS"] == "y"  # fentry trampolines
    assert found["nf_nat_inet_fn"] == ["nf_nat_inet_fn"]
    assert Path("/sys/kernel/btf/nf_nat").exists()  # fentry on a module function needs it


def test_tracefs_debugfs_and_bpffs_are_mounted():
    types = {line.split()[1]: line.split()[2] for line in Path("/proc/mounts").read_text().splitlines()}
    record(mounts={p: types.get(p) for p in ("/sys/kernel/tracing", "/sys/kernel/debug", "/sys/fs/bpf")})
    assert types.get("/sys/kernel/tracing") == "tracefs"
    assert types.get("/sys/kernel/debug") == "debugfs"
    assert types.get("/sys/fs/bpf") == "bpf"


def test_bcc_finds_headers_through_the_modules_links():
    release = platform.release()
    build, source = (Path(f"/lib/modules/{release}") / d for d in ("build", "source"))
    record(
        bcc_headers={
            "BCC_KERNEL_SOURCE": os.environ.get("BCC_KERNEL_SOURCE"),
            "lib_modules": os.path.realpath(f"/lib/modules/{release}"),
            "build": os.path.realpath(build),
            "source": os.path.realpath(source),
        }
    )
    assert "BCC_KERNEL_SOURCE" not in os.environ  # the links alone must do
    assert (build / ".config").is_file() and (build / "include/generated").is_dir()
    assert (source / "include/linux/kconfig.h").is_file()


def _hits(table) -> list[dict[str, int]]:
    return [
        {"probe": k.probe, "hook": k.hook, "netns": k.netns, "ret": k.ret, "count": v.value}
        for k, v in table.items()
    ]


# Shared by both programs. Kernel memory is read with bpf_probe_read_kernel on
# purpose: BCC's automatic rewrite of `state->hook` does not reach a helper.
COUNT_C = r"""
#include <linux/netfilter.h>
#include <net/net_namespace.h>

struct key_t { u32 probe; u32 hook; u32 netns; u32 ret; };
BPF_HASH(hits, struct key_t, u64, 256);

static __always_inline void count(u32 probe, const struct nf_hook_state *state, u32 ret) {
    struct key_t k = {};
    u8 hook = 0;
    struct net *net = NULL;
    bpf_probe_read_kernel(&hook, sizeof(hook), &state->hook);
    bpf_probe_read_kernel(&net, sizeof(net), &state->net);
    bpf_probe_read_kernel(&k.netns, sizeof(k.netns), &net->ns.inum);
    k.probe = probe;
    k.hook = hook;
    k.ret = ret;
    hits.increment(k);
}
"""

# One program for all four probes: under TCG, compiling anything that includes
# kernel net headers costs ~35-40 s of clang time (measured; headers on tmpfs
# are no faster), so the checks below share a single compile and one run of
# traffic.
PROBES_C = (
    COUNT_C
    + r"""
// kretprobe sees only the return value: remember the entry's state per CPU
// (NAT hooks run in softirq or in the sending task, never nested on one CPU).
BPF_HASH(entry_state, u32, const struct nf_hook_state *, 64);

int on_entry(struct pt_regs *ctx, void *priv, struct sk_buff *skb,
             const struct nf_hook_state *state) {
    u32 cpu = bpf_get_smp_processor_id();
    entry_state.update(&cpu, &state);
    count(0, state, 0);
    return 0;
}

int on_return(struct pt_regs *ctx) {
    u32 cpu = bpf_get_smp_processor_id();
    const struct nf_hook_state **state = entry_state.lookup(&cpu);
    if (!state)
        return 0;
    count(1, *state, PT_REGS_RC(ctx));
    entry_state.delete(&cpu);
    return 0;
}

// BPF_PROG is what KFUNC_PROBE expands to; named so BCC does not auto-attach
// it (BCC 0.26 looks KFUNC_PROBE targets up in vmlinux BTF only, and
// nf_nat_inet_fn is in nf_nat.ko): module_fentry attaches these two.
BPF_PROG(nat_fentry, void *priv, struct sk_buff *skb, const struct nf_hook_state *state) {
    count(2, state, 0);
    return 0;
}

BPF_PROG(nat_fexit, void *priv, struct sk_buff *skb, const struct nf_hook_state *state,
         unsigned int ret) {
    count(3, state, ret);
    return 0;
}

// Plain BCC KFUNC_PROBE works for a vmlinux function: BPF() attaches it.
KFUNC_PROBE(nf_hook_slow, struct sk_buff *skb, struct nf_hook_state *state) {
    count(4, state, 0);
    return 0;
}
"""
)


def _assert_saw_nat(hits: list[dict[str, int]], probe: int, node_inode: int, want_ret: int | None) -> None:
    """The probe fired in the node namespace at both NAT hooks, at least once
    per connection, and (for return probes) always returned want_ret."""
    mine = [h for h in hits if h["probe"] == probe and h["netns"] == node_inode]
    hooks = {h["hook"] for h in mine}
    assert {NF_INET_PRE_ROUTING, NF_INET_POST_ROUTING} <= hooks, (PROBE_NAMES[probe], hits)
    assert sum(h["count"] for h in mine) >= CONNECTIONS, (PROBE_NAMES[probe], hits)
    if want_ret is not None:
        assert {h["ret"] for h in mine} == {want_ret}, (PROBE_NAMES[probe], hits)


@pytest.fixture(scope="module")
def nat_probe_run() -> dict:
    """Compile once, attach kprobe+kretprobe (BCC) and fentry+fexit (module
    BTF) on nf_nat_inet_fn, send CONNECTIONS connections through the NAT lab."""
    run: dict = {"fentry_error": None}
    t0 = time.monotonic()
    b = BPF(text=PROBES_C.encode())
    run["compile_seconds"] = round(time.monotonic() - t0, 2)
    links: list[int] = []
    try:
        t0 = time.monotonic()
        b.attach_kprobe(event=b"nf_nat_inet_fn", fn_name=b"on_entry")
        b.attach_kretprobe(event=b"nf_nat_inet_fn", fn_name=b"on_return")
        run["kprobe_attach_seconds"] = round(time.monotonic() - t0, 2)
        t0 = time.monotonic()
        try:
            for fn, fexit in (("nat_fentry", False), ("nat_fexit", True)):
                links += attach_module_tracing(
                    b.dump_func(fn.encode()), "nf_nat", "nf_nat_inet_fn", fexit=fexit, name=fn
                )
        except OSError as exc:  # reported by the fentry check; kprobes go on
            run["fentry_error"] = str(exc)
        run["fentry_attach_seconds"] = round(time.monotonic() - t0, 2)
        with nat_lab() as lab:
            run["answers"] = lab.curl_service(CONNECTIONS)
            run["hits"] = _hits(b[b"hits"])
            run["node_netns"] = lab.node_netns_inode
    finally:
        for fd in links:
            os.close(fd)
        b.cleanup()
    record(probes=run)
    return run


def test_kprobe_and_kretprobe_on_nf_nat_inet_fn_see_nat_traffic(nat_probe_run):
    run = nat_probe_run
    assert run["answers"] == ["pod"] * CONNECTIONS
    _assert_saw_nat(run["hits"], 0, run["node_netns"], None)
    _assert_saw_nat(run["hits"], 1, run["node_netns"], NF_ACCEPT)


def test_fentry_and_fexit_on_nf_nat_inet_fn_see_nat_traffic(nat_probe_run):
    run = nat_probe_run
    assert run["fentry_error"] is None, run["fentry_error"]
    _assert_saw_nat(run["hits"], 2, run["node_netns"], None)
    _assert_saw_nat(run["hits"], 3, run["node_netns"], NF_ACCEPT)
    assert any(h["probe"] == 4 for h in run["hits"]), run["hits"]


def test_bcc_kfunc_probe_on_a_module_function_is_refused_by_bcc_026():
    """Documents the limit the raw loader works around; if BCC learns module
    BTF (newer than 0.26), this fails and the workaround can go."""
    with pytest.raises(Exception, match="Failed to load BPF program b'kfunc__nf_nat_inet_fn'"):
        BPF(text=b"KFUNC_PROBE(nf_nat_inet_fn, void *priv) { return 0; }")


def test_lab_tools_run_inside():
    """iptables-nft with the kube-proxy matches, nginx, conntrack and bird."""
    versions = {
        "iptables": sh("iptables -V").strip(),
        "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip(),
        "bird": sh("bird --version 2>&1 || true").strip(),
        "conntrack": sh("conntrack --version").strip(),
    }
    with nat_lab() as lab:
        lab.curl_service(1)
        rules = sh("iptables -t nat -S", NODE)
        entries = sh("conntrack -L -p tcp 2>/dev/null", NODE)
        conf = lab.workdir / "bird.conf"
        conf.write_text(
            "router id 10.250.1.1;\n"
            "protocol device {}\n"
            "protocol kernel { ipv4 { export all; }; }\n"
            "protocol static { ipv4; route 10.251.0.0/24 blackhole; }\n"
        )
        sock = lab.workdir / "bird.ctl"
        bird = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                NODE,
                "bird",
                "-f",
                "-c",
                str(conf),
                "-s",
                str(sock),
                "-P",
                str(lab.workdir / "bird.pid"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            routes = ""
            for _ in range(50):
                routes = sh("ip route show proto bird", NODE)
                if "10.251.0.0/24" in routes:
                    break
                time.sleep(0.2)
            protocols = sh(f"birdc -s {sock} show protocols", NODE)
        finally:
            bird.terminate()
            bird.wait(5)
    record(
        lab_tools={
            "versions": versions,
            "bird_routes": routes.strip(),
            "conntrack_entries": len(entries.splitlines()),
        }
    )
    assert "nf_tables" in versions["iptables"]
    assert "statistic" in rules and "--comment" in rules and "MASQUERADE" in rules
    assert "10.96.0.10" in entries
    assert "10.251.0.0/24" in routes, protocols
