#!/usr/bin/env python3
"""RAID volumes over real block devices: zram devices as members, against fio on the same
devices in the same run. Run through bench/zram.sh (root: it adds and removes the zram
devices).

Four zram devices of 1 GiB are added (/sys/class/zram-control/hot_add), written through
once with incompressible data (so that reads decompress real pages rather than return a
hole's zeroes), then for every workload:

  raw: fio (io_uring, O_DIRECT) on the four devices at once, one job per device, the
    workload's queue depth split over them, pinned to core 0 (where the target's reactor
    runs): what the members give;
  raid0, raid5: nvmf-raid on core 0 (adaptive polling) with the four devices as members
    (`kind = "file"` on /dev/zramN, io_uring, O_DIRECT), 64 KiB strips, driven over
    NVMe/TCP on 127.0.0.1 by `nvmf-raid perf` on core 1.

Printed: IOPS and MiB/s of each, and the volume's as a fraction of raw. A RAID-5 small
write costs four member I/Os (two reads, two writes), so 0.25 of raw is its bound.

  bench/zram.sh [SECONDS]     SECONDS per measurement (default 5)
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

SECS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
BIN = "target/release/nvmf-raid"
PORT = 4461
NQN = "nqn.2026-11.io.nvmf-raid:zram"
DEVICES, DEV_BYTES = 4, 1 << 30
WORKLOADS = [("randread", 4096, 32), ("randwrite", 4096, 32), ("read", 131072, 8), ("write", 131072, 8)]
DIR = tempfile.mkdtemp(prefix="nvmf-raid-zram.", dir=os.environ.get("TMPDIR", "/var/tmp"))
CONTROL = "/sys/class/zram-control"


def add_devices():
    if not os.path.exists(CONTROL):
        subprocess.run(["modprobe", "zram"], check=False)
    if not os.path.exists(CONTROL):
        sys.exit("zram: no /sys/class/zram-control (this kernel has no zram)")
    ids = []
    for _ in range(DEVICES):
        n = int(open(f"{CONTROL}/hot_add").read())
        ids.append(n)
        with open(f"/sys/block/zram{n}/disksize", "w") as f:
            f.write(str(DEV_BYTES))
    return ids


def remove_devices(ids):
    # A device closed after writing is probed (udev, blkid) for a moment: retry while busy.
    for n in ids:
        for attempt in range(50):
            try:
                with open(f"/sys/block/zram{n}/reset", "w") as f:
                    f.write("1")
                with open(f"{CONTROL}/hot_remove", "w") as f:
                    f.write(str(n))
                break
            except OSError as e:
                if attempt == 49:
                    print(f"zram: could not remove zram{n}: {e}", file=sys.stderr)
                time.sleep(0.1)


def fio(paths, pattern, bs, qd, secs, core=0):
    per = max(qd // len(paths), 1)
    jobs = []
    for i, p in enumerate(paths):
        jobs += [f"--name=d{i}", f"--filename={p}"]
    args = ["fio", "--output-format=json", "--ioengine=io_uring", "--direct=1", f"--rw={pattern}", f"--bs={bs}",
            f"--iodepth={per}", f"--cpus_allowed={core}", "--group_reporting", "--randrepeat=0",
            "--refill_buffers", "--norandommap"]
    if secs:
        args += ["--time_based", f"--runtime={secs}"]
    out = subprocess.run(args + jobs, check=True, capture_output=True, text=True).stdout
    j = json.loads(out)["jobs"][0]
    side = j["write"] if "write" in pattern else j["read"]
    return side["iops"], side["bw_bytes"] / 2**20


def target(level, paths):
    # New members for each level: clear the metadata area (superblock, bitmap).
    for p in paths:
        with open(p, "r+b") as f:
            f.write(bytes(1 << 20))
            os.fsync(f.fileno())
    out = [f'[reactor]\ncores = [0]\npolling = "adaptive"', f'[[listener]]\naddress = "127.0.0.1:{PORT}"']
    for i, p in enumerate(paths):
        out.append(f'[[device]]\nname = "z{i}"\nkind = "file"\npath = "{p}"')
    names = ", ".join(f'"z{i}"' for i in range(len(paths)))
    out.append(f'[[volume]]\nname = "vol"\nlevel = "{level}"\nmembers = [{names}]\nstrip_size = "64K"')
    out.append(f'[[subsystem]]\nnqn = "{NQN}"\nallow_any_host = true\n[[subsystem.namespace]]\ndevice = "vol"')
    cfg = f"{DIR}/{level}.toml"
    with open(cfg, "w") as f:
        f.write("\n".join(out) + "\n")
    log = open(f"{DIR}/{level}.log", "w+")
    proc = subprocess.Popen([BIN, "serve", "--config", cfg, "--log", "warn"], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while time.time() < deadline and proc.poll() is None:
        if "serving" in open(log.name).read():
            return proc
        time.sleep(0.05)
    log.seek(0)
    sys.exit(f"target did not start:\n{log.read()}")


def perf(pattern, bs, qd):
    out = subprocess.run([BIN, "perf", "--addr", f"127.0.0.1:{PORT}", "--nqn", NQN, "-w", pattern, "-o", str(bs),
                          "-q", str(qd), "-t", str(SECS), "--core", "1", "--log", "warn"],
                         check=True, capture_output=True, text=True).stdout
    num = lambda k: float(re.search(k + r"\s+([0-9.]+)", out).group(1))
    return num("IOPS"), num("MiB/s")


def main(ids):
    paths = [f"/dev/zram{n}" for n in ids]
    print(f"{DEVICES} zram devices of {DEV_BYTES >> 30} GiB ({', '.join(paths)}), "
          f"{open('/sys/block/zram%d/comp_algorithm' % ids[0]).read().strip()}; {SECS} s per measurement", flush=True)
    # Every page written once (incompressible), so reads decompress real data.
    fio(paths, "write", 1 << 20, 16, 0)
    raw = {w: fio(paths, *w, SECS) for w in WORKLOADS}
    print()
    print("| workload | raw fio IOPS | raw MiB/s | level | volume IOPS | volume MiB/s | volume / raw |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for level in ("raid0", "raid5"):
        proc = target(level, paths)
        try:
            for w in WORKLOADS:
                iops, mibs = perf(*w)
                r_iops, r_mibs = raw[w]
                print(f"| {w[0]} {w[1] // 1024}K QD{w[2]} | {r_iops:.0f} | {r_mibs:.1f} | {level} | {iops:.0f} | "
                      f"{mibs:.1f} | {iops / r_iops:.2f} |", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=60)


ids = add_devices()
try:
    main(ids)
finally:
    remove_devices(ids)
    shutil.rmtree(DIR, ignore_errors=True)
