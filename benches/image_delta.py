#!/usr/bin/env python3
"""How much an incremental backup of a 1 GiB image stores after 1 % of it changed.

For each pattern of change (scattered 4 KiB blocks, scattered 64 KiB extents,
a few contiguous runs), a fresh repository gets a first backup of the image,
1 % of the image's bytes are rewritten with new random data, and a second
backup runs. Prints the bytes the second backup added (plaintext and stored)
relative to the bytes changed.

  benches/image_delta.py [--size 1G] [--workdir /tmp/coffer-delta]
"""
import argparse, json, os, random, shutil, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "coffer")
ENV = dict(os.environ, COFFER_PASSWORD="delta")


def run(*args):
    r = subprocess.run([BIN, *args], env=ENV, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"coffer {' '.join(args)} failed: {r.stderr}")
    return r.stdout


def make_image(path, size, rng):
    words = [b"INSERT INTO t VALUES (", b"42, ", b"'row', ", b"NULL);\n"]
    with open(path, "wb") as f:
        for _ in range(size >> 20):
            kind = rng.random()
            if kind < 0.45:
                f.write(rng.randbytes(1 << 20))
            elif kind < 0.9:
                f.write(b"".join(rng.choice(words) for _ in range(80000))[: 1 << 20])
            else:
                f.write(bytes(1 << 20))


def mutate(path, size, pattern, rng):
    budget = size // 100
    with open(path, "r+b") as f:
        done = 0
        while done < budget:
            if pattern == "4KiB blocks":
                n = 4096
            elif pattern == "64KiB extents":
                n = 65536
            else:
                n = budget // 8
            off = rng.randrange(0, size // n) * n
            f.seek(off)
            f.write(rng.randbytes(n))
            done += n
    return done


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", default="1G")
    p.add_argument("--workdir", default="/tmp/coffer-delta")
    a = p.parse_args()
    size = int(a.size.rstrip("Gg")) << 30 if a.size[-1] in "Gg" else int(a.size.rstrip("Mm")) << 20
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    os.makedirs(a.workdir, exist_ok=True)
    img = os.path.join(a.workdir, "volume.img")
    print(f"| change pattern | bytes changed | plaintext added | stored added | stored / changed |")
    print(f"|---|---:|---:|---:|---:|")
    for pattern in ("4KiB blocks", "64KiB extents", "8 contiguous runs"):
        rng = random.Random(11)
        make_image(img, size, rng)
        repo = os.path.join(a.workdir, "repo")
        shutil.rmtree(repo, ignore_errors=True)
        run("init", "-r", repo, "-q", "--kdf-memory", "1024", "--kdf-iterations", "1")
        run("backup", "-r", repo, "-q", img)
        changed = mutate(img, size, pattern, rng)
        s = json.loads(run("backup", "-r", repo, "--json", img).strip().splitlines()[-1])
        print(f"| {pattern} | {changed / 2**20:.1f} MiB | {s['data_added'] / 2**20:.1f} MiB | "
              f"{s['data_added_packed'] / 2**20:.1f} MiB | {s['data_added_packed'] / changed:.2f}x |")
    shutil.rmtree(a.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
