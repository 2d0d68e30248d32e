#!/usr/bin/env python3
"""Memory of the node agent: idle, and during 1, 2 and 4 concurrent backups.

A benchmark, not a test. It builds coffer-agent and the fake API server in
release mode, generates one volume-like corpus per concurrent backup with
../shared/bench/gen_corpus.py, bind-mounts each as the emptyDir of a pod on a
fake node (needs root), starts `coffer-agent node` against the fake API
server, creates N VolumeBackups at once and samples the agent's RSS every
50 ms until every run is final. A fresh repository (file://) per N, so every
run is a first backup. Prints a Markdown table (and appends it to --out).

  benches/agent_memory.py --size 2G --concurrency 1 2 4 --out benches/RESULTS.md
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEN = os.path.join(ROOT, "..", "shared", "bench", "gen_corpus.py")
NS = "bench"
NODE = "bench-node"


def call(url, method="GET", body=None, ctype="application/json"):
    data = None
    if body is not None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": ctype})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"{}")


def rss_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def mib(kib):
    return f"{kib / 1024:.0f} MiB"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="2G", help="size of each volume")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--threads-per-run", type=int, default=2)
    ap.add_argument("--work", default=None, help="where corpora and repositories go (default: a temp dir)")
    ap.add_argument("--out", default=None, help="append the table to this file")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("agent_memory.py needs root (bind mounts stand in for the kubelet's mounts)")
    subprocess.run(
        ["cargo", "build", "--release", "-q", "-p", "coffer-node-agent", "-p", "coffer-fake-apiserver"],
        cwd=ROOT, check=True,
    )
    agent_bin = os.path.join(ROOT, "target", "release", "coffer-agent")
    fake_bin = os.path.join(ROOT, "target", "release", "coffer-fake-apiserver")
    work = a.work or tempfile.mkdtemp(prefix="coffer-agent-mem-")
    os.makedirs(work, exist_ok=True)
    corpora = []
    for i in range(max(a.concurrency)):
        d = os.path.join(work, f"corpus-{a.size}-{i + 1}")
        if not os.path.exists(os.path.join(d, ".done")):
            print(f"generating {d}", file=sys.stderr)
            shutil.rmtree(d, ignore_errors=True)
            subprocess.run([sys.executable, GEN, "gen", "--out", d, "--size", a.size, "--seed", str(i + 1)],
                           check=True, stdout=subprocess.DEVNULL)
            open(os.path.join(d, ".done"), "w").close()
        corpora.append(d)
    rows = []
    for n in a.concurrency:
        rows.append(run(n, a, work, corpora, agent_bin, fake_bin))
    cpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    table = [
        f"### Node agent memory ({time.strftime('%Y-%m-%d')}, {cpu} cores, volumes of {a.size} from gen_corpus.py, "
        f"--threads-per-run {a.threads_per_run}, first backups into a local repository)",
        "",
        "| concurrent backups | agent idle RSS | agent peak RSS | wall | data read |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(f"| {r['n']} | {mib(r['idle'])} | {mib(r['peak'])} | {r['wall']:.1f} s | {r['bytes'] / 2**30:.2f} GiB |")
    text = "\n".join(table) + "\n"
    print(text)
    if a.out:
        with open(a.out, "a") as f:
            f.write("\n" + text)


def run(n, a, work, corpora, agent_bin, fake_bin):
    d = tempfile.mkdtemp(prefix=f"n{n}-", dir=work)
    url_file = os.path.join(d, "url")
    fake = subprocess.Popen([fake_bin, "--listen", "127.0.0.1:0", "--url-file", url_file],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mounts = []
    agent = None
    try:
        for _ in range(100):
            if os.path.exists(url_file) and open(url_file).read().strip():
                break
            time.sleep(0.05)
        url = open(url_file).read().strip()
        # The CRDs, by server-side apply of deploy/crds.yaml's documents.
        docs = open(os.path.join(ROOT, "deploy", "crds.yaml")).read().split("\n---\n")
        for doc in docs:
            if "kind: CustomResourceDefinition" not in doc:
                continue
            name = [l.split(":", 1)[1].strip() for l in doc.splitlines() if l.startswith("  name:")][0]
            call(f"{url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}?fieldManager=bench",
                 "PATCH", doc, "application/apply-patch+yaml")
        call(f"{url}/api/v1/namespaces", "POST", {"metadata": {"name": NS}})
        call(f"{url}/api/v1/namespaces/{NS}/secrets", "POST",
             {"metadata": {"name": "pw"}, "data": {"password": "YmVuY2htYXJr"}})
        call(f"{url}/apis/coffer.dev/v1alpha1/namespaces/{NS}/backuprepositories", "POST", {
            "apiVersion": "coffer.dev/v1alpha1", "kind": "BackupRepository",
            "metadata": {"name": "default"},
            "spec": {"url": "file://" + os.path.join(d, "repo"),
                     "passwordSecretRef": {"name": "pw", "key": "password"}, "init": True}})
        kubelet = os.path.join(d, "kubelet")
        for i in range(n):
            pod = call(f"{url}/api/v1/namespaces/{NS}/pods", "POST", {
                "metadata": {"name": f"p{i}"},
                "spec": {"nodeName": NODE,
                         "containers": [{"name": "c", "image": "x",
                                         "volumeMounts": [{"name": "vol", "mountPath": "/data"}]}],
                         "volumes": [{"name": "vol", "emptyDir": {}}]},
                "status": {"phase": "Running"}})
            target = os.path.join(kubelet, "pods", pod["metadata"]["uid"], "volumes",
                                  "kubernetes.io~empty-dir", "vol")
            os.makedirs(target)
            subprocess.run(["mount", "--bind", corpora[i], target], check=True)
            mounts.append(target)
        kubeconfig = os.path.join(d, "kubeconfig")
        with open(kubeconfig, "w") as f:
            f.write(f"""apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: "{url}"}}}}]
users: [{{name: fake, user: {{token: fake}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]
current-context: fake
""")
        env = dict(os.environ, KUBECONFIG=kubeconfig, RUST_LOG="warn")
        env.pop("KUBERNETES_SERVICE_HOST", None)
        agent = subprocess.Popen(
            [agent_bin, "node", "--node-name", NODE, "--kubelet-root", kubelet,
             "--max-concurrent", str(n), "--threads-per-run", str(a.threads_per_run),
             "--metrics-addr", "127.0.0.1:0", "--allow-file-repository", d],
            env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "agent.log"), "w"))
        time.sleep(2)
        idle = rss_kib(agent.pid, "VmRSS")
        start = time.time()
        for i in range(n):
            call(f"{url}/apis/coffer.dev/v1alpha1/namespaces/{NS}/volumebackups", "POST", {
                "apiVersion": "coffer.dev/v1alpha1", "kind": "VolumeBackup",
                "metadata": {"name": f"b{i}"}, "spec": {"pod": f"p{i}", "volume": "vol"}})
        peak = 0
        while True:
            peak = max(peak, rss_kib(agent.pid, "VmRSS"))
            items = call(f"{url}/apis/coffer.dev/v1alpha1/namespaces/{NS}/volumebackups")["items"]
            phases = [(i.get("status") or {}).get("phase") for i in items]
            if all(p in ("Completed", "PartiallyFailed", "Failed", "Canceled") for p in phases):
                break
            if agent.poll() is not None:
                sys.exit(f"the agent exited: see {d}/agent.log")
            time.sleep(0.05)
        wall = time.time() - start
        peak = max(peak, rss_kib(agent.pid, "VmHWM"))
        bad = [i["status"] for i in items if i["status"]["phase"] != "Completed"]
        if bad:
            sys.exit(f"runs did not complete: {bad}")
        read = sum(i["status"]["progress"]["bytesDone"] for i in items)
        print(f"n={n}: idle {mib(idle)}, peak {mib(peak)}, {wall:.1f} s", file=sys.stderr)
        return {"n": n, "idle": idle, "peak": peak, "wall": wall, "bytes": read}
    finally:
        if agent:
            agent.kill()
            agent.wait()
        fake.kill()
        fake.wait()
        for m in mounts:
            subprocess.run(["umount", "-l", m])
        shutil.rmtree(os.path.join(d, "repo"), ignore_errors=True)


if __name__ == "__main__":
    main()
