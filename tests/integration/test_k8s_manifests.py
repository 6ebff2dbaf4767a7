"""The deployment files, checked offline and then run: deploy/k8s/ (Kubernetes),
Dockerfile, deploy/systemd/.

- Rendering: deploy/k8s (the GPU base) and deploy/k8s/overlays/cpu are built by this
  file's own subset of kustomize (resources, namespace, strategic-merge patches by
  path); a kustomization that uses anything else fails here rather than being
  rendered wrongly. Where `kubectl` is on PATH, its `kubectl kustomize` must render
  the same objects.
- Schemas: every object of both renderings and deploy/k8s/examples/ against the
  Kubernetes 1.32 API (kubernetes-validate, strict: unknown fields are errors).
- checkov's Kubernetes checks (--skip-download) on the base files, the examples and
  the rendered CPU overlay: no failed check; each skipped one carries a reason.
- Consistency: selectors match pod labels (Deployments, Services, PDBs,
  NetworkPolicies, the HPA's target); every Service, probe and NetworkPolicy port
  names a port the container exposes; the router's dns:// names the headless
  Service of the replicas with the port that reaches them; RollingUpdate maxSurge 1,
  maxUnavailable 0; terminationGracePeriodSeconds above the preStop sleep plus the
  drain timeout the arguments give; a securityContext that is non-root (the
  Dockerfile's USER), read-only, drops ALL, no privilege escalation, seccomp
  RuntimeDefault; requests and limits; one GPU per GPU pod and none in the CPU
  overlay; the model repository from a read-only volume; every flag in the
  arguments is one the binary's --help lists.
- The Dockerfile, statically: ARGs before the first FROM give each FROM its image,
  with a pinned default (a tag other than latest, or a digest); a build stage runs
  deploy/setup.sh and cmake, the final stage is FROM ${RUNTIME_IMAGE}, installs
  nothing and runs as a numeric non-root USER; no ADD (no fetched URLs); COPY
  --from names an earlier stage; the binaries the manifests run are put where they
  say; .dockerignore keeps build trees and .git out.
- systemd units: `systemd-analyze verify` on copies whose ExecStart names the build
  tree's binaries (any warning fails); KillSignal=SIGTERM, Restart=on-failure,
  TimeoutStopSec above the drain, the hardening options.
- Running: corral-replica with the CPU overlay's exact arguments and corral-router
  with the base's (the ConfigMap's values expanded as the kubelet does), ports moved
  to free ones, the model volume to a copy of models/digits, the Service's DNS name
  to 127.0.0.1; every path the probes and the Prometheus annotations name answers
  as the manifest expects (startup, readiness, liveness 200; /metrics), the router is
  ready through the replica it found by dns://, and a SIGTERM drains each within
  its grace period (the replica not ready but live while it drains).

Skipped (77) only when PyPI cannot be reached to install the checkers
(deploy/k8s/tools-venv.sh). Usage: test_k8s_manifests.py BUILD_DIR REPO_ROOT
"""
import copy
import glob
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testrun  # noqa: E402

BUILD, ROOT = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
K8S = os.path.join(ROOT, "deploy", "k8s")
K8S_VERSION = "1.32.0"
NAMESPACED_NOT = {"Namespace", "PersistentVolume", "ClusterRole", "ClusterRoleBinding",
                  "StorageClass", "CustomResourceDefinition"}


def checker_python():
    """The python of the checkers' virtualenv; skips the entry when PyPI is unreachable."""
    res = subprocess.run([os.path.join(K8S, "tools-venv.sh")], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    if res.returncode == 3:
        testrun.skip_all("cannot install kubernetes-validate and checkov: %s"
                         % res.stderr.strip().splitlines()[-1])
    if res.returncode != 0:
        print(res.stderr, flush=True)
        print("FAIL: deploy/k8s/tools-venv.sh exited %d" % res.returncode, flush=True)
        sys.exit(1)
    return res.stdout.strip().splitlines()[-1]


# The checkers live in their own virtualenv: run this file with its python.
if os.environ.get("CORRAL_K8S_VENV") != "1":
    py = checker_python()
    os.environ["CORRAL_K8S_VENV"] = "1"
    os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])

import yaml  # noqa: E402
import kubernetes_validate  # noqa: E402

from cluster import Proc  # noqa: E402


# ---- a subset of kustomize ------------------------------------------------------------

class Unsupported(Exception):
    pass


# Strategic merge: lists under these keys merge element by element on the key; any
# other list is replaced, as Kubernetes' own patch strategy does for them.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name",
              "volumeMounts": "mountPath", "env": "name", "imagePullSecrets": "name"}


def smp(base, patch, where="patch"):
    """Applies a strategic-merge patch to `base` (a copy is returned)."""
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if k.startswith("$"):
            raise Unsupported("%s: directive %s is not implemented by this renderer" % (where, k))
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = smp(out[k], v, "%s.%s" % (where, k))
        elif isinstance(v, list) and isinstance(out.get(k), list) and (
                k in MERGE_KEYS or (k == "ports" and v and "containerPort" in v[0])):
            key = MERGE_KEYS.get(k, "containerPort")
            merged = out[k]
            for item in v:
                if not isinstance(item, dict) or key not in item:
                    raise Unsupported("%s.%s: an element without %s" % (where, k, key))
                if "$patch" in item:
                    raise Unsupported("%s.%s: $patch is not implemented" % (where, k))
                hit = [i for i, b in enumerate(merged) if b.get(key) == item[key]]
                if hit:
                    merged[hit[0]] = smp(merged[hit[0]], item, "%s.%s[%s]" % (where, k, item[key]))
                else:
                    merged.append(copy.deepcopy(item))
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def render(directory):
    """The objects `kustomize build directory` gives, for the features used here."""
    kfile = os.path.join(directory, "kustomization.yaml")
    (k,) = load_docs(kfile)
    unknown = set(k) - {"apiVersion", "kind", "resources", "patches", "namespace"}
    if unknown:
        raise Unsupported("%s: %s not implemented by this renderer" % (kfile, sorted(unknown)))
    objs = []
    for r in k.get("resources", []):
        p = os.path.normpath(os.path.join(directory, r))
        objs += render(p) if os.path.isdir(p) else load_docs(p)
    for entry in k.get("patches", []):
        if set(entry) != {"path"}:
            raise Unsupported("%s: patches other than {path: FILE}: %s" % (kfile, entry))
        for patch in load_docs(os.path.join(directory, entry["path"])):
            hits = [i for i, o in enumerate(objs)
                    if o["kind"] == patch["kind"] and o["apiVersion"] == patch["apiVersion"]
                    and o["metadata"]["name"] == patch["metadata"]["name"]]
            if len(hits) != 1:
                raise AssertionError("%s: patch of %s/%s matches %d objects" % (
                    entry["path"], patch["kind"], patch["metadata"]["name"], len(hits)))
            objs[hits[0]] = smp(objs[hits[0]], patch, entry["path"])
    if "namespace" in k:
        for o in objs:
            if o["kind"] not in NAMESPACED_NOT:
                o["metadata"]["namespace"] = k["namespace"]
    return objs


def key(o):
    return (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])


def by_kind(objs, kind):
    return [o for o in objs if o["kind"] == kind]


def one(objs, kind, name):
    hits = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, "%s/%s: %d objects" % (kind, name, len(hits))
    return hits[0]


def matches(selector, labels):
    """A LabelSelector (matchLabels only, as used here) against a label map."""
    if set(selector) - {"matchLabels"}:
        raise Unsupported("selector %s: only matchLabels is checked" % selector)
    ml = selector.get("matchLabels") or {}
    return bool(ml) and all(labels.get(k) == v for k, v in ml.items())


def expand(arg, env):
    """The kubelet's $(VAR) expansion in command and args ($$ escapes)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), arg)


def container_env(objs, c):
    env = {}
    for src in c.get("envFrom", []):
        cm = one(objs, "ConfigMap", src["configMapRef"]["name"])
        env.update(cm["data"])
    for e in c.get("env", []):
        env[e["name"]] = e.get("value", "")
    return env


def final_args(objs, c):
    env = container_env(objs, c)
    args = [expand(a, env) for a in c.get("args", [])]
    for a in args:
        assert "$(" not in a, "%s: %r names a variable the container does not have" % (
            c["name"], a)
    return args


def flag(args, name):
    """The value of `--name V` or `--name=V` in args (the last one), or None."""
    val = None
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            val = args[i + 1]
        elif a.startswith(name + "="):
            val = a[len(name) + 1:]
    return val


def pods(objs):
    """(Deployment, pod template) for every Deployment."""
    return [(d, d["spec"]["template"]) for d in by_kind(objs, "Deployment")]


def container_port(c, ref):
    """The containerPort a probe / Service / policy port reference (name or number) means."""
    for p in c.get("ports", []):
        if ref == p.get("name") or ref == p["containerPort"]:
            return p["containerPort"]
    return None


HELP = {}


def help_text(binary):
    if binary not in HELP:
        res = subprocess.run([binary, "--help"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=10)
        HELP[binary] = res.stdout
    return HELP[binary]


def build_binary(command_path):
    """The build tree's binary for an image path such as /usr/local/bin/corral-router."""
    name = os.path.basename(command_path)
    sub = {"corral-router": "router", "corral-replica": "replica",
           "corral-scheduler": "scheduler", "corralctl": "client"}[name]
    return os.path.join(BUILD, sub, name)


def assert_flags_known(tc, binary, args, where):
    text = help_text(binary)
    for a in args:
        if a.startswith("--"):
            name = a.split("=", 1)[0]
            tc.assertRegex(text, r"(^|[\s\[])%s\b" % re.escape(name),
                           "%s: %s is not an option of %s" % (where, name, binary))


GPU = render(K8S)
CPU = render(os.path.join(K8S, "overlays", "cpu"))
EXAMPLES = [d for p in sorted(glob.glob(os.path.join(K8S, "examples", "*.yaml")))
            for d in load_docs(p)]


class Render(unittest.TestCase):
    def test_overlay_changes_only_the_replicas_device(self):
        gpu, cpu = {key(o): o for o in GPU}, {key(o): o for o in CPU}
        self.assertEqual(set(gpu), set(cpu))
        changed = [k for k in gpu if gpu[k] != cpu[k]]
        self.assertEqual(changed, [("Deployment", "corral", "digits-replica")])

    def test_same_as_kubectl_kustomize(self):
        kubectl = shutil.which("kubectl")
        if not kubectl:
            print("kubectl is not on PATH: the rendering is not cross-checked", flush=True)
            return
        for d, mine in ((K8S, GPU), (os.path.join(K8S, "overlays", "cpu"), CPU)):
            res = subprocess.run([kubectl, "kustomize", d], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, timeout=60)
            self.assertEqual(res.returncode, 0, res.stderr)
            theirs = {key(o): o for o in yaml.safe_load_all(res.stdout) if o}
            self.assertEqual({key(o): o for o in mine}, theirs, os.path.relpath(d, ROOT))


class Schemas(unittest.TestCase):
    def test_every_object_against_kubernetes_api(self):
        errors = []
        sets = (("deploy/k8s", GPU), ("deploy/k8s/overlays/cpu", CPU),
                ("deploy/k8s/examples", EXAMPLES))
        n = 0
        for where, objs in sets:
            for o in objs:
                n += 1
                try:
                    kubernetes_validate.validate(o, K8S_VERSION, strict=True)
                except kubernetes_validate.ValidationError as e:
                    errors.append("%s %s/%s: %s: %s" % (where, o["kind"], o["metadata"]["name"],
                                                        ".".join(map(str, e.path)), e.message))
        self.assertEqual(errors, [])
        print("%d objects valid against Kubernetes %s (strict)" % (n, K8S_VERSION), flush=True)


class Checkov(unittest.TestCase):
    def test_kubernetes_checks(self):
        with tempfile.TemporaryDirectory() as tmp:
            rendered = os.path.join(tmp, "overlay-cpu-rendered.yaml")
            with open(rendered, "w") as f:
                yaml.safe_dump_all(CPU, f, sort_keys=False)
            files = sorted(glob.glob(os.path.join(K8S, "base", "*.yaml")) +
                           glob.glob(os.path.join(K8S, "examples", "*.yaml"))) + [rendered]
            files = [p for p in files if not p.endswith("kustomization.yaml")]
            argv = [os.path.join(os.path.dirname(sys.executable), "checkov"),
                    "--framework", "kubernetes", "--skip-download", "-o", "json"]
            for p in files:
                argv += ["-f", p]
            res = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, timeout=120)
        out = json.loads(res.stdout)
        reports = out if isinstance(out, list) else [out]
        failed, skipped, passed = [], [], 0
        for r in reports:
            res_ = r.get("results", {})
            passed += len(res_.get("passed_checks", []))
            failed += ["%s %s (%s)" % (c["check_id"], c["resource"], c["file_path"])
                       for c in res_.get("failed_checks", [])]
            skipped += [(c["check_id"], c["resource"],
                         c.get("check_result", {}).get("suppress_comment") or "")
                        for c in res_.get("skipped_checks", [])]
        for cid, res_name, why in skipped:
            print("checkov skipped %s on %s: %s" % (cid, res_name, why), flush=True)
            self.assertTrue(why.strip(), "%s on %s is skipped without a reason" % (cid, res_name))
        self.assertGreater(passed, 100)
        self.assertEqual(failed, [])
        print("checkov: %d passed, %d skipped with a reason, 0 failed" % (passed, len(skipped)),
              flush=True)


class Consistency(unittest.TestCase):
    def check_set(self, objs, where):
        deps = pods(objs)
        pod_labels = [t["metadata"]["labels"] for _, t in deps]
        for d, t in deps:
            name = "%s: Deployment/%s" % (where, d["metadata"]["name"])
            self.assertTrue(matches(d["spec"]["selector"], t["metadata"]["labels"]),
                            "%s: its selector does not match its pod labels" % name)
            others = [o for o, _ in deps if o is not d and
                      matches(o["spec"]["selector"], t["metadata"]["labels"])]
            self.assertEqual(others, [], "%s: pods also selected by another Deployment" % name)
            ru = d["spec"]["strategy"]
            self.assertEqual(ru["type"], "RollingUpdate", name)
            self.assertEqual((ru["rollingUpdate"]["maxSurge"], ru["rollingUpdate"]["maxUnavailable"]),
                             (1, 0), name)
            spec = t["spec"]
            self.assertIs(spec.get("automountServiceAccountToken"), False, name)
            psc = spec["securityContext"]
            self.assertIs(psc.get("runAsNonRoot"), True, name)
            self.assertEqual(psc.get("runAsUser"), DOCKER_UID, "%s: runAsUser is not the "
                             "Dockerfile's USER" % name)
            self.assertEqual(psc.get("seccompProfile", {}).get("type"), "RuntimeDefault", name)
            self.assertEqual(len(spec["containers"]), 1, name)
            c = spec["containers"][0]
            sc = c["securityContext"]
            self.assertIs(sc.get("readOnlyRootFilesystem"), True, name)
            self.assertIs(sc.get("allowPrivilegeEscalation"), False, name)
            self.assertEqual(sc.get("capabilities", {}).get("drop"), ["ALL"], name)
            self.assertNotIn("add", sc.get("capabilities", {}), name)
            for kind in ("requests", "limits"):
                for res in ("cpu", "memory"):
                    self.assertIn(res, c["resources"].get(kind, {}), "%s: %s.%s" % (name, kind, res))
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                self.assertIn(probe, c, name)
                port = c[probe]["httpGet"]["port"]
                self.assertIsNotNone(container_port(c, port), "%s: %s port %r is not a port "
                                     "of the container" % (name, probe, port))
            ann = t["metadata"].get("annotations", {})
            self.assertEqual(ann.get("prometheus.io/scrape"), "true", name)
            self.assertIsNotNone(container_port(c, int(ann["prometheus.io/port"])),
                                 "%s: prometheus.io/port is not a port of the container" % name)
            # The grace period covers the preStop sleep and the whole drain.
            args = final_args(objs, c)
            drain_s = int(flag(args, "--drain-timeout-ms")) / 1000.0
            sleep_s = c["lifecycle"]["preStop"]["sleep"]["seconds"]
            grace = spec["terminationGracePeriodSeconds"]
            self.assertGreater(grace, sleep_s + drain_s, "%s: terminationGracePeriodSeconds %s "
                               "is not above preStop %s s + drain %s s" % (name, grace, sleep_s,
                                                                          drain_s))
            binary = build_binary(c["command"][0])
            self.assertEqual(len(c["command"]), 1, name)
            assert_flags_known(self, binary, args, name)
            self.assertIn(c["command"][0], DOCKERFILE_BINARIES,
                          "%s: the image does not put %s there" % (name, c["command"][0]))
            # A model repository comes from a read-only volume at --model-repo.
            repo = flag(args, "--model-repo")
            if repo is not None:
                mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"] == repo]
                self.assertEqual(len(mounts), 1, "%s: --model-repo %s is not a mount" % (name, repo))
                self.assertIs(mounts[0].get("readOnly"), True, name)
                vol = [v for v in spec["volumes"] if v["name"] == mounts[0]["name"]][0]
                self.assertIn("persistentVolumeClaim", vol, name)
                one(objs, "PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"])

        for s in by_kind(objs, "Service"):
            name = "%s: Service/%s" % (where, s["metadata"]["name"])
            targets = [(d, t) for d, t in deps if all(
                t["metadata"]["labels"].get(k) == v for k, v in s["spec"]["selector"].items())]
            self.assertEqual(len(targets), 1, "%s: its selector matches %d Deployments' pods" %
                             (name, len(targets)))
            c = targets[0][1]["spec"]["containers"][0]
            for p in s["spec"]["ports"]:
                self.assertIn("name", p, name)
                self.assertIsNotNone(container_port(c, p["targetPort"]),
                                     "%s: port %s targets %r, which the container does not "
                                     "expose" % (name, p["name"], p["targetPort"]))
        for pdb in by_kind(objs, "PodDisruptionBudget"):
            self.assertEqual(sum(matches(pdb["spec"]["selector"], lab) for lab in pod_labels), 1,
                             "%s: PodDisruptionBudget/%s selects no Deployment's pods" %
                             (where, pdb["metadata"]["name"]))
        for np in by_kind(objs, "NetworkPolicy"):
            name = "%s: NetworkPolicy/%s" % (where, np["metadata"]["name"])
            hit = [t for _, t in deps if matches(np["spec"]["podSelector"], t["metadata"]["labels"])]
            self.assertEqual(len(hit), 1, name)
            c = hit[0]["spec"]["containers"][0]
            for rule in np["spec"]["ingress"]:
                for p in rule.get("ports", []):
                    self.assertIsNotNone(container_port(c, p["port"]), "%s: port %r" % (name, p))
                for peer in rule.get("from", []):
                    self.assertTrue(any(matches(peer["podSelector"], lab) for lab in pod_labels),
                                    "%s: a from podSelector that selects no pod" % name)

        # The router follows each model's replicas through their headless Service.
        router = one(objs, "Deployment", "corral-router")
        rargs = final_args(objs, router["spec"]["template"]["spec"]["containers"][0])
        reps = [rargs[i + 1] for i, a in enumerate(rargs) if a == "--replica"]
        self.assertTrue(reps, "%s: the router has no --replica" % where)
        for r in reps:
            m = re.fullmatch(r"([\w.-]+)=dns://([a-z0-9.-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)", r)
            self.assertIsNotNone(m, "%s: --replica %s is not NAME=dns://SVC.NS.svc.cluster."
                                 "local:PORT" % (where, r))
            model, svc_name, ns, port = m.group(1), m.group(2), m.group(3), int(m.group(4))
            svc = one(objs, "Service", svc_name)
            self.assertEqual(svc["metadata"]["namespace"], ns, "%s: %s" % (where, r))
            self.assertEqual(svc["spec"].get("clusterIP"), "None",
                             "%s: Service/%s is not headless" % (where, svc_name))
            (d, t), = [(d, t) for d, t in deps if all(
                t["metadata"]["labels"].get(k) == v for k, v in svc["spec"]["selector"].items())]
            c = t["spec"]["containers"][0]
            self.assertEqual(flag(final_args(objs, c), "--model"), model, "%s: %s" % (where, r))
            listen = flag(final_args(objs, c), "--listen")
            self.assertEqual(int(listen.rsplit(":", 1)[1]), port,
                             "%s: %s, but the replica listens on %s" % (where, r, listen))
            self.assertIn(port, [container_port(c, p["targetPort"]) for p in svc["spec"]["ports"]
                                 if p["port"] == port], "%s: %s" % (where, r))
        return deps

    def test_gpu_base(self):
        deps = self.check_set(GPU, "deploy/k8s")
        c = one(GPU, "Deployment", "digits-replica")["spec"]["template"]["spec"]["containers"][0]
        self.assertEqual(c["resources"]["limits"].get("nvidia.com/gpu"), 1)
        self.assertEqual(flag(final_args(GPU, c), "--device"), "cuda:0")
        self.assertEqual(len(deps), 2)

    def test_cpu_overlay(self):
        self.check_set(CPU, "deploy/k8s/overlays/cpu")
        for _, t in pods(CPU):
            c = t["spec"]["containers"][0]
            for kind in ("requests", "limits"):
                self.assertNotIn("nvidia.com/gpu", c["resources"].get(kind, {}))
            self.assertNotIn("tolerations", t["spec"])
        c = one(CPU, "Deployment", "digits-replica")["spec"]["template"]["spec"]["containers"][0]
        self.assertEqual(flag(final_args(CPU, c), "--device"), "cpu")
        self.assertNotIn("cuda", c["image"])

    def test_hpa_example(self):
        for h in by_kind(EXAMPLES, "HorizontalPodAutoscaler"):
            ref = h["spec"]["scaleTargetRef"]
            one(GPU, ref["kind"], ref["name"])
            self.assertEqual(h["spec"]["metrics"][0]["type"], "Pods")


# ---- Dockerfile --------------------------------------------------------------------------

def dockerfile_instructions(path):
    """[(INSTRUCTION, text)] with continuations joined and comment lines dropped."""
    out, cur = [], ""
    for line in open(path):
        s = line.rstrip("\n")
        if s.lstrip().startswith("#") or (not s.strip() and not cur):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        cur += s
        if cur.strip():
            word, _, rest = cur.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        cur = ""
    return out


DOCKERFILE = os.path.join(ROOT, "Dockerfile")
DOCKER_INS = dockerfile_instructions(DOCKERFILE)
_users = [t for i, t in DOCKER_INS if i == "USER"]
DOCKER_UID = int(_users[-1].split(":")[0]) if _users and _users[-1].split(":")[0].isdigit() else None


def dockerfile_binaries(ins):
    """The /usr/local/bin paths the image holds: copied from the build tree into
    /out/usr/local/bin by a RUN of the first stage, /out/ copied to / by the last."""
    froms = [n for n, (i, _) in enumerate(ins) if i == "FROM"]
    build_runs = " ".join(t for i, t in ins[froms[0]:froms[1]] if i == "RUN")
    stage = re.search(r"\sAS\s+(\S+)", ins[froms[0]][1], re.I)
    final = ins[froms[-1]:]
    if not stage or ("COPY", "--from=%s /out/ /" % stage.group(1)) not in final:
        return set()
    out = set()
    for b in ("corral-router", "corral-replica", "corral-scheduler", "corralctl"):
        if re.search(r"cp [^&]*/build/\w+/%s\b[^&]*/out/usr/local/bin/" % b, build_runs):
            out.add("/usr/local/bin/" + b)
    return out


DOCKERFILE_BINARIES = dockerfile_binaries(DOCKER_INS)


class Dockerfile(unittest.TestCase):
    def test_static(self):
        ins = DOCKER_INS
        first_from = [n for n, (i, _) in enumerate(ins) if i == "FROM"][0]
        global_args = {}
        for i, t in ins[:first_from]:
            self.assertEqual(i, "ARG", "only ARG may come before the first FROM, not %s" % i)
            name, _, default = t.partition("=")
            global_args[name] = default
        stages, stage_of = [], None
        for i, t in ins:
            if i == "FROM":
                m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", t, re.I)
                self.assertIsNotNone(m, t)
                image, name = m.group(1), m.group(2)
                v = re.fullmatch(r"\$\{?(\w+)\}?", image)
                if v:
                    self.assertIn(v.group(1), global_args, "FROM %s: no ARG before the first "
                                  "FROM declares it" % image)
                    image = global_args[v.group(1)]
                self.assertRegex(image, r"^[\w./-]+(:[\w.-]+)?(@sha256:[0-9a-f]{64})?$", image)
                pinned = "@sha256:" in image or (":" in image.split("/")[-1] and
                                                  not image.endswith(":latest"))
                self.assertTrue(pinned, "FROM %s: not pinned by a tag or a digest" % image)
                stage_of = {"name": name, "from": m.group(1), "ins": []}
                stages.append(stage_of)
            else:
                if stage_of is not None:
                    stage_of["ins"].append((i, t))
        self.assertGreaterEqual(len(stages), 2, "not multi-stage")
        self.assertNotIn("ADD", [i for i, _ in ins], "ADD (use COPY; fetch in a RUN)")
        names = []
        for st in stages:
            for i, t in st["ins"]:
                m = re.search(r"--from=(\S+)", t) if i == "COPY" else None
                if m:
                    self.assertIn(m.group(1), names, "COPY --from=%s: no earlier stage" % m.group(1))
            names.append(st["name"])
        build, final = stages[0], stages[-1]
        build_runs = " ".join(t for i, t in build["ins"] if i == "RUN")
        self.assertIn("./deploy/setup.sh", build_runs)
        self.assertIn("cmake --build", build_runs)
        self.assertEqual(final["from"], "${RUNTIME_IMAGE}")
        final_runs = " ".join(t for i, t in final["ins"] if i == "RUN")
        self.assertNotRegex(final_runs, r"apt-get|apt |dpkg|pip|curl|wget",
                            "the runtime stage installs or fetches something")
        users = [t for i, t in final["ins"] if i == "USER"]
        self.assertTrue(users, "the runtime stage has no USER")
        self.assertRegex(users[-1], r"^[1-9]\d*(:[1-9]\d*)?$", "USER must be a numeric non-root id")
        self.assertEqual(final["ins"][-1][0] in ("CMD", "ENTRYPOINT", "EXPOSE", "USER"), True)
        after_user = final["ins"][[n for n, (i, _) in enumerate(final["ins"]) if i == "USER"][-1]:]
        self.assertNotIn("RUN", [i for i, _ in after_user[1:]])
        for i, t in ins:
            if i == "RUN":
                if "apt-get install" in t:
                    self.assertIn("--no-install-recommends", t)
                self.assertNotIn("sudo ", t)
        self.assertEqual(len(DOCKERFILE_BINARIES), 4, DOCKERFILE_BINARIES)
        ignore = open(os.path.join(ROOT, ".dockerignore")).read().split()
        for must in (".git", "build", "build-*"):
            self.assertIn(must, ignore, ".dockerignore lacks %s" % must)


# ---- systemd -----------------------------------------------------------------------------

def unit_settings(path):
    out = {}
    for line in open(path):
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            k, _, v = line.partition("=")
            out.setdefault(k.strip(), []).append(v.strip())
    return out


UNITS = ("corral-router.service", "corral-replica@.service", "corral-scheduler.service")
HARDENING = ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
             "CapabilityBoundingSet=", "ProtectKernelTunables=yes", "ProtectKernelModules=yes",
             "ProtectControlGroups=yes", "RestrictNamespaces=yes", "RestrictSUIDSGID=yes",
             "LockPersonality=yes", "SystemCallArchitectures=native", "DynamicUser=yes")


class Systemd(unittest.TestCase):
    def test_units(self):
        sysd = os.path.join(ROOT, "deploy", "systemd")
        for u in UNITS:
            s = unit_settings(os.path.join(sysd, u))
            text = open(os.path.join(sysd, u)).read()
            self.assertEqual(s.get("KillSignal"), ["SIGTERM"], u)
            self.assertEqual(s.get("Restart"), ["on-failure"], u)
            for h in HARDENING:
                self.assertRegex(text, r"(?m)^%s$" % re.escape(h), "%s lacks %s" % (u, h))
            stop = int(s["TimeoutStopSec"][0])
            exec_start = s["ExecStart"][0].split()
            env = dict(e.split("=", 1) for e in s.get("Environment", []))
            drain = env.get("CORRAL_DRAIN_TIMEOUT_MS")
            if drain is None:   # the scheduler: drain of the replicas, then of the router
                cfg = json.load(open(os.path.join(ROOT, "deploy", "cluster.json")))
                per = cfg.get("rollout", {}).get("drain_timeout_ms", 30000) / 1000 + 10
                self.assertGreater(stop, 2 * per, "%s: TimeoutStopSec %d" % (u, stop))
            else:
                self.assertGreater(stop, int(drain) / 1000, "%s: TimeoutStopSec %d" % (u, stop))
            binary = build_binary(exec_start[0])
            assert_flags_known(self, binary, exec_start[1:], u)

    def test_systemd_analyze_verify(self):
        tool = shutil.which("systemd-analyze")
        self.assertIsNotNone(tool, "systemd-analyze is missing (Debian package systemd)")
        with tempfile.TemporaryDirectory() as tmp:
            names = []
            for u in UNITS:
                text = open(os.path.join(ROOT, "deploy", "systemd", u)).read()
                # The image's paths, /usr/local/bin/corral-*, become the build tree's.
                text = re.sub(r"/usr/local/bin/(corral-[a-z]+|corralctl)\b",
                              lambda m: build_binary(m.group(0)), text)
                with open(os.path.join(tmp, u), "w") as f:
                    f.write(text)
                names.append(u)
                if u.endswith("@.service"):   # a template is verified through an instance
                    inst = u.replace("@.", "@digits-0.")
                    with open(os.path.join(tmp, inst), "w") as f:
                        f.write(text)
                    names.append(inst)
            res = subprocess.run([tool, "verify"] + ["./" + n for n in names], cwd=tmp,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 timeout=60)
        complaints = [ln for ln in res.stdout.splitlines()
                      if any(n.split("@")[0] in ln for n in names)]
        self.assertEqual((res.returncode, complaints), (0, []), res.stdout)


# ---- the binaries, as the manifests run them ---------------------------------------------

def free_ports(n):
    """n distinct free ports (all held open until each is picked)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("0.0.0.0", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def get(port, path, timeout=2.0):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        return None, str(e)


def probe_ok(status):
    return status is not None and 200 <= status < 400   # the kubelet's httpGet success


def wait_probe(port, probe, what):
    """Polls a probe the way the kubelet does, for as long as the manifest allows."""
    budget = probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
    deadline = time.time() + min(budget, 60)
    path = probe["httpGet"]["path"]
    while True:
        status, body = get(port, path, probe.get("timeoutSeconds", 1) + 1)
        if probe_ok(status):
            return status, body
        if time.time() > deadline:
            raise AssertionError("%s: GET %s answered %s: %s" % (what, path, status, body[:300]))
        time.sleep(0.1)


class RunAsManifests(unittest.TestCase):
    def test_probes_answer(self):
        objs = CPU   # no GPU here: the CPU overlay's replica; the router is the same in both
        rep = one(objs, "Deployment", "digits-replica")
        rou = one(objs, "Deployment", "corral-router")
        rc = rep["spec"]["template"]["spec"]["containers"][0]
        oc = rou["spec"]["template"]["spec"]["containers"][0]
        wanted = sorted({p["containerPort"] for c in (rc, oc) for p in c["ports"]})
        ports = dict(zip(wanted, free_ports(len(wanted))))
        tmp = tempfile.mkdtemp(prefix="corral-k8s-")
        procs = []
        try:
            repo = os.path.join(tmp, "models")
            shutil.copytree(os.path.join(ROOT, "models", "digits"), os.path.join(repo, "digits"))
            mounts = {m["mountPath"]: repo for m in rc.get("volumeMounts", []) if m["name"] == "models"}

            def local(args):
                out = []
                for a in args:
                    a = mounts.get(a, a)
                    m = re.fullmatch(r"(.*?)(dns://)[a-z0-9.-]+\.svc\.cluster\.local:(\d+)", a)
                    if m:   # the Service's name: the one replica here, by address
                        a = "%s%s127.0.0.1:%d" % (m.group(1), m.group(2), ports[int(m.group(3))])
                    else:
                        m = re.fullmatch(r"(.*:)(\d+)", a)
                        if m and int(m.group(2)) in ports:
                            a = "%s%d" % (m.group(1), ports[int(m.group(2))])
                    out.append(a)
                return out

            rargs = local(final_args(objs, rc))
            print("replica:", " ".join(rargs), flush=True)
            replica = Proc([build_binary(rc["command"][0])] + rargs,
                           r"health endpoint listening", timeout=30)
            procs.append(replica)
            hport = ports[container_port(rc, rc["startupProbe"]["httpGet"]["port"])]
            status, body = wait_probe(hport, rc["startupProbe"], "replica startupProbe")
            print("replica startupProbe %s -> %s %s" % (rc["startupProbe"]["httpGet"]["path"],
                                                          status, body.strip()), flush=True)
            for probe in ("readinessProbe", "livenessProbe"):
                p = rc[probe]
                status, body = get(ports[container_port(rc, p["httpGet"]["port"])],
                                   p["httpGet"]["path"])
                self.assertTrue(probe_ok(status), "replica %s %s: %s %s" % (
                    probe, p["httpGet"]["path"], status, body))
            ann = rep["spec"]["template"]["metadata"]["annotations"]
            status, body = get(ports[int(ann["prometheus.io/port"])], ann["prometheus.io/path"])
            self.assertEqual(status, 200, body)
            # What the HorizontalPodAutoscaler example scales on is what a replica exports.
            for h in by_kind(EXAMPLES, "HorizontalPodAutoscaler"):
                for m in h["spec"]["metrics"]:
                    self.assertIn("\n%s{" % m["pods"]["metric"]["name"], body)

            oargs = local(final_args(objs, oc))
            print("router:", " ".join(oargs), flush=True)
            router = Proc([build_binary(oc["command"][0])] + oargs, r"listening on", timeout=30)
            procs.append(router)
            hport = ports[container_port(oc, oc["startupProbe"]["httpGet"]["port"])]
            wait_probe(hport, oc["startupProbe"], "router startupProbe")
            # Ready once it found the replica through dns:// and that said ready.
            env = container_env(objs, oc)
            p = oc["readinessProbe"]
            deadline = time.time() + int(env["CORRAL_DNS_REFRESH_MS"]) / 1000 + 10
            while True:
                status, body = get(ports[container_port(oc, p["httpGet"]["port"])],
                                   p["httpGet"]["path"])
                if probe_ok(status) or time.time() > deadline:
                    break
                time.sleep(0.1)
            self.assertTrue(probe_ok(status), "router readinessProbe %s: %s %s\n%s" % (
                p["httpGet"]["path"], status, body, router.output()))
            p = oc["livenessProbe"]
            status, body = get(ports[container_port(oc, p["httpGet"]["port"])], p["httpGet"]["path"])
            self.assertTrue(probe_ok(status), body)
            ann = rou["spec"]["template"]["metadata"]["annotations"]
            status, body = get(ports[int(ann["prometheus.io/port"])], ann["prometheus.io/path"])
            self.assertEqual(status, 200, body)
            self.assertIn("corral_router_requests_total", body)
            with open(os.path.join(ROOT, "models", "digits", "sample.json"), "rb") as f:
                req = urllib.request.Request(
                    "http://127.0.0.1:%d/v2/models/digits/infer" % ports[8000], data=f.read(),
                    headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                self.assertEqual(r.status, 200)

            # Termination as the kubelet does it, after the preStop sleep: SIGTERM; the
            # replica says not ready but live while it drains, and each exits 0 within
            # the grace period that is left.
            grace = rep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            sleep_s = rc["lifecycle"]["preStop"]["sleep"]["seconds"]
            replica.p.send_signal(signal.SIGTERM)
            t0 = time.time()
            rp = ports[container_port(rc, rc["readinessProbe"]["httpGet"]["port"])]
            seen = []
            while replica.p.poll() is None and time.time() - t0 < grace - sleep_s:
                seen.append((get(rp, rc["readinessProbe"]["httpGet"]["path"], 0.5)[0],
                             get(rp, rc["livenessProbe"]["httpGet"]["path"], 0.5)[0]))
                time.sleep(0.02)
            replica.p.wait(max(1, grace - sleep_s - (time.time() - t0)))
            self.assertEqual(replica.p.returncode, 0, replica.output())
            # Once not ready, never ready again; live (or gone) throughout.
            first = [n for n, (r, _) in enumerate(seen) if r is not None and r != 200]
            after = seen[first[0]:] if first else []
            self.assertTrue(all(r != 200 for r, _ in after), seen)
            self.assertTrue(all(lv in (200, None) for _, lv in seen), seen)
            print("replica drained and exited 0 in %.2f s; probes while draining "
                  "(ready, live): %s" % (time.time() - t0, sorted(set(seen), key=str)),
                  flush=True)
            router.p.send_signal(signal.SIGTERM)
            router.p.wait(grace - sleep_s)
            self.assertEqual(router.p.returncode, 0, router.output())
        finally:
            for p in procs:
                p.kill(signal.SIGKILL)
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    testrun.main(argv=sys.argv[3:])
