#!/usr/bin/env python3
"""The benchmark suite: nvmf-raid over NVMe/TCP on 127.0.0.1 against references measured
in the same run. Run through bench/suite.sh, which builds the binaries first.

Every case starts a fresh target (reactors on core 0, or cores 0 and 1 for the two-core
cases) and drives it with `nvmf-raid perf` pinned to the last core. One table:

  IOPS, MiB/s, p50/p99/p99.9/max latency (us);
  tgt s/M, ini s/M: busy CPU seconds per million I/Os of the target's reactors (their
    busy-time counter) and of the initiator (its passes that made progress). Both sides
    poll, so their plain CPU time is their wall time; the busy time is their work;
  ceiling: IOPS as a fraction of the loopback fabric's own request/response rate for the
    same workload (bench/fabric.rs: both ends polling, no NVMe, no storage);
  vs null: IOPS as a fraction of the null namespace's for the same workload and cores.
    For one-core adaptive cases over RAM, a null target runs beside the case's target on
    the same core (idle while the other is measured, as adaptive reactors sleep) and every
    repetition measures both back to back; the column is the median of those paired
    ratios, so the VM's slow and fast phases fall on both sides of each ratio;
  no SQ flow ctl: reads with the host's SQ flow control disabled, so each clean read
    completes in its last C2HData PDU (SUCCESS flag) without a response capsule; vs null
    pairs them with the null namespace under the same option;
  steal: CPU time the hypervisor took from this VM during the case (runs with much steal
    are not comparable).

Then full-stripe sequential writes on RAID-5 and RAID-6: over files against the members'
own aggregate write bandwidth (fio on the member files, same I/O size per member and
queue depth), which bounds a parity volume at (N-1)/N (RAID-5) and (N-2)/N (RAID-6) of it;
over RAM against the null namespace with the same I/O size.

  bench/suite.sh [SECONDS]       every case (about 12 minutes at 5 s)
  SUITE=quick bench/suite.sh     null, RAID-0 and RAID-5 over RAM
  REPEAT=3 bench/suite.sh        each case three times; the run with the median IOPS
  SUITE=levels bench/suite.sh    RAID 3, 4 and 5 over the same five RAM members, RAID 6
                                 and 6-DP over six (four data strips per row), paired
                                 with the null reference, then stop
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
import urllib.request

SECS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
QUICK = os.environ.get("SUITE", "full") == "quick"
LEVELS = os.environ.get("SUITE", "full") == "levels"
REPEAT = int(os.environ.get("REPEAT", "1"))
BIN = "target/release/nvmf-raid"
FABRIC = os.environ["FABRIC"]
PORT = int(os.environ.get("BENCH_PORT", "4441"))
REF_PORT = PORT + 2  # the paired null reference; metrics one above each listener
NQN = "nqn.2026-11.io.nvmf-raid:suite"
LAST = os.cpu_count() - 1
STRIP = 64 * 1024
MEMBERS = {"raid0": 4, "raid1": 2, "raid5": 4, "raid6": 6, "raid10": 4}
PARITY = {"raid5": 1, "raid6": 2}
if LEVELS:
    # The same five members under each single-parity level (RAID 3's block is then 2 KiB:
    # four 512-byte member blocks), six under each double-parity level.
    MEMBERS.update({"raid3": 5, "raid4": 5, "raid5": 5, "raid6": 6, "raid6-dp": 6})
    PARITY = {"raid3": 1, "raid4": 1, "raid5": 1, "raid6": 2, "raid6-dp": 2}
FILE_BYTES = 1 << 30
RAM_BYTES = 256 << 20
RESERVED = 1 << 20  # nvmf-raid's metadata area at the start of each member

WORKLOADS = [("randread", 4096, 1), ("randread", 4096, 32), ("randwrite", 4096, 32), ("read", 131072, 8), ("write", 131072, 8)]
SMALL = [("randread", 4096, 1), ("randread", 4096, 32), ("randwrite", 4096, 32)]

DIR = tempfile.mkdtemp(prefix="nvmf-raid-suite.", dir=os.environ.get("TMPDIR", "/var/tmp"))


def config(level, media, cores, polling, port):
    out = [f'[reactor]\ncores = [{cores}]\npolling = "{polling}"',
           f'[[listener]]\naddress = "127.0.0.1:{port}"',
           f'[metrics]\naddress = "127.0.0.1:{port + 1}"']
    if level == "null":
        out.append('[[device]]\nname = "null0"\nkind = "null"\nsize = "16G"')
        ns = "null0"
    else:
        n = MEMBERS[level]
        for d in range(n):
            if media == "ram":
                out.append(f'[[device]]\nname = "m{d}"\nkind = "ram"\nsize = "{RAM_BYTES >> 20}M"')
            else:
                out.append(f'[[device]]\nname = "m{d}"\nkind = "file"\npath = "{DIR}/m{d}.img"\nsize = "{FILE_BYTES >> 20}M"')
        members = ", ".join(f'"m{d}"' for d in range(n))
        group = "\ngroup_size = 2" if level == "raid10" else ""
        out.append(f'[[volume]]\nname = "vol"\nlevel = "{level}"\nmembers = [{members}]{group}')
        ns = "vol"
    out.append(f'[[subsystem]]\nnqn = "{NQN}"\nallow_any_host = true\n[[subsystem.namespace]]\ndevice = "{ns}"')
    return "\n".join(out) + "\n"


def prepare_files():
    """Member files written with zeroes for real, so reads reach the disk (a hole would
    read back without any I/O) and a new volume's members read as zeroes, as it assumes."""
    for d in range(max(MEMBERS.values())):
        subprocess.run(["dd", "if=/dev/zero", f"of={DIR}/m{d}.img", "bs=1M", f"count={FILE_BYTES >> 20}", "oflag=direct", "status=none"], check=True)


def wipe_metadata():
    """Make the member files new devices again: clear the metadata area only."""
    for d in range(max(MEMBERS.values())):
        with open(f"{DIR}/m{d}.img", "r+b") as f:
            f.write(bytes(RESERVED))


class Target:
    def __init__(self, level, media, cores, polling, port=PORT):
        if media == "file":
            wipe_metadata()
        self.port = port
        path = f"{DIR}/target-{port}.toml"
        with open(path, "w") as f:
            f.write(config(level, media, cores, polling, port))
        self.log = open(f"{DIR}/target-{port}.log", "w+")
        self.proc = subprocess.Popen([BIN, "serve", "--config", path, "--log", "warn"], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            self.log.seek(0)
            if "serving" in self.log.read():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.log.seek(0)
        sys.exit(f"target did not start:\n{self.log.read()}")

    def busy_seconds(self):
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port + 1}/metrics", timeout=10).read().decode()
        return sum(float(v) for v in re.findall(r"^nvmf_raid_reactor_busy_seconds_total\{[^}]*\} ([0-9.]+)$", text, re.M))

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def cpu_times():
    fields = open("/proc/stat").readline().split()[1:]
    vals = [int(x) for x in fields]
    return sum(vals[:8]), vals[7]


def perf(port, pattern, bs, qd, queues=1, extra=()):
    out = subprocess.run([BIN, "perf", "--addr", f"127.0.0.1:{port}", "--nqn", NQN, "-w", pattern, "-o", str(bs), "-q", str(qd),
                          "--queues", str(queues), "-t", str(SECS), "--core", str(LAST), "--log", "warn", *extra],
                         check=True, capture_output=True, text=True).stdout
    num = lambda k: float(re.search(k + r"\s+([0-9.]+)", out).group(1))
    busy = re.search(r"busy ([0-9.]+) s", out)
    return {"iops": num("IOPS"), "mibs": num("MiB/s"), "p50": num("p50"), "p99": num("p99"), "p999": num(r"p99\.9"),
            "max": num("max"), "ini_busy": float(busy.group(1)), "secs": float(re.search(r"time ([0-9.]+)s", out).group(1))}


def run_once(target, pattern, bs, qd, queues, extra):
    t0, s0, b0 = *cpu_times(), target.busy_seconds()
    r = perf(target.port, pattern, bs, qd, queues, extra)
    t1, s1, b1 = *cpu_times(), target.busy_seconds()
    ios = max(r["iops"] * r["secs"], 1)
    r.update(tgt=(b1 - b0) / ios * 1e6, ini=r["ini_busy"] / ios * 1e6, steal=(s1 - s0) / max(t1 - t0, 1))
    return r


def median(values):
    return sorted(values)[(len(values) - 1) // 2]


def measure(target, pattern, bs, qd, queues=1, extra=(), ref=None):
    """The run with the median IOPS of REPEAT runs. With a reference target, each run is
    followed by one on the reference, and the result carries the median paired ratio."""
    runs, ratios = [], []
    for _ in range(REPEAT):
        r = run_once(target, pattern, bs, qd, queues, extra)
        runs.append(r)
        if ref is not None:
            ratios.append(r["iops"] / run_once(ref, pattern, bs, qd, queues, extra)["iops"])
    out = sorted(runs, key=lambda r: r["iops"])[(len(runs) - 1) // 2]
    out["paired"] = median(ratios) if ratios else None
    return out


HEADER = f"{'case':<26} {'workload':<18} {'IOPS':>9} {'MiB/s':>8} {'p50':>7} {'p99':>7} {'p99.9':>8} {'max':>8} {'tgt s/M':>8} {'ini s/M':>8} {'ceiling':>8} {'vs null':>8} {'steal':>6}"


def row(name, workload, r, ceiling=None, vs=None):
    f = lambda x: f"{x:8.2f}" if x is not None else f"{'':>8}"
    print(f"{name:<26} {workload:<18} {r['iops']:9.0f} {r['mibs']:8.1f} {r['p50']:7.1f} {r['p99']:7.1f} {r['p999']:8.1f} {r['max']:8.1f} "
          f"{r['tgt']:8.2f} {r['ini']:8.2f} {f(ceiling)} {f(vs)} {r['steal'] * 100:5.1f}%", flush=True)


def wl_name(pattern, bs, qd):
    size = f"{bs // 1024}K"
    return f"{pattern} {size} QD{qd}"


def fabric_ceilings(workloads):
    ceil = {}
    for pattern, bs, qd in workloads:
        d = "write" if "write" in pattern else "read"
        out = subprocess.run([FABRIC, d, str(bs), str(qd), str(SECS)], check=True, capture_output=True, text=True).stdout
        ceil[(pattern, bs, qd)] = float(re.search(r": ([0-9]+) IOPS", out).group(1))
        print(f"{'fabric ceiling':<26} {wl_name(pattern, bs, qd):<18} {ceil[(pattern, bs, qd)]:9.0f}", flush=True)
    return ceil


def fio_members(n, bs, qd):
    """Aggregate sequential write bandwidth (MiB/s) of n member files written at once,
    past the metadata area, with O_DIRECT and io_uring."""
    jobs = []
    for d in range(n):
        jobs += [f"--name=m{d}", f"--filename={DIR}/m{d}.img", f"--offset={RESERVED}"]
    out = subprocess.run(["fio", "--output-format=json", "--ioengine=io_uring", "--direct=1", "--rw=write", f"--bs={bs}",
                          f"--iodepth={qd}", "--time_based", f"--runtime={SECS}", f"--size={FILE_BYTES - RESERVED}",
                          f"--cpus_allowed={LAST}", "--group_reporting"] + jobs, check=True, capture_output=True, text=True).stdout
    return json.loads(out)["jobs"][0]["write"]["bw_bytes"] / 2**20


def main():
    cases = [("null", "ram"), ("raid0", "ram"), ("raid5", "ram")]
    if not QUICK:
        cases = [("null", "ram")] + [(lvl, m) for m in ("ram", "file") for lvl in ("raid0", "raid1", "raid5", "raid6", "raid10")]
    if LEVELS:
        cases = [(lvl, "ram") for lvl in ("raid3", "raid4", "raid5", "raid6", "raid6-dp")]
    workloads = SMALL if QUICK else WORKLOADS
    if any(m == "file" for _, m in cases):
        prepare_files()
    print(f"{SECS} s per case, repeat {REPEAT}; target on core 0 (0 and 1 for 2 cores), initiator on core {LAST}")
    print(HEADER, flush=True)
    stripe_sizes = sorted({(MEMBERS[l] - PARITY[l]) * STRIP for l in PARITY})
    ceil = fabric_ceilings(workloads + [("write", b, 8) for b in stripe_sizes])
    null = {}
    ref = Target("null", "ram", "0", "adaptive", port=REF_PORT)
    for level, media in cases:
        t = Target(level, media, "0", "adaptive")
        name = "null" if level == "null" else f"{level} {media}"
        paired = media == "ram" and level != "null"
        for w in workloads:
            r = measure(t, *w, ref=ref if paired else None)
            if level == "null":
                null[("1", w)] = r["iops"]
            vs = r["paired"] if paired else (1.0 if level == "null" else None)
            row(f"{name}, 1 core", wl_name(*w), r, r["iops"] / ceil[w], vs)
        t.stop()
    if LEVELS:
        ref.stop()
        return
    for level in ("null", "raid0", "raid5"):
        for cores, polling, label, queues in (("0", "busy", "1 core busy", 1), ("0, 1", "adaptive", "2 cores", 2)):
            t = Target(level, "ram", cores, polling)
            for w in SMALL if polling == "busy" else SMALL[1:]:
                r = measure(t, *w, queues=queues)
                if level == "null":
                    null[(label, w)] = r["iops"]
                row(f"{level} ram, {label}" if level != "null" else f"null, {label}", wl_name(*w), r, r["iops"] / ceil[w], r["iops"] / null[(label, w)])
            t.stop()
    # Header and data digests (CRC32C, computed with the SSE4.2 instruction) on both sides.
    t = Target("null", "ram", "0", "adaptive")
    for w in (("randread", 4096, 32), ("read", 131072, 8)) if not QUICK else (("randread", 4096, 32),):
        r = measure(t, *w, extra=("--hdgst", "--ddgst"))
        row("null, digests", wl_name(*w), r, r["iops"] / ceil[w], r["iops"] / null[("1", w)])
    t.stop()
    # Without SQ flow control (perf --disable-sqflow, nvme connect --disable-sqflow) reads
    # complete in their last data PDU: one PDU fewer per read on both sides.
    reads = [w for w in workloads if "read" in w[0]]
    for level in ("null", "raid0"):
        t = Target(level, "ram", "0", "adaptive")
        for w in reads:
            r = measure(t, *w, extra=("--disable-sqflow",), ref=ref if level != "null" else None)
            row(f"{level}{' ram' if level != 'null' else ''}, no SQ flow ctl", wl_name(*w), r, r["iops"] / ceil[w], r["paired"] or 1.0)
        t.stop()
    full_stripe(ref)
    ref.stop()


def full_stripe(ref):
    print()
    print("full-stripe sequential writes, QD8 (vs: fraction of the reference; target at least 0.90 of the bound)")
    print(f"{'case':<26} {'I/O size':>9} {'MiB/s':>9} {'reference':<34} {'ref MiB/s':>9} {'bound':>6} {'vs bound':>9} {'steal':>6}")
    levels = ("raid5",) if QUICK else ("raid5", "raid6")
    medias = ("ram",) if QUICK else ("ram", "file")
    for media in medias:
        for level in levels:
            n, p = MEMBERS[level], PARITY[level]
            bs = (n - p) * STRIP
            t = Target(level, media, "0", "adaptive")
            r = measure(t, "write", bs, 8, ref=ref if media == "ram" else None)
            t.stop()
            if media == "file":
                ref_bw, ref_name, bound = fio_members(n, STRIP, 8), f"fio on the {n} member files", (n - p) / n
            else:
                # Paired runs: the reference figure shown is the one implied by the median ratio.
                ref_bw, ref_name, bound = r["mibs"] / r["paired"], "null namespace, paired runs", 1.0
            print(f"{level + ' ' + media:<26} {bs // 1024:>8}K {r['mibs']:9.1f} {ref_name:<34} {ref_bw:9.1f} {bound:6.2f} {r['mibs'] / (ref_bw * bound):9.2f} {r['steal'] * 100:5.1f}%", flush=True)


try:
    main()
finally:
    shutil.rmtree(DIR, ignore_errors=True)
