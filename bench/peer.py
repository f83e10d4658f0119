#!/usr/bin/env python3
"""nvmf-raid against SPDK's NVMe/TCP target, side by side in one run. Run through
bench/peer.sh, which builds our binaries and finds SPDK's.

Both targets get the same core (0) and the same volumes over RAM: a null namespace, and
RAID-0 (4 members), RAID-1 (2) and RAID-5 (4; SPDK's raid5f) over 256 MiB members with
64 KiB strips (SPDK: malloc bdevs with 512-byte blocks, as our RAM devices). They run
alternately, never together: per case and repetition one target is started, driven by
both initiators for every workload of the case, and stopped, then the other, the order
swapped every repetition. Both targets busy-poll. The initiators run on core 1:
spdk_nvme_perf (busy-polling) and `nvmf-raid perf --disable-sqflow` (busy-polling).

Printed per case, workload and initiator: IOPS of each target (median of the
repetitions), ours/SPDK (median of the per-repetition ratios), p50 and p99 latency of
each (median), and ours as a fraction of the loopback fabric's ceiling measured at the
start of the same run (bench/fabric.rs).

  bench/peer.sh [SECONDS]          SECONDS per measurement (default 10), REPEAT=3
  CASES="raid0 null"               only these cases (default: all)
  WORKLOADS="128K"                 only workloads whose name contains one of these words
  SPDK_DIR=/path/to/spdk           an SPDK build (build/bin/nvmf_tgt, build/bin/spdk_nvme_perf,
                                   scripts/rpc.py), or NVMF_TGT, SPDK_PERF and SPDK_RPC
"""
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

SECS = int(sys.argv[1]) if len(sys.argv) > 1 else 10
REPEAT = int(os.environ.get("REPEAT", "3"))
BIN = "target/release/nvmf-raid"
FABRIC = os.environ["FABRIC"]
SPDK_DIR = os.environ.get("SPDK_DIR", "")
NVMF_TGT = os.environ.get("NVMF_TGT") or os.path.join(SPDK_DIR, "build/bin/nvmf_tgt")
SPDK_PERF = os.environ.get("SPDK_PERF") or os.path.join(SPDK_DIR, "build/bin/spdk_nvme_perf")
SPDK_RPC = os.environ.get("SPDK_RPC") or os.path.join(SPDK_DIR, "scripts/rpc.py")
OURS_PORT, SPDK_PORT = 4451, 4453
NQN = "nqn.2026-11.io.nvmf-raid:peer"
MEMBER_MIB, STRIP_KIB, BLOCK = 256, 64, 512
TARGET_CORE, INITIATOR_CORE = 0, 1

RR4K32, RW4K32, RR4K1 = ("randread", 4096, 32), ("randwrite", 4096, 32), ("randread", 4096, 1)
R128K8, W128K8 = ("read", 131072, 8), ("write", 131072, 8)
# (case, our level, SPDK's raid level, members, workloads). SPDK's raid5f writes whole
# stripes only, so RAID-5 is compared on reads.
CASES = [
    ("null", "null", None, 0, [RR4K32, RW4K32]),
    ("raid0", "raid0", "raid0", 4, [RR4K32, RR4K1, RW4K32, R128K8, W128K8]),
    ("raid1", "raid1", "raid1", 2, [RR4K32, RW4K32]),
    ("raid5", "raid5", "raid5f", 4, [RR4K32]),
]

def selected(cases):
    """The cases and workloads CASES= and WORKLOADS= ask for (all by default)."""
    want_cases = os.environ.get("CASES", "").split()
    want_wls = os.environ.get("WORKLOADS", "").split()
    out = []
    for case in cases:
        wls = [w for w in case[4] if not want_wls or any(x in wl_name(w) for x in want_wls)]
        if (not want_cases or case[0] in want_cases) and wls:
            out.append((*case[:4], wls))
    if not out:
        sys.exit(f"peer: CASES={want_cases} WORKLOADS={want_wls} select nothing")
    return out


INITIATORS = ("spdk_nvme_perf", "nvmf-raid perf")
DIR = tempfile.mkdtemp(prefix="nvmf-raid-peer.", dir=os.environ.get("TMPDIR", "/var/tmp"))


def wl_name(w):
    pattern, bs, qd = w
    return f"{pattern} {bs // 1024}K QD{qd}"


def wait_for(what, ok, proc, log, secs=60):
    deadline = time.time() + secs
    while time.time() < deadline:
        if ok():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    log.seek(0)
    sys.exit(f"{what} did not start:\n{log.read()[-4000:]}")


class Ours:
    name = "nvmf-raid"
    port = OURS_PORT

    def __init__(self, level, members):
        out = [f'[reactor]\ncores = [{TARGET_CORE}]\npolling = "busy"',
               f'[[listener]]\naddress = "127.0.0.1:{self.port}"']
        if level == "null":
            out.append('[[device]]\nname = "null0"\nkind = "null"\nsize = "16G"')
            ns = "null0"
        else:
            for d in range(members):
                out.append(f'[[device]]\nname = "m{d}"\nkind = "ram"\nsize = "{MEMBER_MIB}M"')
            names = ", ".join(f'"m{d}"' for d in range(members))
            out.append(f'[[volume]]\nname = "vol"\nlevel = "{level}"\nmembers = [{names}]\nstrip_size = "{STRIP_KIB}K"')
            ns = "vol"
        out.append(f'[[subsystem]]\nnqn = "{NQN}"\nallow_any_host = true\n[[subsystem.namespace]]\ndevice = "{ns}"')
        path = f"{DIR}/ours.toml"
        with open(path, "w") as f:
            f.write("\n".join(out) + "\n")
        self.log = open(f"{DIR}/ours.log", "w+")
        self.proc = subprocess.Popen([BIN, "serve", "--config", path, "--log", "warn"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_for("nvmf-raid", lambda: "serving" in open(self.log.name).read(), self.proc, self.log)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def hugepages_free_mib():
    """Free 2 MiB hugepages DPDK can use (a hugetlbfs mounted), in MiB."""
    if not any(line.split()[2] == "hugetlbfs" for line in open("/proc/mounts")):
        return 0
    info = open("/proc/meminfo").read()
    free = int(re.search(r"HugePages_Free:\s+(\d+)", info).group(1))
    size_kib = int(re.search(r"Hugepagesize:\s+(\d+)", info).group(1))
    return free * size_kib // 1024


def spdk_memory_args(mib):
    """Hugepages when the machine has them free, else plain memory (--no-huge)."""
    if hugepages_free_mib() >= mib:
        return ["-s", str(mib)]
    return ["--no-huge", "-s", str(mib)]


class Spdk:
    name = "SPDK"
    port = SPDK_PORT

    def __init__(self, raid_level, members):
        bdevs = []
        if raid_level is None:
            bdevs.append({"method": "bdev_null_create",
                          "params": {"name": "null0", "num_blocks": (16 << 30) // BLOCK, "block_size": BLOCK}})
            ns = "null0"
        else:
            for d in range(members):
                bdevs.append({"method": "bdev_malloc_create",
                              "params": {"name": f"m{d}", "num_blocks": (MEMBER_MIB << 20) // BLOCK, "block_size": BLOCK}})
            raid = {"name": "vol", "raid_level": raid_level, "base_bdevs": [f"m{d}" for d in range(members)]}
            if raid_level != "raid1":
                raid["strip_size_kb"] = STRIP_KIB
            bdevs.append({"method": "bdev_raid_create", "params": raid})
            ns = "vol"
        nvmf = [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
            {"method": "nvmf_create_subsystem",
             "params": {"nqn": NQN, "allow_any_host": True, "serial_number": "SPDK00000000000001"}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": ns}}},
            {"method": "nvmf_subsystem_add_listener",
             "params": {"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4",
                                                       "traddr": "127.0.0.1", "trsvcid": str(self.port)}}},
        ]
        path = f"{DIR}/spdk.json"
        with open(path, "w") as f:
            json.dump({"subsystems": [{"subsystem": "bdev", "config": bdevs},
                                      {"subsystem": "nvmf", "config": nvmf}]}, f)
        self.sock = f"{DIR}/spdk.sock"
        mem = MEMBER_MIB * members + 1024
        self.log = open(f"{DIR}/spdk.log", "w+")
        self.proc = subprocess.Popen([NVMF_TGT, "-m", hex(1 << TARGET_CORE), "-r", self.sock, "--json", path,
                                      *spdk_memory_args(mem)], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for("SPDK nvmf_tgt", self.listening, self.proc, self.log)

    def listening(self):
        r = subprocess.run([sys.executable, SPDK_RPC, "-s", self.sock, "-t", "2", "nvmf_subsystem_get_listeners", NQN],
                           capture_output=True, text=True)
        return r.returncode == 0 and str(self.port) in r.stdout

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def run_spdk_perf(port, w):
    pattern, bs, qd = w
    trid = f"trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{NQN}"
    out = subprocess.run([SPDK_PERF, "-r", trid, "-q", str(qd), "-o", str(bs), "-w", pattern, "-t", str(SECS),
                          "-c", hex(1 << INITIATOR_CORE), "-L", *spdk_memory_args(512)],
                         capture_output=True, text=True, timeout=SECS + 120)
    m = re.search(r"^Total\s*:\s*([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)", out.stdout, re.M)
    if out.returncode != 0 or not m:
        sys.exit(f"spdk_nvme_perf failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    pct = lambda p: float(re.search(rf"^\s*{p}%\s*:\s*([0-9.]+)us", out.stdout, re.M).group(1))
    return {"iops": float(m.group(1)), "p50": pct(r"50\.00000"), "p99": pct(r"99\.00000")}


def run_ours_perf(port, w):
    pattern, bs, qd = w
    out = subprocess.run([BIN, "perf", "--addr", f"127.0.0.1:{port}", "--nqn", NQN, "-w", pattern, "-o", str(bs),
                          "-q", str(qd), "-t", str(SECS), "--core", str(INITIATOR_CORE), "--disable-sqflow",
                          "--log", "warn"], check=True, capture_output=True, text=True, timeout=SECS + 120).stdout
    num = lambda k: float(re.search(k + r"\s+([0-9.]+)", out).group(1))
    return {"iops": num("IOPS"), "p50": num("p50"), "p99": num("p99")}


PERF = {"spdk_nvme_perf": run_spdk_perf, "nvmf-raid perf": run_ours_perf}


def fabric_ceiling(w):
    pattern, bs, qd = w
    d = "write" if "write" in pattern else "read"
    out = subprocess.run([FABRIC, d, str(bs), str(qd), str(SECS)], check=True, capture_output=True, text=True).stdout
    return float(re.search(r": ([0-9]+) IOPS", out).group(1))


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main():
    for tool in (NVMF_TGT, SPDK_PERF, SPDK_RPC):
        if not os.access(tool, os.X_OK if not tool.endswith(".py") else os.R_OK):
            sys.exit(f"peer: no SPDK tool at {tool} (set SPDK_DIR to an SPDK build, or NVMF_TGT, SPDK_PERF, SPDK_RPC)")
    hp = hugepages_free_mib()
    print(f"{cpu_model()}; {SECS} s per measurement, {REPEAT} repetitions; targets on core {TARGET_CORE}, "
          f"initiators on core {INITIATOR_CORE}; SPDK with {'hugepages' if hp else 'no hugepages'}", flush=True)
    cases = selected(CASES)
    workloads = sorted({w for case in cases for w in case[4]})
    ceiling = {}
    for w in workloads:
        ceiling[w] = fabric_ceiling(w)
        print(f"fabric ceiling {wl_name(w):<20} {ceiling[w]:10.0f} IOPS", flush=True)
    # results[(case, w, initiator, side)] = [runs]
    results = {}
    for case, level, raid_level, members, wls in cases:
        for rep in range(REPEAT):
            sides = [("ours", lambda: Ours(level, members)), ("spdk", lambda: Spdk(raid_level, members))]
            for side, start in sides if rep % 2 == 0 else sides[::-1]:
                target = start()
                try:
                    for w in wls:
                        for ini in INITIATORS:
                            r = PERF[ini](target.port, w)
                            results.setdefault((case, w, ini, side), []).append(r)
                            print(f"  {case:<6} {wl_name(w):<18} {ini:<15} {target.name:<10} rep {rep + 1}: "
                                  f"{r['iops']:10.0f} IOPS  p50 {r['p50']:8.1f}  p99 {r['p99']:8.1f} us", flush=True)
                finally:
                    target.stop()
    print()
    print("| case | workload | initiator | nvmf-raid IOPS | SPDK IOPS | ours/SPDK | p50 ours / SPDK (us) "
          "| p99 ours / SPDK (us) | ours / fabric ceiling |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    med = lambda runs, k: statistics.median(r[k] for r in runs)
    for case, _, _, _, wls in cases:
        for w in wls:
            for ini in INITIATORS:
                ours, spdk = results[(case, w, ini, "ours")], results[(case, w, ini, "spdk")]
                ratio = statistics.median(o["iops"] / s["iops"] for o, s in zip(ours, spdk))
                print(f"| {case} | {wl_name(w)} | {ini} | {med(ours, 'iops'):.0f} | {med(spdk, 'iops'):.0f} | {ratio:.2f} "
                      f"| {med(ours, 'p50'):.1f} / {med(spdk, 'p50'):.1f} | {med(ours, 'p99'):.1f} / {med(spdk, 'p99'):.1f} "
                      f"| {med(ours, 'iops') / ceiling[w]:.2f} |", flush=True)


try:
    main()
finally:
    shutil.rmtree(DIR, ignore_errors=True)
