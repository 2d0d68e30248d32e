#!/usr/bin/env python3
"""`coffer mount` against `restic mount`, on the same data, same run.

Two snapshots in each tool's repository: one 2 GiB file (incompressible),
and 100,000 small files in 100 directories. For each tool and round, with
the page cache dropped before each step (when run as root):

  read   the 2 GiB file read sequentially through the mount (1 MiB reads)
  find   `find` over the 100,000-file snapshot through the mount

Each step records wall seconds, and the mount process's CPU seconds (user +
system, from /proc) during the step; the mount's peak RSS (VmHWM) is taken
when it ends. Printed as a Markdown table: wall min / median / max, CPU
median, peak RSS max, and coffer's worst-case ratio (the peer's fastest
round against coffer's slowest).

  benches/mount.py [--rounds 3] [--size 2G] [--files 100000] [--workdir /tmp/coffer-mount-bench]

Needs root, /dev/fuse, restic (apt-get install restic) and fusermount3
(apt-get install fuse3); coffer is built with `cargo build --release`.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASSWORD = "bench-password"
COFFER = os.path.join(ROOT, "target", "release", "coffer")


def sh(cmd, env=None):
    e = dict(os.environ)
    e.update(env or {})
    r = subprocess.run(cmd, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit(f"command failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")


def drop_caches():
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def mounted(at):
    with open("/proc/self/mounts") as f:
        return any(line.split(" ")[1] == at for line in f)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def make_data(work, size, files):
    big = os.path.join(work, "data", "big")
    small = os.path.join(work, "data", "small")
    if not os.path.exists(os.path.join(big, "big.bin")):
        os.makedirs(big, exist_ok=True)
        with open(os.path.join(big, "big.bin"), "wb") as f:
            left = size
            while left > 0:
                n = min(left, 16 << 20)
                f.write(os.urandom(n))
                left -= n
    if not os.path.exists(small):
        os.makedirs(small)
        per = max(1, files // 100)
        for d in range(100):
            p = os.path.join(small, f"d{d:03}")
            os.makedirs(p)
            for i in range(per):
                with open(os.path.join(p, f"f{i:05}.txt"), "wb") as f:
                    f.write(os.urandom(2000 + (i * 7919) % 8000))
    return big, small


def tools(work):
    crepo = os.path.join(work, "coffer-repo")
    rrepo = os.path.join(work, "restic-repo")
    cenv = {"COFFER_REPOSITORY": crepo, "COFFER_PASSWORD": PASSWORD}
    renv = {"RESTIC_REPOSITORY": rrepo, "RESTIC_PASSWORD": PASSWORD}
    return {
        "coffer": {
            "env": cenv,
            "repo": crepo,
            "init": [COFFER, "init"],
            "backup": lambda p: [COFFER, "backup", p],
            "mount": lambda m: [COFFER, "mount", m],
            # A one-directory snapshot's root is that directory.
            "path": lambda m, p: os.path.join(m, "hosts", os.uname().nodename, "latest"),
        },
        "restic": {
            "env": renv,
            "repo": rrepo,
            "init": ["restic", "init"],
            "backup": lambda p: ["restic", "backup", p],
            "mount": lambda m: ["restic", "mount", m],
            "path": lambda m, p: os.path.join(m, "hosts", os.uname().nodename, "latest") + p,
        },
    }


def run_step(t, mnt, step, big, small):
    """Mounts, runs `step`, unmounts; returns (wall, cpu of the mount, peak RSS)."""
    if mounted(mnt):
        sys.exit(f"{mnt} is mounted already: unmount it (fusermount3 -u -z {mnt})")
    drop_caches()
    proc = subprocess.Popen(t["mount"](mnt), env={**os.environ, **t["env"]},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not mounted(mnt):
        if proc.poll() is not None or time.time() > deadline:
            sys.exit(f"the mount did not appear: {t['mount'](mnt)}")
        time.sleep(0.05)
    cpu0 = cpu_seconds(proc.pid)
    t0 = time.monotonic()
    if step == "read":
        path = os.path.join(t["path"](mnt, big), "big.bin")
        with open(path, "rb", buffering=0) as f:
            n = 0
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                n += len(b)
        if n != os.path.getsize(os.path.join(big, "big.bin")):
            sys.exit(f"read {n} bytes through the mount")
    else:
        # `latest` of the host is the small-files snapshot (backed up last).
        # The trailing slash: find starts in the `latest` link's directory.
        r = subprocess.run(["find", t["path"](mnt, small) + "/"], stdout=subprocess.PIPE, check=True)
        count = r.stdout.count(b"\n")
        if count < 100:
            sys.exit(f"find saw {count} entries")
    wall = time.monotonic() - t0
    cpu = cpu_seconds(proc.pid) - cpu0
    rss = peak_rss_mib(proc.pid)
    proc.send_signal(2)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    if mounted(mnt):
        subprocess.run(["fusermount3", "-u", "-z", mnt])
    return wall, cpu, rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", default="2G")
    ap.add_argument("--files", type=int, default=100000)
    ap.add_argument("--workdir", default="/tmp/coffer-mount-bench")
    a = ap.parse_args()
    size = int(a.size[:-1]) << {"K": 10, "M": 20, "G": 30}[a.size[-1]]
    os.makedirs(a.workdir, exist_ok=True)
    big, small = make_data(a.workdir, size, a.files)
    ts = tools(a.workdir)
    for name in ts:
        mnt = os.path.join(a.workdir, f"mnt-{name}")
        if os.path.exists(mnt) and mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", mnt])
    results = {}
    for name, t in ts.items():
        if os.path.exists(t["repo"]):
            shutil.rmtree(t["repo"])
        sh(t["init"], t["env"])
        # The big file first, the small files last: `latest` of the host is
        # the small files; the big file is read through its own snapshot.
        sh(t["backup"](big), t["env"])
    for name, t in ts.items():
        mnt = os.path.join(a.workdir, f"mnt-{name}")
        os.makedirs(mnt, exist_ok=True)
        for r in range(a.rounds):
            results.setdefault((name, "read"), []).append(run_step(t, mnt, "read", big, small))
            print(name, "read", results[(name, "read")][-1], flush=True)
    for name, t in ts.items():
        sh(t["backup"](small), t["env"])
    for r in range(a.rounds):
        for name, t in ts.items():
            mnt = os.path.join(a.workdir, f"mnt-{name}")
            results.setdefault((name, "find"), []).append(run_step(t, mnt, "find", big, small))
            print(name, "find", results[(name, "find")][-1], flush=True)
    print(f"| step | tool | wall s min / median / max | mount CPU s (median) | mount peak RSS MiB | coffer worst-case ratio |")
    print("|---|---|---|---|---|---|")
    for step in ["read", "find"]:
        c = results[("coffer", step)]
        for name in ts:
            rs = results[(name, step)]
            walls = sorted(x[0] for x in rs)
            ratio = ""
            if name != "coffer":
                ratio = f"{min(walls) / max(x[0] for x in c):.2f}x"
            print(f"| {step} | {name} | {walls[0]:.2f} / {statistics.median(walls):.2f} / {walls[-1]:.2f} "
                  f"| {statistics.median(x[1] for x in rs):.2f} | {max(x[2] for x in rs):.0f} | {ratio} |")


if __name__ == "__main__":
    main()
