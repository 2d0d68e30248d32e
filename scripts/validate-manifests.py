"""Checks of the deployment under deploy/, run by scripts/validate-manifests.sh
in its virtualenv (kubernetes-validate, jsonschema, PyYAML).

    validate-manifests.py schemas VERSION FILE...   every object against the
        Kubernetes schemas of VERSION (strict), coffer.dev objects against
        the openAPIV3Schema of deploy/crds.yaml
    validate-manifests.py negative VERSION FILE     the validators reject broken objects
    validate-manifests.py policy RENDERED           RBAC, DaemonSet and Service rules
    validate-manifests.py component NAME BASE OVERLAY
        the component changes exactly what it should
    validate-manifests.py examples                  deploy/examples fit together
    validate-manifests.py configured RENDERED IMAGE CLUSTER
        an overlay's images: override and edited configuration reach every
        container, the agent and the controller alike
    validate-manifests.py monitoring VERSION BASE OVERLAY
        components/monitoring adds only its ServiceMonitors, PrometheusRule
        and dashboard ConfigMap, and they have the Prometheus Operator's shape
    validate-manifests.py populator BASE OVERLAY
        components/populator adds only a VolumePopulator, naming the
        RestoreSource kind of deploy/crds.yaml

Each prints one summary line on success; on failure the reasons, and exits 1.
"""

import copy
import re
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
CRDS = ROOT / "deploy" / "crds.yaml"
RBAC_SOURCE = ROOT / "deploy" / "rbac.yaml"

# What `coffer-agent node` calls, and nothing more (see deploy/rbac.yaml).
EXPECTED_RULES = {
    ("", "pods"): {"get", "list", "watch"},
    ("", "persistentvolumeclaims"): {"get"},
    ("", "persistentvolumes"): {"get"},
    ("coffer.dev", "backuprepositories"): {"get"},
    ("coffer.dev", "backuprepositories/status"): {"patch"},
    ("coffer.dev", "volumebackups"): {"get", "list", "watch", "create"},
    ("coffer.dev", "volumebackups/status"): {"patch"},
    ("coffer.dev", "volumerestores"): {"get", "list", "watch"},
    ("coffer.dev", "volumerestores/status"): {"patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}
# What `coffer-agent controller` calls, and nothing more (see
# deploy/controller.yaml).
EXPECTED_CONTROLLER_RULES = {
    ("coffer.dev", "volumebackups"): {"get", "list", "watch", "patch", "create", "delete"},
    ("coffer.dev", "volumerestores"): {"get", "list", "watch", "patch", "create", "delete"},
    ("coffer.dev", "restoresources"): {"get", "create"},
    ("coffer.dev", "applicationrestores"): {"get", "list", "watch", "patch", "delete"},
    ("coffer.dev", "applicationrestores/status"): {"get", "patch"},
    ("coffer.dev", "applicationbackups"): {"get", "list", "watch", "patch", "create", "delete"},
    ("coffer.dev", "applicationbackups/status"): {"get", "patch"},
    ("coffer.dev", "backupschedules"): {"get", "list", "watch"},
    ("coffer.dev", "backupschedules/status"): {"get", "patch"},
    ("coffer.dev", "volumebackups/status"): {"get", "patch"},
    ("coffer.dev", "volumerestores/status"): {"get", "patch"},
    ("coffer.dev", "backuprepositories"): {"get", "list", "watch"},
    ("coffer.dev", "backuprepositories/status"): {"get", "patch"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "nodes"): {"get"},
    ("", "persistentvolumeclaims"): {"get", "list", "watch", "create", "delete", "patch"},
    ("", "persistentvolumes"): {"get", "list", "patch", "delete"},
    ("storage.k8s.io", "storageclasses"): {"get"},
    ("snapshot.storage.k8s.io", "volumesnapshots"): {"get", "list", "watch", "create", "delete", "patch"},
    ("snapshot.storage.k8s.io", "volumesnapshotcontents"): {"get", "list", "create", "delete"},
    ("snapshot.storage.k8s.io", "volumesnapshotclasses"): {"list"},
    ("groupsnapshot.storage.k8s.io", "volumegroupsnapshots"): {"get", "create", "delete", "patch"},
    ("groupsnapshot.storage.k8s.io", "volumegroupsnapshotclasses"): {"list"},
    ("", "events"): {"list"},
    ("events.k8s.io", "events"): {"create", "patch"},
}
CONTROLLER_SOURCE = ROOT / "deploy" / "controller.yaml"
# What coffer may do in a namespace that opts in, bound there by the
# namespace's own RoleBinding (see deploy/tenant.yaml), never cluster-wide.
EXPECTED_TENANT_RULES = {
    ("", "secrets"): {"get"},
    ("", "pods/exec"): {"create"},
    ("rbac.authorization.k8s.io", "roles"): {"create", "delete"},
    ("rbac.authorization.k8s.io", "rolebindings"): {"create", "delete"},
}
# What the controller alone may do in a namespace that uses application
# backups, bound there by the namespace's own RoleBinding.
EXPECTED_APPLICATIONS_RULES = {
    ("", "pods"): {"create", "delete"},
}
TENANT_SOURCE = ROOT / "deploy" / "tenant.yaml"
# Rights that reach a namespace's Secrets (directly, through a pod that
# mounts them, or through exec): never in a cluster-wide binding.
SECRET_REACH = {("", "secrets"), ("", "pods/exec"), ("", "pods")}
# The capabilities the agent may hold without privileged (each explained in
# deploy/daemonset.yaml).
ALLOWED_CAPS = {"DAC_READ_SEARCH", "DAC_OVERRIDE", "FOWNER", "CHOWN", "FSETID", "MKNOD", "SETFCAP"}
NAMESPACE = "coffer-system"
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class Failed(Exception):
    pass


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def kn(doc):
    md = doc.get("metadata") or {}
    ns = md.get("namespace")
    return f"{doc.get('kind')}/{(ns + '/') if ns else ''}{md.get('name')}"


# ---- custom resources against the CRDs -------------------------------------


def openapi_to_jsonschema(node, root=False):
    """The CRD's structural OpenAPI v3 schema as JSON Schema: `nullable`
    becomes a null type, and objects refuse unknown fields (the API server
    prunes or, with strict field validation, rejects them)."""
    if isinstance(node, list):
        return [openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k in ("properties", "patternProperties"):
            out[k] = {name: openapi_to_jsonschema(s) for name, s in v.items()}
        elif k in ("items", "additionalProperties", "not"):
            out[k] = openapi_to_jsonschema(v) if isinstance(v, dict) else v
        elif k in ("allOf", "anyOf", "oneOf"):
            out[k] = [openapi_to_jsonschema(s) for s in v]
        elif k == "nullable" or k.startswith("x-kubernetes-"):
            continue
        else:
            out[k] = v
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        not root
        and node.get("type") == "object"
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_schemas():
    """(apiVersion, kind) -> (scope, JSON Schema) for every served version."""
    out = {}
    for crd in load(CRDS):
        spec = crd["spec"]
        for v in spec["versions"]:
            if not v.get("served"):
                continue
            schema = openapi_to_jsonschema(v["schema"]["openAPIV3Schema"], root=True)
            props = schema.setdefault("properties", {})
            props["apiVersion"] = {"const": f"{spec['group']}/{v['name']}"}
            props["kind"] = {"const": spec["names"]["kind"]}
            props["metadata"] = {"type": "object"}
            schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
            schema["additionalProperties"] = False
            out[(f"{spec['group']}/{v['name']}", spec["names"]["kind"])] = (spec["scope"], schema)
    return out


def validate_custom(doc, schemas, agnostic=False):
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in schemas:
        raise Failed(f"{kn(doc)}: no CRD in deploy/crds.yaml serves {key[0]} {key[1]}")
    scope, schema = schemas[key]
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.absolute_path)
    )
    if errors:
        raise Failed(
            "; ".join(f"{kn(doc)}: {'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors)
        )
    md = doc["metadata"]
    if not DNS_SUBDOMAIN.match(md.get("name", "")):
        raise Failed(f"{kn(doc)}: metadata.name is not a DNS subdomain")
    if scope == "Namespaced" and not md.get("namespace") and not agnostic:
        raise Failed(f"{kn(doc)}: namespaced kind without metadata.namespace")


def validate_doc(doc, version, schemas, agnostic=False):
    api = doc.get("apiVersion", "")
    if api.split("/")[0] in {g.split("/")[0] for g, _ in schemas}:
        validate_custom(doc, schemas, agnostic)
        return "crd"
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(map(str, e.absolute_path)) or "(root)"
        raise Failed(f"{kn(doc)}: {path}: {e.message}")
    except kubernetes_validate.SchemaNotFoundError:
        raise Failed(f"{kn(doc)}: kubernetes-validate has no schema for {api} {doc.get('kind')} at {version}")
    return "k8s"


def cmd_schemas(version, files):
    schemas = crd_schemas()
    counts = {"k8s": 0, "crd": 0}
    problems = []
    for f in files:
        for doc in load(f):
            try:
                # The examples are namespace-agnostic (kubectl -n NS apply -f).
                counts[validate_doc(doc, version, schemas, "/examples/" in str(f))] += 1
            except Failed as e:
                problems.append(f"{f}: {e}")
    if problems:
        raise Failed("\n".join(problems))
    return f"{counts['k8s']} objects against Kubernetes {version} (strict), {counts['crd']} against the CRDs"


def cmd_negative(version, rendered):
    """Broken objects must fail, or the checks above prove nothing."""
    schemas = crd_schemas()
    docs = load(rendered)
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    cases = []
    bad = copy.deepcopy(ds)
    bad["spec"]["template"]["spec"]["containers"][0]["mountPropagaton"] = "HostToContainer"
    cases.append(("a misspelt container field", bad))
    bad = copy.deepcopy(ds)
    bad["spec"]["template"]["spec"]["volumes"][0]["hostPath"]["path"] = 7
    cases.append(("a number as a hostPath path", bad))
    examples = ROOT / "deploy" / "examples"
    restore = next(d for d in load(examples / "restore.yaml") if d["kind"] == "VolumeRestore")
    bad = copy.deepcopy(restore)
    bad["spec"]["policy"] = "Sometimes"
    cases.append(("a VolumeRestore policy outside its enum", bad))
    bad = copy.deepcopy(restore)
    bad["spec"]["snapshot"]["pvcName"] = "data-db-0"
    cases.append(("an unknown VolumeRestore field", bad))
    bad = copy.deepcopy(restore)
    del bad["spec"]["snapshot"]
    cases.append(("a VolumeRestore without its required snapshot", bad))
    bad = copy.deepcopy(restore)
    bad["spec"]["target"] = {"namespace": "copy"}
    cases.append(("a VolumeRestore target without its pvc", bad))
    sched = next(d for d in load(examples / "schedule.yaml") if d["kind"] == "BackupSchedule")
    bad = copy.deepcopy(sched)
    bad["spec"]["concurrencyPolicy"] = "Sometimes"
    cases.append(("a BackupSchedule concurrencyPolicy outside its enum", bad))
    bad = copy.deepcopy(sched)
    bad["spec"]["retention"]["keepLast"] = "seven"
    cases.append(("a BackupSchedule keepLast that is not a number", bad))
    repo = next(d for d in load(examples / "repository.yaml") if d["kind"] == "BackupRepository")
    bad = copy.deepcopy(repo)
    bad["spec"]["options"]["timeout"] = 30
    cases.append(("a BackupRepository option that is not a string", bad))
    bad = copy.deepcopy(repo)
    bad["spec"]["maintenance"]["maxUnusedPercent"] = "five"
    cases.append(("a BackupRepository maxUnusedPercent that is not a number", bad))
    bad = copy.deepcopy(repo)
    bad["spec"]["maintenance"]["pruneSchedul"] = "@daily"
    cases.append(("a misspelt maintenance field", bad))
    accepted = []
    for what, doc in cases:
        try:
            validate_doc(doc, version, schemas)
            accepted.append(what)
        except Failed:
            pass
    if accepted:
        raise Failed("the validators accepted: " + ", ".join(accepted))
    return f"{len(cases)} broken objects rejected"


# ---- policy -------------------------------------------------------------------


def one(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    if len(found) != 1:
        raise Failed(f"expected one {kind} {name or ''}, found {len(found)}")
    return found[0]


def check(cond, msg, problems):
    if not cond:
        problems.append(msg)


def rules_of(role, p):
    """A role's rules as {(group, resource): verbs}; wildcards are problems."""
    got = {}
    for r in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            check("*" not in r.get(field, []), f"{kn(role)} rule with a wildcard in {field}: {r}", p)
        check("nonResourceURLs" not in r, f"{kn(role)} rule with nonResourceURLs: {r}", p)
        for g in r.get("apiGroups", []):
            for res in r.get("resources", []):
                got.setdefault((g, res), set()).update(r.get("verbs", []))
    return got


def compare_rules(what, got, expected, p):
    for key in sorted(set(got) | set(expected)):
        want, have = expected.get(key, set()), got.get(key, set())
        if want != have:
            g, res = key
            p.append(f"{what} {g or 'core'}/{res}: verbs {sorted(have)}, expected {sorted(want)}")


def commented_rules(source, p):
    """Every rule in the source says why (a comment right above it)."""
    lines = source.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\s*- apiGroups:", line):
            check(i > 0 and lines[i - 1].strip().startswith("#"),
                  f"{source.relative_to(ROOT)}:{i + 1}: rule without a comment above it", p)


IMAGE = "registry.example.com/coffer/coffer-agent"


def configuration(docs, p):
    """The data of the ConfigMap coffer-config (deploy/config.env), which the
    agent and the controller both take whole through envFrom."""
    maps = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("coffer-config")]
    if len(maps) != 1:
        raise Failed(f"{len(maps)} coffer-config ConfigMaps rendered")
    name = maps[0]["metadata"]["name"]
    for kind, wname in (("DaemonSet", "coffer-agent"), ("Deployment", "coffer-controller")):
        for c in one(docs, kind, wname)["spec"]["template"]["spec"]["containers"]:
            refs = [e.get("configMapRef", {}).get("name") for e in c.get("envFrom", [])]
            check(refs == [name], f"{kind} {wname} container {c['name']} does not take {name} (envFrom: {refs})", p)
            inline = {e["name"] for e in c.get("env", [])} & set(maps[0].get("data", {}))
            check(not inline, f"{kind} {wname} sets {sorted(inline)} itself instead of coffer-config", p)
    return maps[0].get("data", {})


def cmd_configured(rendered, image, cluster):
    """An overlay with one `images:` override and one edited value: every
    container runs that image (mover pods follow the controller's) and the
    one configuration names that cluster."""
    docs = load(rendered)
    p = []
    config = configuration(docs, p)
    check(config.get("CLUSTER_NAME") == cluster, f"CLUSTER_NAME is {config.get('CLUSTER_NAME')!r}, not {cluster!r}", p)
    images = {}
    for d in docs:
        spec = d.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            images[f"{kn(d)} {c['name']}"] = c.get("image")
    check(images and all(i == image for i in images.values()), f"images: {images}", p)
    for d in docs:
        for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            for e in c.get("env", []):
                check(e["name"] != "MOVER_IMAGE", f"{kn(d)} pins MOVER_IMAGE: an images: override would miss movers", p)
    if p:
        raise Failed("\n".join(p))
    return f"{len(images)} containers run {image}; CLUSTER_NAME={cluster} in the one ConfigMap both read"


def controller_policy(docs, p):
    """The controller: its ClusterRole exactly as used, the Lease Role in its
    own namespace only, two replicas, the downward API for its identity,
    movers on its own image, a locked-down container."""
    role = one(docs, "ClusterRole", "coffer-controller")
    compare_rules("ClusterRole coffer-controller", rules_of(role, p), EXPECTED_CONTROLLER_RULES, p)
    binding = one(docs, "ClusterRoleBinding", "coffer-controller")
    check(binding.get("subjects") == [{"kind": "ServiceAccount", "name": "coffer-controller", "namespace": NAMESPACE}],
          f"ClusterRoleBinding coffer-controller subjects are {binding.get('subjects')}", p)
    lease = one(docs, "Role", "coffer-controller-lease")
    check(lease["metadata"].get("namespace") == NAMESPACE, "the Lease Role is not in coffer-system", p)
    compare_rules("Role coffer-controller-lease", rules_of(lease, p),
                  {("coordination.k8s.io", "leases"): {"get", "create", "patch"}}, p)
    movers = one(docs, "Role", "coffer-controller-movers")
    check(movers["metadata"].get("namespace") == NAMESPACE, "the movers' Role is not in coffer-system", p)
    compare_rules("Role coffer-controller-movers", rules_of(movers, p),
                  {("", "pods"): {"create", "delete"}, ("", "serviceaccounts"): {"get", "create", "delete"}}, p)
    binding = one(docs, "RoleBinding", "coffer-controller-movers")
    check(binding["metadata"].get("namespace") == NAMESPACE and binding.get("subjects") ==
          [{"kind": "ServiceAccount", "name": "coffer-controller", "namespace": NAMESPACE}],
          "RoleBinding coffer-controller-movers does not bind coffer-controller in coffer-system", p)
    one(docs, "ServiceAccount", "coffer-controller")
    dep = one(docs, "Deployment", "coffer-controller")
    check(dep["metadata"].get("namespace") == NAMESPACE, "the Deployment is not in coffer-system", p)
    check(dep["spec"].get("replicas", 1) >= 2, "one replica: no standby takes over", p)
    pod = dep["spec"]["template"]["spec"]
    check(pod.get("serviceAccountName") == "coffer-controller", "the controller does not run as coffer-controller", p)
    [c] = pod["containers"]
    env = {e["name"]: e for e in c.get("env", [])}
    check(env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
          "POD_NAME (the Lease identity) is not the pod's name", p)
    check(env.get("POD_NAMESPACE", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace",
          "POD_NAMESPACE (the Lease's namespace) is not the pod's namespace", p)
    check("MOVER_IMAGE" not in env or env["MOVER_IMAGE"].get("value") == c.get("image"),
          "mover pods do not run the controller's image", p)
    check(env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
          "POD_NAME is not this pod's name (the controller reads its own image from its pod)", p)
    check(c.get("args") == ["controller"], f"the container runs {c.get('args')}", p)
    sc = c.get("securityContext", {})
    check(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False,
          "the controller may write its filesystem or escalate", p)
    check(sc.get("capabilities", {}).get("drop") == ["ALL"], "the controller keeps capabilities", p)
    check(pod.get("securityContext", {}).get("runAsNonRoot") is True, "the controller may run as root", p)
    check("memory" in c.get("resources", {}).get("limits", {}), "the controller has no memory limit", p)
    commented_rules(CONTROLLER_SOURCE, p)


def cmd_policy(rendered):
    docs = load(rendered)
    p = []
    controller_policy(docs, p)
    # Namespaced objects live in coffer-system.
    for d in docs:
        if d["kind"] in ("ServiceAccount", "Service", "DaemonSet", "Deployment"):
            check(d["metadata"].get("namespace") == NAMESPACE, f"{kn(d)} is not in {NAMESPACE}", p)
    one(docs, "Namespace", NAMESPACE)

    # RBAC: exactly the expected rules, no wildcards, no built-in powerful roles.
    role = one(docs, "ClusterRole", "coffer-agent")
    compare_rules("ClusterRole coffer-agent", rules_of(role, p), EXPECTED_RULES, p)
    for d in docs:
        if d["kind"] in ("ClusterRoleBinding", "RoleBinding"):
            check(
                d["roleRef"]["name"] not in ("cluster-admin", "admin", "edit"),
                f"{kn(d)} binds {d['roleRef']['name']}",
                p,
            )
    # The tenant role: exactly its rules, bound by no ClusterRoleBinding;
    # nothing bound cluster-wide reaches Secrets.
    tenant = one(docs, "ClusterRole", "coffer-tenant")
    compare_rules("ClusterRole coffer-tenant", rules_of(tenant, p), EXPECTED_TENANT_RULES, p)
    apps = one(docs, "ClusterRole", "coffer-applications")
    compare_rules("ClusterRole coffer-applications", rules_of(apps, p), EXPECTED_APPLICATIONS_RULES, p)
    commented_rules(TENANT_SOURCE, p)
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
    for d in docs:
        if d["kind"] != "ClusterRoleBinding":
            continue
        name = d["roleRef"]["name"]
        check(name not in ("coffer-tenant", "coffer-applications"), f"{kn(d)} binds {name} cluster-wide", p)
        for (g, res), verbs in rules_of(roles.get(name, {"rules": []}), p).items():
            reaches = (g, res) in SECRET_REACH and (res != "pods" or verbs & {"create", "update", "patch"})
            check(not reaches, f"{kn(d)} grants {g or 'core'}/{res} {sorted(verbs)} cluster-wide", p)
    binding = one(docs, "ClusterRoleBinding", "coffer-agent")
    check(binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "coffer-agent"},
          f"ClusterRoleBinding roleRef is {binding['roleRef']}", p)
    check(binding.get("subjects") == [{"kind": "ServiceAccount", "name": "coffer-agent", "namespace": NAMESPACE}],
          f"ClusterRoleBinding subjects are {binding.get('subjects')}", p)
    one(docs, "ServiceAccount", "coffer-agent")
    commented_rules(RBAC_SOURCE, p)

    # DaemonSet.
    ds = one(docs, "DaemonSet", "coffer-agent")
    pod = ds["spec"]["template"]["spec"]
    check(pod.get("serviceAccountName") == "coffer-agent", "DaemonSet does not run as ServiceAccount coffer-agent", p)
    check(not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"),
          "DaemonSet uses the host's network, PID or IPC namespace", p)
    check("priorityClassName" not in pod, "DaemonSet sets a priorityClassName", p)
    check({"operator": "Exists"} in pod.get("tolerations", []), "DaemonSet does not tolerate every taint", p)
    check(pod.get("terminationGracePeriodSeconds", 30) >= 30, "terminationGracePeriodSeconds under 30 s", p)
    us = ds["spec"].get("updateStrategy", {})
    check(us.get("type") == "RollingUpdate" and us.get("rollingUpdate", {}).get("maxUnavailable"),
          "DaemonSet updateStrategy is not a bounded RollingUpdate", p)
    labels = ds["spec"]["template"]["metadata"]["labels"]
    sel = ds["spec"]["selector"]["matchLabels"]
    check(all(labels.get(k) == v for k, v in sel.items()), "DaemonSet selector does not match its pods", p)
    _, c = agent(docs)
    check(c.get("args") == ["node"], f"container agent args are {c.get('args')}", p)
    version = cargo_version()
    check(c.get("image") == f"{IMAGE}:{version}",
          f"image {c.get('image')} is not {IMAGE}:{version} (the workspace version)", p)
    env = {e["name"]: e for e in c.get("env", [])}
    for name in ("NODE_NAME", "KUBELET_ROOT", "HOST_ROOT",
                 "MAX_CONCURRENT", "METRICS_ADDR"):
        check(name in env, f"env {name} missing", p)
    config = configuration(docs, p)
    for name in ("CLUSTER_NAME", "LOG_FORMAT", "HOST_PATH_ALLOW"):
        check(name in config and name not in env, f"{name} is not set once, in coffer-config", p)
    check(env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName",
          "NODE_NAME does not come from spec.nodeName", p)
    val = lambda n: env.get(n, {}).get("value", "")  # noqa: E731
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    vols = {v["name"]: v for v in pod.get("volumes", [])}

    def host_mount(mount_path, host_path, read_only, why):
        m = mounts.get(mount_path)
        if m is None:
            p.append(f"no mount at {mount_path} ({why})")
            return
        v = vols.get(m["name"], {})
        check(v.get("hostPath", {}).get("path") == host_path,
              f"mount {mount_path} is not hostPath {host_path} ({why})", p)
        check(m.get("mountPropagation") == "HostToContainer",
              f"mount {mount_path} lacks mountPropagation HostToContainer ({why})", p)
        check(bool(m.get("readOnly")) == read_only,
              f"mount {mount_path} readOnly is {bool(m.get('readOnly'))}, expected {read_only} ({why})", p)

    kubelet = val("KUBELET_ROOT").rstrip("/")
    host_mount(f"{kubelet}/pods", f"{kubelet}/pods", False, "pod volumes, read-write for restores")
    host_mount(f"{kubelet}/plugins", f"{kubelet}/plugins", False, "block devices")
    host_root = val("HOST_ROOT").rstrip("/")
    allow = [a.strip() for a in config.get("HOST_PATH_ALLOW", "").split(",") if a.strip()]
    check(allow, "HOST_PATH_ALLOW is empty", p)
    for prefix in allow:
        host_mount(f"{host_root}{prefix}", prefix, True, f"allowed hostPath prefix {prefix}")
    host_mounts = [m for m in c.get("volumeMounts", []) if "hostPath" in vols.get(m["name"], {})]
    check(len(host_mounts) == 2 + len(allow),
          f"{len(host_mounts)} hostPath mounts; expected the kubelet's two and one per HOST_PATH_ALLOW prefix", p)
    for v in vols.values():
        hp = v.get("hostPath", {}).get("path")
        check(hp not in ("/", "/var", "/var/lib", "/etc", "/proc", "/sys", "/dev"),
              f"volume {v['name']} mounts the host's {hp}", p)
    check("emptyDir" in vols.get(mounts.get("/tmp", {}).get("name"), {}), "no emptyDir at /tmp", p)
    sc = c.get("securityContext", {})
    check(sc.get("privileged") is False, "container is privileged (use components/privileged)", p)
    check(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation is not false", p)
    check(sc.get("readOnlyRootFilesystem") is True, "root filesystem is not read-only", p)
    caps = sc.get("capabilities", {})
    check(caps.get("drop") == ["ALL"], "capabilities are not dropped first (drop: [ALL])", p)
    extra = set(caps.get("add", [])) - ALLOWED_CAPS
    check(not extra, f"capabilities beyond the documented set: {sorted(extra)}", p)
    port = val("METRICS_ADDR").rsplit(":", 1)[-1]
    ports = {x.get("name"): x for x in c.get("ports", [])}
    check(str(ports.get("metrics", {}).get("containerPort")) == port,
          f"containerPort metrics does not match METRICS_ADDR port {port}", p)
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        hg = c.get(probe, {}).get("httpGet", {})
        check(hg.get("path") == path and hg.get("port") in ("metrics", int(port or 0)),
              f"{probe} is not GET {path} on the metrics port", p)
    res = c.get("resources", {})
    check(res.get("requests", {}).get("cpu") and res.get("requests", {}).get("memory"),
          "no cpu and memory requests", p)
    check(res.get("limits", {}).get("memory"), "no memory limit", p)

    # The controller's metrics Service selects the controller's pods.
    csvc = one(docs, "Service", "coffer-controller-metrics")
    cpod = one(docs, "Deployment", "coffer-controller")["spec"]["template"]["metadata"]["labels"]
    check(csvc["spec"].get("clusterIP") == "None", "the controller's metrics Service is not headless", p)
    check(csvc["spec"].get("selector") and all(cpod.get(k) == v for k, v in csvc["spec"]["selector"].items()),
          "the controller's metrics Service does not select the controller pods", p)
    check(any(x.get("name") == "metrics" and x.get("targetPort") == "metrics" for x in csvc["spec"].get("ports", [])),
          "the controller's metrics Service has no port 'metrics'", p)

    # Metrics Service.
    svc = one(docs, "Service", "coffer-agent-metrics")
    check(svc["spec"].get("clusterIP") == "None", "metrics Service is not headless", p)
    check(all(labels.get(k) == v for k, v in svc["spec"].get("selector", {}).items()) and svc["spec"].get("selector"),
          "metrics Service does not select the agent pods", p)
    sp = [x for x in svc["spec"].get("ports", []) if x.get("name") == "metrics"]
    check(sp and str(sp[0].get("port")) == port and sp[0].get("targetPort") in ("metrics", int(port or 0)),
          f"metrics Service has no port 'metrics' {port} to the agent's metrics port", p)

    if p:
        raise Failed("\n".join(p))
    n = sum(len(v) for v in EXPECTED_RULES.values())
    return f"RBAC {n} verbs on {len(EXPECTED_RULES)} resources, DaemonSet, Service and controller rules hold"


def cargo_version():
    text = (ROOT / "Cargo.toml").read_text()
    m = re.search(r'\[workspace\.package\][^\[]*?\nversion\s*=\s*"([^"]+)"', text)
    if not m:
        raise Failed("no [workspace.package] version in Cargo.toml")
    return m.group(1)


# ---- components ---------------------------------------------------------------


def agent(docs):
    ds = one(docs, "DaemonSet", "coffer-agent")
    found = [c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "agent"]
    if len(found) != 1:
        raise Failed("DaemonSet coffer-agent has no container named agent")
    return ds, found[0]


def apply_privileged(docs):
    _, c = agent(docs)
    c["securityContext"]["privileged"] = True
    c["securityContext"]["allowPrivilegeEscalation"] = True


def apply_read_only(docs):
    _, c = agent(docs)
    for m in c["volumeMounts"]:
        if m["mountPath"].endswith(("/pods", "/plugins")) and m["mountPath"].startswith("/var/lib/kubelet"):
            m["readOnly"] = True


COMPONENTS = {"privileged": [apply_privileged], "read-only": [apply_read_only],
              "both": [apply_privileged, apply_read_only]}


def cmd_component(name, base, overlay):
    """The overlay equals the base with exactly the component's change."""
    want = load(base)
    for f in COMPONENTS[name]:
        f(want)
    have = load(overlay)
    key = lambda d: kn(d)  # noqa: E731
    want_by, have_by = {key(d): d for d in want}, {key(d): d for d in have}
    if set(want_by) != set(have_by):
        raise Failed(f"objects differ: {sorted(set(want_by) ^ set(have_by))}")
    diff = [k for k in want_by if want_by[k] != have_by[k]]
    if diff:
        raise Failed(f"{name}: unexpected rendering of {diff}")
    what = " and ".join(f.__name__.removeprefix("apply_").replace("_", "-") for f in COMPONENTS[name])
    return f"exactly the {what} change"


def cmd_etcd(rendered):
    """The etcd CronJob: control-plane node, host network, etcd's certificates
    read-only, the flags coffer takes, one run at a time, retention."""
    docs = load(rendered)
    p = []
    cj = one(docs, "CronJob")
    check(cj["metadata"].get("namespace") == "coffer-system", "the CronJob is not in coffer-system", p)
    check(cj["spec"].get("concurrencyPolicy") == "Forbid", "etcd backups may overlap", p)
    pod = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    check(pod.get("hostNetwork") is True, "no host network: etcd's 127.0.0.1:2379 is unreachable", p)
    check("node-role.kubernetes.io/control-plane" in pod.get("nodeSelector", {}), "not pinned to control-plane nodes", p)
    check(any(t.get("key") == "node-role.kubernetes.io/control-plane" for t in pod.get("tolerations", [])),
          "does not tolerate the control-plane taint", p)
    check(pod.get("automountServiceAccountToken") is False, "mounts an API token it does not use", p)
    [c] = pod["containers"]
    script = " ".join(c.get("command", []) + c.get("args", []))
    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    pki = [n for n, v in vols.items() if "hostPath" in v]
    check(len(pki) == 1 and vols[pki[0]]["hostPath"]["path"] == "/etc/kubernetes/pki/etcd",
          "the only hostPath must be etcd's certificates", p)
    for n in pki:
        check(mounts.get(n, {}).get("readOnly") is True, f"{n} is not mounted read-only", p)
        mp = mounts.get(n, {}).get("mountPath", "")
        for flag in ("--etcd-cacert", "--etcd-cert", "--etcd-key"):
            check(f"{flag} {mp}/" in script, f"{flag} does not name a file in {mp}", p)
    for word in ("coffer backup", "--etcd https://127.0.0.1:2379", "coffer forget", "--keep-", "--prune"):
        check(word in script, f"the job does not run {word!r}", p)
    sc = c.get("securityContext", {})
    check(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False,
          "the container may write its filesystem or escalate", p)
    check(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities are not all dropped", p)
    check("memory" in c.get("resources", {}).get("limits", {}), "no memory limit", p)
    if p:
        raise Failed("\n".join(p))
    return "control-plane node, host network, certificates read-only, backup then retention"


def cmd_monitoring(version, base, overlay):
    """The overlay is the base plus two ServiceMonitors, a PrometheusRule and
    the dashboard ConfigMap, each in coffer-system and of the right shape."""
    import json

    before = {kn(d) for d in load(base)}
    added = [d for d in load(overlay) if kn(d) not in before]
    p = []
    kinds = sorted(d["kind"] for d in added)
    check(kinds == ["ConfigMap", "PrometheusRule", "ServiceMonitor", "ServiceMonitor"],
          f"the component adds {kinds}", p)
    for d in added:
        check(d["metadata"].get("namespace") == NAMESPACE, f"{kn(d)} is not in {NAMESPACE}", p)
        if d["kind"] == "ConfigMap":
            validate_doc(d, version, {})
            check(d["metadata"].get("labels", {}).get("grafana_dashboard") == "1",
                  f"{kn(d)} lacks the label grafana_dashboard: \"1\"", p)
            dash = json.loads(d["data"]["coffer-dashboard.json"])
            check(dash.get("panels") and dash.get("uid"), "the dashboard has no panels or uid", p)
            continue
        check(d["apiVersion"] == "monitoring.coreos.com/v1", f"{kn(d)} is not monitoring.coreos.com/v1", p)
        if d["kind"] == "ServiceMonitor":
            for e in d["spec"]["endpoints"]:
                check(e.get("port") == "metrics" and e.get("honorLabels") is True,
                      f"{kn(d)}: an endpoint is not port metrics with honorLabels", p)
        else:
            for g in d["spec"]["groups"]:
                for r in g["rules"]:
                    check(set(r) <= {"alert", "expr", "for", "labels", "annotations"} and r.get("alert")
                          and r.get("expr"), f"{kn(d)}: rule {r.get('alert')} has the wrong fields", p)
    if p:
        raise Failed("\n".join(p))
    return f"{len(added)} objects added: ServiceMonitors, PrometheusRule, dashboard ConfigMap"


def cmd_populator(base, overlay):
    """The overlay is the base plus one VolumePopulator (cluster-scoped)
    whose sourceKind is the RestoreSource kind that deploy/crds.yaml
    defines, so that the data-source validator knows the kind claims name."""
    before = {kn(d) for d in load(base)}
    added = [d for d in load(overlay) if kn(d) not in before]
    p = []
    check([d["kind"] for d in added] == ["VolumePopulator"], f"the component adds {[kn(d) for d in added]}", p)
    crds = {(c["spec"]["group"], c["spec"]["names"]["kind"]) for c in load(ROOT / "deploy" / "crds.yaml")}
    for d in added:
        check(d["apiVersion"] == "populator.storage.k8s.io/v1beta1", f"{kn(d)} is {d['apiVersion']}", p)
        check("namespace" not in d["metadata"], f"{kn(d)} is cluster-scoped but has a namespace", p)
        src = d.get("sourceKind", {})
        check((src.get("group"), src.get("kind")) in crds and src.get("kind") == "RestoreSource",
              f"{kn(d)} names {src}, not the RestoreSource kind of deploy/crds.yaml", p)
    if p:
        raise Failed("\n".join(p))
    return "one VolumePopulator, for coffer.dev RestoreSource"


def cmd_examples():
    """deploy/examples fit together: namespace-agnostic (apart from what lives
    in coffer-system), the schedule selects the example StatefulSet, the
    restores name its claim, and every run names the example repository."""
    ex = ROOT / "deploy" / "examples"
    docs = {f.name: load(f) for f in sorted(ex.glob("*.yaml"))}
    p = []
    for name, ds in docs.items():
        for d in ds:
            if d["metadata"].get("namespace") not in (None, NAMESPACE):
                p.append(f"{name}: {kn(d)} pins namespace {d['metadata']['namespace']}")
    sts = one(docs["pod.yaml"], "StatefulSet")
    labels = sts["spec"]["template"]["metadata"].get("labels", {})
    sched = one(docs["schedule.yaml"], "BackupSchedule")
    sel = sched["spec"]["selector"]["matchLabels"]
    check(sel and all(labels.get(k) == v for k, v in sel.items()),
          f"the schedule selects {sel}, the StatefulSet's pods are {labels}", p)
    claims = {f"{t['metadata']['name']}-{sts['metadata']['name']}-0" for t in sts["spec"].get("volumeClaimTemplates", [])}
    repos = {d["metadata"]["name"] for d in docs["repository.yaml"] if d["kind"] == "BackupRepository"}
    for d in docs["restore.yaml"]:
        check(d["spec"]["snapshot"].get("pvc") in claims,
              f"{kn(d)} restores {d['spec']['snapshot'].get('pvc')}, not one of the StatefulSet's claims {sorted(claims)}", p)
        check(d["spec"].get("repository", "default") in repos, f"{kn(d)} names a repository no example makes", p)
    check(sched["spec"].get("repository", "default") in repos, "the schedule names a repository no example makes", p)
    for d in docs["application-restore.yaml"]:
        check(d["spec"].get("repository", "default") in repos, f"{kn(d)} names a repository no example makes", p)
    for d in docs["application-backup.yaml"]:
        if d["kind"] == "ApplicationBackup":
            check(d["spec"].get("repository", "default") in repos, f"{kn(d)} names a repository no example makes", p)
            accounts = {a["metadata"]["name"] for a in docs["application-backup.yaml"] if a["kind"] == "ServiceAccount"}
            check(d["spec"].get("serviceAccountName", "coffer-application") in accounts,
                  f"{kn(d)} captures as an account no example makes", p)
    if p:
        raise Failed("\n".join(p))
    return f"{sum(len(v) for v in docs.values())} objects: namespace-agnostic, the schedule selects StatefulSet {sts['metadata']['name']}"


def main(argv):
    try:
        if argv[0] == "schemas":
            msg = cmd_schemas(argv[1], argv[2:])
        elif argv[0] == "negative":
            msg = cmd_negative(argv[1], argv[2])
        elif argv[0] == "policy":
            msg = cmd_policy(argv[1])
        elif argv[0] == "etcd":
            msg = cmd_etcd(argv[1])
        elif argv[0] == "component":
            msg = cmd_component(argv[1], argv[2], argv[3])
        elif argv[0] == "examples":
            msg = cmd_examples()
        elif argv[0] == "configured":
            msg = cmd_configured(argv[1], argv[2], argv[3])
        elif argv[0] == "monitoring":
            msg = cmd_monitoring(argv[1], argv[2], argv[3])
        elif argv[0] == "populator":
            msg = cmd_populator(argv[1], argv[2])
        else:
            raise SystemExit(__doc__)
    except Failed as e:
        print(e)
        return 1
    print(msg)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
