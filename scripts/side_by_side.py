#!/usr/bin/env python3
"""bnorm beside oneDNN 3.2 and the streaming limit, cell by cell, in one session.

For every shape of shared/peers/shapes.txt, mode (train, infer) and layout, runs `stream_limit`, then
oneDNN's primitive and bnorm's kernel (the roofline example filtered to that one cell) on 64-byte
aligned buffers and on buffers 16 bytes past a line (what `Vec<f32>` from the global allocator usually
gives) back to back, `--rounds` times, and prints the README's markdown table of medians. Alternating
the programs cell by cell keeps the comparison fair on a shared machine whose memory bandwidth drifts by
tens of percent over minutes. One thread; GB/s = 2 x tensor bytes / median call for both.

Each cell reads `aligned (Vec) / oneDNN`; "limit" is stream_limit's read+write figure (the larger of its
non-temporal and ordinary-store passes), "floor" the two-pass floor of training where a channel's data
cannot stay in cache, 2 / (2 + rw/read) of it. `--isa avx2` times bnorm's AVX2 tier against oneDNN capped
at AVX2 (ONEDNN_MAX_CPU_ISA=AVX2).

`--modes train_relu,infer_relu,train_addrelu,infer_addrelu` times the fused epilogues against oneDNN's
`fuse_norm_relu` (its training also writes the ReLU workspace) and `fuse_norm_add_relu`; add+ReLU's
GB/s count 3 x tensor bytes (x and z read, y written) for both; its floor is the limit (inference) or
the limit after a read pass of x (training).

`--modes bwd,bwd_global` times the backward pass (with batch and with global statistics, both writing
dγ and dβ) against oneDNN's `prop_kind::backward`, through scripts/onednn3_bn.cpp (built by
scripts/peer_setup.sh as onednn3_bn_ext); its GB/s count 3 x tensor bytes (x and dy read, dx written)
and its floor is 3 / (2/read + 3/limit), two passes over x and dy.

`--threads T` runs bnorm through its parallel front end (`bnorm::par`, the roofline example's
`--threads T`, built with `--features rayon`) and oneDNN with OMP_NUM_THREADS=T; the limit and floor
columns are then the roofline example's T-thread limit passes (stream_limit is single-threaded).

usage: scripts/side_by_side.py [--rounds N] [--isa NAME] [--threads T] [--modes MODE,...] [SHAPE...]
needs: shared/peers/setup.sh (oneDNN, stream_limit), scripts/peer_setup.sh (for bwd) and
`cargo build --release --example roofline` (with `--features rayon` for `--threads`).
"""
import json
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.path.join(ROOT, "..", "shared", "peers")
PEERS = os.environ.get("PEERS", os.path.expanduser("~/.cache/bnorm-peers"))
ROOFLINE = os.path.join(ROOT, "target", "release", "examples", "roofline")
LAYOUTS = ["nchw", "nhwc", "nChw4c", "nChw8c", "nChw16c"]  # oneDNN has no nChw4c
ENV = dict(os.environ, OMP_NUM_THREADS="1")
THREADS = None  # --threads T
# side_by_side mode -> the roofline example's op.
OPS = {"train": "train", "infer": "infer", "bwd": "backward", "bwd_global": "backward-global",
       "train_relu": "train-relu", "infer_relu": "infer-relu",
       "train_addrelu": "train-addrelu", "infer_addrelu": "infer-addrelu"}


def reps(n, c, h, w):
    b = n * c * h * w * 4
    return 10 if b > 20_000_000 else 40 if b > 2_000_000 else 400


def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, check=True).stdout


def limit(elems, r, name=None):
    """(read+write limit, read limit) in GB/s."""
    if THREADS:
        out = run([ROOFLINE, "--threads", str(THREADS), "--filter", f"{name}/nchw/moments/avx512"])
        m = re.search(r"read ([\d.]+), r\+w NT ([\d.]+), r\+w store ([\d.]+)", out)
        return max(float(m.group(2)), float(m.group(3))), float(m.group(1))
    out = run([os.path.join(PEERS, "stream_limit"), str(elems), str(r + 5)])
    rd = float(re.search(r"read ([\d.]+)", out).group(1))
    nt = float(re.search(r"NT-store ([\d.]+)", out).group(1))
    st = float(re.search(r"scale store ([\d.]+)", out).group(1))
    return max(nt, st), rd


def onednn(fmt, mode, n, c, h, w, r, isa):
    env = dict(ENV, ONEDNN_MAX_CPU_ISA="AVX2") if isa == "avx2" else ENV
    exe = "onednn3_bn" if mode in ("train", "infer") else "onednn3_bn_ext"
    cmd = [os.path.join(PEERS, exe), fmt, mode, str(n), str(c), str(h), str(w), str(r)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out)["gbps"]


def bnorm(name, fmt, mode, isa, offset=0):
    threads = ["--threads", str(THREADS)] if THREADS else []
    out = run([ROOFLINE, "--isa", isa, "--skip-limit", "--offset", str(offset), *threads,
               "--filter", f"{name}/{fmt}/{OPS[mode]}/"])
    for line in out.splitlines():
        c = [x.strip() for x in line.split("|")]
        if len(c) > 6 and c[1:4] == [name, fmt, OPS[mode]]:
            return float(c[5])
    raise RuntimeError(f"no roofline row for {name}/{fmt}/{mode}:\n{out}")


def main():
    args = sys.argv[1:]
    rounds, isa, only, modes = 2, "avx512", [], ["train", "infer"]
    while args:
        a = args.pop(0)
        if a == "--rounds":
            rounds = int(args.pop(0))
        elif a == "--modes":
            modes = args.pop(0).split(",")
        elif a == "--isa":
            isa = args.pop(0)
        elif a == "--threads":
            global THREADS
            THREADS = int(args.pop(0))
            ENV["OMP_NUM_THREADS"] = str(THREADS)
        else:
            only.append(a)
    shapes = []
    for line in open(os.path.join(SHARED, "shapes.txt")):
        if line.startswith("#") or not line.strip():
            continue
        name, *dims = line.split()
        if not only or name in only:
            shapes.append((name, [int(d) for d in dims]))
    print(f"bnorm tier {isa}; oneDNN {'capped at AVX2' if isa == 'avx2' else 'uncapped'}; "
          f"{THREADS or 1} thread(s){' (bnorm::par)' if THREADS else ''}; cells: "
          "bnorm aligned (bnorm Vec) / oneDNN, GB/s")
    print("| shape | mode | limit | floor | " + " | ".join(LAYOUTS) + " |")
    print("|---|---|---|---|" + "---|" * len(LAYOUTS))
    for name, (n, c, h, w) in shapes:
        r = reps(n, c, h, w)
        for mode in modes:
            lim, rd, cells = [], [], []
            for fmt in LAYOUTS:
                ours, vec, theirs = [], [], []
                for _ in range(rounds):
                    rw, rr = limit(n * c * h * w, r, name)
                    lim.append(rw)
                    rd.append(rr)
                    if fmt != "nChw4c":
                        theirs.append(onednn(fmt, mode, n, c, h, w, r, isa))
                    ours.append(bnorm(name, fmt, mode, isa))
                    vec.append(bnorm(name, fmt, mode, isa, offset=4))
                o, v = statistics.median(ours), statistics.median(vec)
                if theirs:
                    t = statistics.median(theirs)
                    cells.append(f"**{o:.1f}** ({v:.1f}) / {t:.1f}" + (" ⚠" if min(o, v) < t else ""))
                else:
                    cells.append(f"**{o:.1f}** ({v:.1f}) / –")
            dims = f"{n}×{c}×{h}×{w}"
            lm, rm = statistics.median(lim), statistics.median(rd)
            if mode.startswith("bwd"):
                floor = 3 / (2 / rm + 3 / lm)
            elif mode == "train_addrelu":
                floor = 3 / (1 / rm + 3 / lm)  # x read twice, z read and y written once
            elif mode == "infer_addrelu":
                floor = lm
            else:
                floor = 2 * lm / (2 + lm / rm)
            print(f"| {name} {dims} | {mode} | {lm:.1f} | {floor:.1f} | " + " | ".join(cells) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
