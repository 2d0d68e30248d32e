#!/usr/bin/env python3
"""Whole-program comparison of coffer with restic, rustic and borg.

Same data, same machine, same run, tools alternating. For each tool and round:

  first     first backup of a fresh corpus into a new local repository
  unchanged a second backup of the same, unchanged corpus
  mutated   a backup after `gen_corpus.py mutate` (about 5 % of the bytes changed)
  restore   a full restore of the last snapshot into an empty directory

Each measurement records wall seconds, CPU seconds (user + system) and peak RSS
(from GNU time), and the repository size (after `first`) and its growth (after
`mutated`). The page cache is dropped before each timed step when the script
may write /proc/sys/vm/drop_caches (root), so the numbers are cold-cache.
The rounds are printed as one Markdown table: wall seconds as min / median /
max, CPU seconds as the median, peak RSS as the max, and coffer's speed-up
over each peer twice: the one that holds in the worst case (the peer's
fastest round against coffer's slowest), which is the one to claim, and the
median one.

  benches/compare.py [--size 2G] [--rounds 3] [--tools coffer,restic,rustic,borg]
                     [--workdir /tmp/coffer-bench] [--out benches/RESULTS.md]
  benches/compare.py --small-files 200000  # a corpus of that many files of 1 to 64 KiB
  benches/compare.py --single-file 4G      # one large file: coffer --threads 1 vs 2
  benches/compare.py --s3 --size 1G        # coffer and restic on a local S3 server (moto,
                                           # started by scripts/s3-server.sh); no repository sizes

Missing peers are installed: restic and borgbackup with apt-get, rustic with
`cargo install rustic-rs`. coffer is built with `cargo build --release`.
Settings: every tool encrypts and compresses with zstd level 3 or its
equivalent default (restic and rustic `auto`, borg `zstd,3`, coffer `auto`).
"""
import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEN = os.path.join(ROOT, "..", "shared", "bench", "gen_corpus.py")
PASSWORD = "bench-password"


def sh(cmd, env=None, cwd=None, check=True, capture=False):
    e = dict(os.environ)
    e.update(env or {})
    r = subprocess.run(cmd, env=e, cwd=cwd, check=False, text=True,
                       stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
    if check and r.returncode not in (0, 3):
        sys.exit(f"command failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return r


def drop_caches():
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def timed(cmd, env=None, cwd=None):
    """Runs cmd under GNU time: (wall s, cpu s, peak RSS MiB)."""
    drop_caches()
    fmt = "%e %U %S %M"
    out = os.path.join("/tmp", f"coffer-bench-time-{os.getpid()}")
    r = sh(["/usr/bin/time", "-o", out, "-f", fmt] + cmd, env=env, cwd=cwd, check=False)
    if r.returncode not in (0, 3):
        sys.exit(f"benchmark step failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-3000:]}")
    with open(out) as f:
        wall, user, sys_, rss = f.read().split()[-4:]
    os.unlink(out)
    return float(wall), float(user) + float(sys_), int(rss) / 1024.0


def du(path):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(d, f)).st_size
            except OSError:
                pass
    return total


def ensure_tools(tools):
    apt = [p for t, p in (("restic", "restic"), ("borg", "borgbackup")) if t in tools and not shutil.which(t)]
    if apt:
        sh(["apt-get", "install", "-y", "-q"] + apt, env={"DEBIAN_FRONTEND": "noninteractive"})
    if "rustic" in tools and not shutil.which("rustic"):
        sh(["cargo", "install", "rustic-rs", "--locked"])
    sh(["cargo", "build", "--release", "--quiet"], cwd=ROOT)


def version(tool):
    cmd = {"coffer": [coffer_bin(), "--version"], "restic": ["restic", "version"],
           "rustic": ["rustic", "--version"], "borg": ["borg", "--version"]}[tool]
    return sh(cmd, capture=True).stdout.strip().splitlines()[0]


def coffer_bin():
    return os.path.join(ROOT, "target", "release", "coffer")


S3 = {}  # endpoint, once --s3 started the server


def s3_env():
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": S3["endpoint"], "AWS_ALLOW_HTTP": "true"}


class Tool:
    def __init__(self, name, repo):
        self.name, self.repo = name, repo
        if S3:
            # A fresh prefix per repository; the caches live beside it and start empty.
            S3["n"] = S3.get("n", 0) + 1
            prefix = f"{name}-{os.getpid()}-{S3['n']}"
            self.repo = {"coffer": f"s3://bench/{prefix}",
                         "restic": f"s3:{S3['endpoint']}/bench/{prefix}"}[name]
            self.cache = os.path.join(S3["work"], f"cache-{name}")
            shutil.rmtree(self.cache, ignore_errors=True)
        self.env = {"RESTIC_PASSWORD": PASSWORD, "RUSTIC_PASSWORD": PASSWORD,
                    "BORG_PASSPHRASE": PASSWORD, "COFFER_PASSWORD": PASSWORD,
                    "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
                    "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}
        if S3:
            self.env.update(s3_env())
            self.env.update({"COFFER_CACHE_DIR": self.cache, "RESTIC_CACHE_DIR": self.cache})
        self.n = 0

    def init(self):
        if not S3:
            shutil.rmtree(self.repo, ignore_errors=True)
        c = {"coffer": [coffer_bin(), "init", "-r", self.repo, "-q"],
             "restic": ["restic", "init", "-r", self.repo],
             "rustic": ["rustic", "init", "-r", self.repo],
             "borg": ["borg", "init", "-e", "repokey-blake2", self.repo]}[self.name]
        sh(c, env=self.env)

    def backup(self, src):
        self.n += 1
        c = {"coffer": [coffer_bin(), "backup", "-r", self.repo, "-q", src],
             "restic": ["restic", "backup", "-r", self.repo, "-q", src],
             "rustic": ["rustic", "backup", "-r", self.repo, src],
             "borg": ["borg", "create", "--compression", "zstd,3", f"{self.repo}::s{self.n}", src]}[self.name]
        return timed(c, env=self.env)

    def restore(self, target):
        shutil.rmtree(target, ignore_errors=True)
        os.makedirs(target)
        c = {"coffer": [coffer_bin(), "restore", "-r", self.repo, "-q", "latest", "--target", target],
             "restic": ["restic", "restore", "-r", self.repo, "-q", "latest", "--target", target],
             "rustic": ["rustic", "restore", "-r", self.repo, "latest", target],
             "borg": ["borg", "extract", f"{self.repo}::s{self.n}"]}[self.name]
        return timed(c, env=self.env, cwd=target if self.name == "borg" else None)


def gen(corpus, size, seed):
    shutil.rmtree(corpus, ignore_errors=True)
    sh([sys.executable, GEN, "gen", "--out", corpus, "--size", size, "--seed", str(seed)])


def small_file(rng, i):
    """File `i` of the small-files corpus: 1 to 64 KiB, two in three
    text-like (log and config lines), the rest random."""
    n = rng.randint(1024, 64 * 1024)
    if i % 3 == 2:
        return rng.randbytes(n)
    text = b"".join(rng.choices(LINES, k=n // 40 + 1))
    return text[:n]


_words = ("volume", "pod", "backup", "ready", "error", "retry", "db-0", "shop", "200", "GET")
_lines = random.Random(5)
# Log and config lines that the text-like files are drawn from.
LINES = [(" ".join(_lines.choice(_words) for _ in range(6)) + f" {_lines.randint(0, 1 << 30)}\n").encode()
         for _ in range(4096)]


def gen_small(corpus, files, seed):
    """`files` files of 1 to 64 KiB, 1,000 to a directory (deterministic)."""
    shutil.rmtree(corpus, ignore_errors=True)
    rng = random.Random(seed)
    for i in range(files):
        d = os.path.join(corpus, f"d{i // 1000:04}")
        if i % 1000 == 0:
            os.makedirs(d)
        with open(os.path.join(d, f"f{i:07}"), "wb") as f:
            f.write(small_file(rng, i))


def mutate_small(corpus, files, seed):
    """Rewrites 4 % of the files and adds 1 % more: the bytes written."""
    rng = random.Random(seed + 1000)
    changed = 0
    for i in rng.sample(range(files), files // 25) + list(range(files, files + files // 100)):
        d = os.path.join(corpus, f"d{i // 1000:04}")
        os.makedirs(d, exist_ok=True)
        data = small_file(rng, i)
        with open(os.path.join(d, f"f{i:07}"), "wb") as f:
            f.write(data)
        changed += len(data)
    return changed


def apparent_size(path):
    return du(path)


def run(args):
    tools = args.tools.split(",")
    work = args.workdir
    os.makedirs(work, exist_ok=True)
    if args.s3:
        tools = [t for t in tools if t in ("coffer", "restic")]
        state = os.path.join(work, "s3-server")
        r = sh([os.path.join(ROOT, "scripts", "s3-server.sh"), "start", state], capture=True)
        S3.update(endpoint=r.stdout.strip().splitlines()[-1], work=work, state=state)
    ensure_tools(tools)
    corpus = os.path.join(work, "corpus")
    results = {t: {k: [] for k in ("first", "unchanged", "mutated", "restore", "repo", "growth")} for t in tools}
    changed_bytes = []
    cold = drop_caches()
    for rnd in range(args.rounds):
        order = tools[rnd % len(tools):] + tools[:rnd % len(tools)]
        if args.small_files:
            gen_small(corpus, args.small_files, seed=1)
        else:
            gen(corpus, args.size, seed=1)
        data_mib = apparent_size(corpus) / 2**20
        t = {name: Tool(name, os.path.join(work, f"repo-{name}")) for name in order}
        for name in order:
            t[name].init()
            results[name]["first"].append(t[name].backup(corpus))
            results[name]["repo"].append(du(t[name].repo))
            results[name]["unchanged"].append(t[name].backup(corpus))
        before = {name: du(t[name].repo) for name in order}
        if args.small_files:
            changed = mutate_small(corpus, args.small_files, seed=1)
        else:
            m = sh([sys.executable, GEN, "mutate", "--out", corpus, "--seed", "1", "--round", "1"], capture=True)
            try:
                changed = json.loads(m.stdout).get("changed_or_added_bytes")
            except (ValueError, AttributeError):
                changed = None
        changed_bytes.append(changed)
        for name in order:
            results[name]["mutated"].append(t[name].backup(corpus))
            results[name]["growth"].append(du(t[name].repo) - before[name])
        for name in order:
            target = os.path.join(work, "restore")
            results[name]["restore"].append(t[name].restore(target))
            shutil.rmtree(target, ignore_errors=True)
        for name in order:
            if not S3:
                shutil.rmtree(t[name].repo, ignore_errors=True)
        print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)
    if S3:
        sh([os.path.join(ROOT, "scripts", "s3-server.sh"), "stop", S3["state"]])
    report(args, tools, results, data_mib, changed_bytes, cold)


def med(xs, i=None):
    vals = [x[i] if i is not None else x for x in xs]
    return statistics.median(vals)


def report(args, tools, r, data_mib, changed_bytes, cold):
    lines = []
    host = os.uname()
    cpus = os.cpu_count()
    where = f"on a local S3 server (moto 5.2.5 at {S3['endpoint']})" if S3 else "local repositories"
    name = f"{args.small_files:,} small files" if args.small_files else args.size
    lines.append(f"## {name} corpus, {where}, {args.rounds} round(s), {time.strftime('%Y-%m-%d')}\n")
    lines.append(f"Machine: {host.nodename}, {host.machine}, {cpus} CPUs, Linux {host.release}; "
                 f"page cache {'dropped before each step (cold)' if cold else 'NOT dropped (warm)'}. "
                 + (f"Corpus: `compare.py --small-files {args.small_files}` (1 to 64 KiB, 1,000 a directory, "
                    f"two in three text-like), {data_mib:.0f} MiB apparent; mutation: 4 % of the files rewritten, "
                    f"1 % added" if args.small_files else
                    f"Corpus: `gen_corpus.py gen --size {args.size} --seed 1`, {data_mib:.0f} MiB apparent; "
                    f"mutation: `gen_corpus.py mutate --round 1`")
                 + (f", {changed_bytes[0] / 2**20:.1f} MiB changed" if changed_bytes and changed_bytes[0] else "") + ".\n")
    lines.append("Versions: " + "; ".join(version(t) for t in tools) + ".\n")
    lines.append("| step | tool | wall s min / median / max | MiB/s (median) | CPU s (median) | peak RSS MiB (max) "
                 "| coffer speed-up, worst case (peer min / coffer max) | median |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for step in ("first", "unchanged", "mutated", "restore"):
        coffer = [x[0] for x in r["coffer"][step]] if "coffer" in r else None
        for t in tools:
            walls = [x[0] for x in r[t][step]]
            w, c = med(r[t][step], 0), med(r[t][step], 1)
            m = max(x[2] for x in r[t][step])
            worst = med_ratio = ""
            if t != "coffer" and coffer:
                worst = f"{min(walls) / max(coffer):.2f}x"
                med_ratio = f"{w / statistics.median(coffer):.2f}x"
            rate = f"{data_mib / w:.0f}" if step in ("first", "restore") else ""
            lines.append(f"| {step} | {t} | {min(walls):.2f} / {w:.2f} / {max(walls):.2f} | {rate} | {c:.1f} "
                         f"| {m:.0f} | {worst} | {med_ratio} |")
    if S3:
        text = "\n".join(lines) + "\n"
        print(text)
        if args.out:
            with open(args.out, "a") as f:
                f.write(text + "\n")
        return
    lines.append("")
    lines.append("| tool | repository MiB | vs coffer | growth after mutation MiB | growth / changed bytes |")
    lines.append("|---|---:|---:|---:|---:|")
    cr = med(r["coffer"]["repo"]) if "coffer" in r else None
    for t in tools:
        repo = med(r[t]["repo"]) / 2**20
        growth = med(r[t]["growth"]) / 2**20
        vs = "" if cr is None or t == "coffer" else f"{(cr / 2**20) / repo:.3f}"
        per = f"{growth / (changed_bytes[0] / 2**20):.2f}x" if changed_bytes and changed_bytes[0] else ""
        lines.append(f"| {t} | {repo:.0f} | {vs} | {growth:.1f} | {per} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


def single_file(args):
    ensure_tools(["coffer"])
    work = args.workdir
    os.makedirs(work, exist_ok=True)
    src = os.path.join(work, "single")
    shutil.rmtree(src, ignore_errors=True)
    os.makedirs(src)
    path = os.path.join(src, "volume.img")
    size = int(float(args.single_file.rstrip("GgMm")) * (2**30 if args.single_file[-1] in "Gg" else 2**20))
    import random
    rng = random.Random(7)
    words = [b"INSERT INTO orders VALUES (", b"42, ", b"'pending', ", b"NULL);\n", b"2026-11-23 11:00:00 "]
    with open(path, "wb") as f:
        written = 0
        while written < size:
            if rng.random() < 0.5:
                block = rng.randbytes(1 << 20)
            else:
                block = b"".join(rng.choice(words) for _ in range(60000))[: 1 << 20]
            f.write(block)
            written += len(block)
    rows = []
    for threads in (1, 2, 1, 2, 1, 2):
        tool = Tool("coffer", os.path.join(work, "repo-single"))
        tool.init()
        c = [coffer_bin(), "backup", "-r", tool.repo, "-q", "--threads", str(threads), src]
        rows.append((threads,) + timed(c, env=tool.env))
    shutil.rmtree(os.path.join(work, "repo-single"), ignore_errors=True)
    one = statistics.median([w for t, w, _, _ in rows if t == 1])
    two = statistics.median([w for t, w, _, _ in rows if t == 2])
    rss = max(m for _, _, _, m in rows)
    text = (f"## One {args.single_file} file, coffer --threads 1 vs 2 ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs)\n\n"
            f"| threads | median wall s | MiB/s |\n|---|---:|---:|\n"
            f"| 1 | {one:.2f} | {size / 2**20 / one:.0f} |\n| 2 | {two:.2f} | {size / 2**20 / two:.0f} |\n\n"
            f"Speed-up with 2 threads: {one / two:.2f}x; peak RSS {rss:.0f} MiB.\n")
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")
    shutil.rmtree(src, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="2G")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tools", default="coffer,restic,rustic,borg")
    p.add_argument("--workdir", default="/tmp/coffer-bench")
    p.add_argument("--out", default=None, help="append the table to this file")
    p.add_argument("--small-files", type=int, default=None,
                   help="a corpus of this many files of 1 to 64 KiB instead of gen_corpus.py's")
    p.add_argument("--single-file", default=None, help="measure one large file instead, e.g. 4G")
    p.add_argument("--s3", action="store_true", help="repositories on a local S3 server (coffer and restic)")
    args = p.parse_args()
    if args.single_file:
        single_file(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
