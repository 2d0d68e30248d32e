#!/usr/bin/env python3
"""Restore memory against the size of the repository.

One local repository is filled with cheap synthetic data (incompressible,
seeded) and measured as it grows:

  2 GiB   restore of a 50 MiB snapshot; full restore of a 2 GiB snapshot
  8 GiB   restore of the 50 MiB snapshot; full restore of an 8 GiB snapshot
  32 GiB  restore of the 50 MiB snapshot

Each restore runs under GNU time with the page cache dropped (when root):
wall seconds, CPU seconds, peak RSS. The peak RSS of the 50 MiB restore must
not grow with the repository. `--before BIN` measures another coffer binary
(an older build, say) on the same repository in the same run, side by side.

  benches/restore_memory.py [--workdir /tmp/coffer-restore-mem] [--before BIN]
                            [--sizes 2,8,32] [--out FILE]

Disk: the repository's largest size, plus 8 GiB of source and 8 GiB restored.
coffer is built with `cargo build --release`.
"""
import argparse
import json
import os
import random
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (sh, timed, du, coffer_bin)

GIB = 1 << 30
FILE = 64 << 20


def fill(dir_, nbytes, seed):
    """Writes `nbytes` of incompressible data into `dir_` as 64 MiB files."""
    os.makedirs(dir_, exist_ok=True)
    rng = random.Random(seed)
    done, i = 0, 0
    while done < nbytes:
        n = min(FILE, nbytes - done)
        with open(os.path.join(dir_, f"{seed}-{i:05}.bin"), "wb") as f:
            left = n
            while left:
                k = min(left, 8 << 20)
                f.write(rng.randbytes(k))
                left -= k
        done += n
        i += 1


def small_tree(dir_):
    """About 50 MiB in 400 files of 4 KiB to 250 KiB, in 20 directories."""
    rng = random.Random(7)
    total = 0
    i = 0
    while total < 50 << 20:
        sub = os.path.join(dir_, f"d{i % 20:02}")
        os.makedirs(sub, exist_ok=True)
        n = rng.randint(4 << 10, 250 << 10)
        with open(os.path.join(sub, f"f{i:04}"), "wb") as f:
            f.write(rng.randbytes(n))
        total += n
        i += 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/coffer-restore-mem")
    ap.add_argument("--before", help="another coffer binary, measured beside this build")
    ap.add_argument("--sizes", default="2,8,32", help="repository sizes in GiB, ascending")
    ap.add_argument("--out")
    a = ap.parse_args()
    compare.sh(["cargo", "build", "--release", "--quiet", "-p", "coffer"], cwd=compare.ROOT)
    bins = [("this build", compare.coffer_bin())]
    if a.before:
        bins.insert(0, ("before", os.path.abspath(a.before)))
    sizes = [int(s) for s in a.sizes.split(",")]
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    repo = os.path.join(a.workdir, "repo")
    env = {"COFFER_REPOSITORY": repo, "COFFER_PASSWORD": compare.PASSWORD}
    coffer = compare.coffer_bin()
    compare.sh([coffer, "init"], env=env)
    small = os.path.join(a.workdir, "small")
    small_tree(small)
    compare.sh([coffer, "backup", "--tag", "small", small], env=env)
    small_id = snapshot_id(coffer, env, "small")
    rows = []

    def restore(what, snapshot):
        for name, bin_ in bins:
            out = os.path.join(a.workdir, "out")
            shutil.rmtree(out, ignore_errors=True)
            wall, cpu, rss = compare.timed([bin_, "restore", snapshot, "--target", out], env=env)
            rows.append((f"{compare.du(repo) / GIB:.1f}", what, name, wall, cpu, rss))
            print(rows[-1], flush=True)
            shutil.rmtree(out, ignore_errors=True)

    src = os.path.join(a.workdir, "src")
    have = 0  # GiB in the repository besides the small snapshot
    seed = 100
    for size in sizes:
        # The snapshot restored whole at 2 and 8 GiB holds the whole
        # repository: the files already there (deduplicated) and the new ones.
        whole = size <= 8
        if not whole:
            shutil.rmtree(src, ignore_errors=True)
        while have < size:
            step = size - have if whole else min(4, size - have)
            fill(src, step * GIB, seed)
            seed += 1
            compare.sh([coffer, "backup", "--tag", "fill", src], env=env)
            have += step
            if not whole:
                shutil.rmtree(src, ignore_errors=True)
        restore("50 MiB snapshot", small_id)
        if whole:
            restore(f"{size} GiB snapshot, whole", "latest")
    shutil.rmtree(src, ignore_errors=True)

    lines = [
        "| repository GiB | restore | coffer | wall s | CPU s | peak RSS MiB |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for repo_gib, what, name, wall, cpu, rss in rows:
        lines.append(f"| {repo_gib} | {what} | {name} | {wall:.2f} | {cpu:.1f} | {rss:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


def snapshot_id(coffer, env, tag):
    """The id of the newest snapshot tagged `tag`."""
    r = compare.sh([coffer, "snapshots", "--tag", tag, "--json"], env=env, capture=True)
    return json.loads(r.stdout)[-1]["id"]


if __name__ == "__main__":
    main()
