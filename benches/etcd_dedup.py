#!/usr/bin/env python3
"""Deduplication of etcd snapshots: how much the repository grows per snapshot.

Starts etcd (Debian's etcd-server) on 127.0.0.1 in a temporary directory,
fills it with --keys keys of about --value-size bytes of random data, then
takes --snapshots snapshots with `coffer backup --etcd`, changing --change
(1 %) of the keys before each one after the first. Like kube-apiserver, it
compacts etcd's history before each snapshot (no defragmentation). For each
snapshot it prints the snapshot's size and the repository's growth, and, for
comparison, what `restic backup --stdin` of the same file adds when restic is
installed (--no-restic skips it).

  benches/etcd_dedup.py [--keys 60000] [--value-size 1024] [--snapshots 10]
                        [--change 0.01] [--chunk-size 64KiB] [--out FILE]
"""
import argparse
import base64
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASSWORD = "bench-password"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def b64(b):
    return base64.b64encode(b).decode()


def put_many(base, items):
    """Puts (key, value) pairs through the JSON gateway, 128 per transaction."""
    for i in range(0, len(items), 128):
        ops = [{"request_put": {"key": b64(k), "value": b64(v)}} for k, v in items[i:i + 128]]
        post(base + "/v3/kv/txn", {"success": ops})


def du(path):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(d, f))
    return total


def mib(n):
    return f"{n / 2**20:.2f} MiB"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=60000)
    ap.add_argument("--value-size", type=int, default=1024)
    ap.add_argument("--snapshots", type=int, default=10)
    ap.add_argument("--change", type=float, default=0.01)
    ap.add_argument("--no-restic", action="store_true")
    ap.add_argument("--chunk-size", help="coffer init --chunk-size (default: coffer's)")
    ap.add_argument("--out")
    a = ap.parse_args()

    for cmd in ("etcd",):
        if not shutil.which(cmd):
            sys.exit(f"{cmd} is not installed: scripts/apt-install.sh 'etcd etcdctl' etcd-server etcd-client")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "coffer"], cwd=ROOT, check=True)
    coffer = os.path.join(ROOT, "target", "release", "coffer")
    restic = None if a.no_restic else shutil.which("restic")

    work = tempfile.mkdtemp(prefix="coffer-etcd-bench.")
    cport, pport = free_port(), free_port()
    base = f"http://127.0.0.1:{cport}"
    etcd = subprocess.Popen(
        ["etcd", "--name", "bench", "--data-dir", os.path.join(work, "etcd"),
         "--listen-client-urls", base, "--advertise-client-urls", base,
         "--listen-peer-urls", f"http://127.0.0.1:{pport}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
         "--initial-cluster", f"bench=http://127.0.0.1:{pport}",
         "--quota-backend-bytes", str(8 << 30)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                post(base + "/v3/maintenance/status", {})
                break
            except OSError:
                time.sleep(0.1)
        rng = random.Random(1)
        keys = [f"/registry/configmaps/ns-{i % 200:03d}/cm-{i:06d}".encode() for i in range(a.keys)]

        def value():
            n = max(16, int(rng.gauss(a.value_size, a.value_size / 4)))
            return rng.randbytes(n)

        put_many(base, [(k, value()) for k in keys])
        env = dict(os.environ, COFFER_REPOSITORY=os.path.join(work, "repo"),
                   COFFER_PASSWORD=PASSWORD, RESTIC_REPOSITORY=os.path.join(work, "restic"),
                   RESTIC_PASSWORD=PASSWORD)
        subprocess.run([coffer, "init"] + (["--chunk-size", a.chunk_size] if a.chunk_size else []), env=env, check=True, stdout=subprocess.DEVNULL)
        if restic:
            subprocess.run([restic, "init"], env=env, check=True, stdout=subprocess.DEVNULL)
        rows = []
        for n in range(1, a.snapshots + 1):
            if n > 1:
                changed = rng.sample(keys, max(1, int(len(keys) * a.change)))
                put_many(base, [(k, value()) for k in changed])
            rev = int(post(base + "/v3/maintenance/status", {})["header"]["revision"])
            post(base + "/v3/kv/compaction", {"revision": str(rev), "physical": True})
            before = du(env["COFFER_REPOSITORY"])
            r = subprocess.run([coffer, "backup", "--etcd", base, "--json"], env=env, check=True,
                               capture_output=True, text=True)
            summary = json.loads(r.stdout.strip().splitlines()[-1])
            grew = du(env["COFFER_REPOSITORY"]) - before
            rgrew = None
            if restic:
                snap = os.path.join(work, "snap.db")
                with open(snap, "wb") as f:
                    subprocess.run([coffer, "dump", "latest", "etcd-snapshot.db"], env=env, check=True, stdout=f)
                rbefore = du(env["RESTIC_REPOSITORY"])
                with open(snap, "rb") as f:
                    subprocess.run([restic, "backup", "--stdin", "--stdin-filename", "etcd-snapshot.db"],
                                   env=env, check=True, stdin=f, stdout=subprocess.DEVNULL)
                rgrew = du(env["RESTIC_REPOSITORY"]) - rbefore
            rows.append((n, summary["etcd"]["size"], grew, rgrew))
            print(f"snapshot {n}: {mib(summary['etcd']['size'])}, coffer +{mib(grew)}"
                  + (f", restic +{mib(rgrew)}" if rgrew is not None else ""), file=sys.stderr)
    finally:
        etcd.terminate()
        etcd.wait()
    total_coffer = du(os.path.join(work, "repo"))
    total_restic = du(os.path.join(work, "restic")) if restic else None
    shutil.rmtree(work, ignore_errors=True)

    lines = [
        f"etcd 3.4, {a.keys} keys of ~{a.value_size} B random values, {a.change:.0%} of the keys "
        f"rewritten before each snapshot after the first, history compacted before each "
        f"(as kube-apiserver does), no defragmentation; coffer's average chunk "
        f"{a.chunk_size or 'default'}. {time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} CPUs.",
        "",
        "| snapshot | etcd snapshot | coffer repository growth | growth / snapshot |"
        + (" restic growth |" if restic else ""),
        "|---|---|---|---|" + ("---|" if restic else ""),
    ]
    for n, size, grew, rgrew in rows:
        lines.append(f"| {n} | {mib(size)} | {mib(grew)} | {grew / size:.1%} |"
                     + (f" {mib(rgrew)} |" if rgrew is not None else ""))
    later = rows[1:]
    if later:
        avg = sum(g for _, _, g, _ in later) / len(later)
        avg_size = sum(s for _, s, _, _ in later) / len(later)
        lines.append("")
        lines.append(f"Snapshots 2 to {len(rows)}: the repository grew {mib(avg)} per snapshot on "
                     f"average, {avg / avg_size:.1%} of a snapshot's size. Repository after "
                     f"{len(rows)} snapshots: {mib(total_coffer)} for {mib(sum(s for _, s, _, _ in rows))} "
                     f"of snapshots" + (f" (restic: {mib(total_restic)})." if restic else "."))
    text = "\n".join(lines)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
