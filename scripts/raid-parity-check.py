#!/usr/bin/env python3
"""Offline parity check of a stopped nvmf-raid RAID 3, 4, 5, 6 or 6-DP volume.

    scripts/raid-parity-check.py LEVEL STRIP_BYTES ROWS SLOT0_FILE SLOT1_FILE ...

Reads the member files (in slot order, as `volume status --json` lists them) and checks
every member row (strip row) below ROWS: P must be the XOR of the data strips and, for
RAID-6, Q must be sum g^i * D_i in GF(2^8) with the polynomial 0x11d. The layout is the
target's (src/volume/layout.rs, md's left-symmetric): for stripe s of n members, P is on
slot n-1-(s mod n), Q on the next slot and data strip i on (P + parity_count + i) mod n;
RAID 3 and 4 keep P on the last slot and data strip i on slot i (RAID 3's strip is one
member block). RAID-6 DP keeps its row parity on the next-to-last slot and its diagonal
parity on the last, data strip i on slot i; straight from the definition (Corbett et al.,
FAST 2004): over the prime p (5 up to four data members, else 17) each strip is p - 1
cells, cell (r, c) of the data columns (zero columns past k) and the row-parity column
p - 1 lies on diagonal (r + c) mod p, and diagonal cell d is the XOR of diagonal d's
cells, for d < p - 1.
Member data starts after the 1 MiB reserved for the superblock. Rows whose strips are all
zero (never written, sparse) are consistent by construction and counted as such.

Prints a one-line summary; exits 1 if any row is inconsistent (listing the first few).
"""
import sys

RESERVED = 1 << 20


def gf_mul(a, b):
    r = 0
    while b:
        if b & 1:
            r ^= a
        a <<= 1
        if a & 0x100:
            a ^= 0x11D
        b >>= 1
    return r


def mul_table(c):
    return bytes(gf_mul(x, c) for x in range(256))


def xor(blocks, size):
    acc = 0
    for b in blocks:
        acc ^= int.from_bytes(b, "little")
    return acc.to_bytes(size, "little")


def diagonal_parity(data, row, strip):
    k = len(data)
    prime = 5 if k <= 4 else 17
    rows = prime - 1
    cell = strip // rows
    if k >= prime or strip % rows:
        sys.exit(f"parity-check: raid6-dp with {k} data members and {strip}-byte strips")

    def at(col, r):
        src = row if col == prime - 1 else (data[col] if col < k else None)
        return 0 if src is None else int.from_bytes(src[r * cell:(r + 1) * cell], "little")

    out = b""
    for d in range(rows):
        acc = 0
        for col in range(prime):
            r = (d - col) % prime
            if r != prime - 1:
                acc ^= at(col, r)
        out += acc.to_bytes(cell, "little")
    return out


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    level, strip, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    paths = sys.argv[4:]
    n = len(paths)
    parity = {"raid3": 1, "raid4": 1, "raid5": 1, "raid6": 2, "raid6-dp": 2}.get(level)
    dedicated = level in ("raid3", "raid4", "raid6-dp")
    if parity is None or n < parity + 2:
        sys.exit(f"parity-check: unsupported level {level} with {n} members")
    k = n - parity
    # Q coefficient of data strip i is g^i, g = {02}.
    coef, g = [], 1
    for _ in range(k):
        coef.append(mul_table(g))
        g = gf_mul(g, 2)
    zero = bytes(strip)
    files = [open(p, "rb") for p in paths]
    bad, written = [], 0
    for s in range(rows):
        strips = []
        for f in files:
            f.seek(RESERVED + s * strip)
            b = f.read(strip)
            if len(b) != strip:
                sys.exit(f"parity-check: {f.name} ends before row {s}")
            strips.append(b)
        if all(b == zero for b in strips):
            continue
        written += 1
        if dedicated:
            p = n - parity
            data = strips[:k]
        else:
            p = n - 1 - s % n
            data = [strips[(p + parity + i) % n] for i in range(k)]
        if strips[p] != xor(data, strip):
            bad.append(f"row {s}: P (slot {p}) != XOR of the data strips")
        if level == "raid6-dp":
            q = n - 1
            if strips[q] != diagonal_parity(data, strips[p], strip):
                bad.append(f"row {s}: diagonal parity (slot {q}) != its diagonals")
        elif parity == 2:
            q = (p + 1) % n
            if strips[q] != xor([d.translate(t) for d, t in zip(data, coef)], strip):
                bad.append(f"row {s}: Q (slot {q}) != sum g^i D_i")
    what = {"raid6": "P and Q", "raid6-dp": "row and diagonal parity"}.get(level, "P")
    print(f"parity-check: {level} over {n} members, {rows} rows ({written} written): "
          f"{len(bad)} inconsistent ({what} checked)")
    for line in bad[:10]:
        print("  " + line)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
