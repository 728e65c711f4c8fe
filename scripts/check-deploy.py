#!/usr/bin/env python3
"""scripts/check-deploy.py — checks deploy/'s manifests (make test-deploy runs it in the venv
scripts/test-deploy.sh makes, with kubernetes-validate and PyYAML):

  * every resource kustomization.yaml lists exists, every manifest beside it is listed, and each
    validates against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: an unknown
    or misspelt field fails) of each --k8s-version;
  * the manifests agree with quill's code, read from the tree: every QUILL_* variable they set
    is an option of config/config.c; probes hit routes that need no key (server/route.c); the
    HPA's metrics are gauges server/metrics.c exports; the container port is the image's
    QUILL_PORT; terminationGracePeriodSeconds (k8s) and stop_grace_period (compose) cover the
    preStop pause + --shutdown-timeout + quill's own close grace (server/signals.c).

Exits 1 with one line per problem.
"""
import argparse
import os
import re
import sys

import kubernetes_validate
import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
problems = []


def problem(where, msg):
    problems.append(f"{where}: {msg}")


def read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def load_all(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# ---- what the code says ----
def quill_options():
    """{name: default} of the options of config/config.c's table (k_opts) that `quill serve`
    reads from the environment."""
    src = read("config/config.c")
    macros = {m.group(1): m.group(2) for m in
              re.finditer(r"^#define (CMD_[A-Z]+) \((.*)\)$", src, re.M)}
    bits = {m.group(1): 1 << int(m.group(2)) for m in
            re.finditer(r"\b(QL_CMD_[A-Z]+) = 1 << (\d+)", read("config/config.h"))}

    def cmds(expr):
        for k, v in macros.items():
            expr = re.sub(rf"\b{k}\b", f"({v})", expr)
        return eval(re.sub(r"\bQL_CMD_[A-Z]+\b", lambda m: str(bits[m.group(0)]), expr),
                    {"__builtins__": {}})

    table = src[src.index("k_opts[]"):]
    table = table[:table.index("};")]
    opts = {}
    # {"name", 's', OPT_x, OFF(f), min, max, enums, default, cmds, flags, ...
    for m in re.finditer(r'\{"([a-z0-9-]+)",\s*(?:0|\'.\'),\s*OPT_\w+,\s*OFF\(\w+\),\s*[^,]+,'
                         r'\s*[^,]+,\s*(?:NULL|"[^"]*"),\s*(NULL|"[^"]*"),\s*([^,]+),\s*([^,]+),',
                         table):
        name, default, cmd_expr, flags = m.groups()
        if cmds(cmd_expr) & bits["QL_CMD_SERVE"] and "OPT_F_NOENV" not in flags:
            opts[name] = None if default == "NULL" else default.strip('"')
    if "shutdown-timeout" not in opts or "api-key" not in opts or "model" not in opts:
        sys.exit("check-deploy: could not read the option table of config/config.c")
    return opts


def env_name(opt):
    return "QUILL_" + opt.upper().replace("-", "_")


def open_routes():
    """Routes server/route.c serves without an API key."""
    routes = re.findall(r'\{"(/[^"]*)",\s*QL_ROUTE_\w+,\s*"\w+",\s*1\}', read("server/route.c"))
    if not routes:
        sys.exit("check-deploy: could not read the open routes of server/route.c")
    return set(routes)


def gauges():
    return set(re.findall(r'gauge\(&w,\s*"([^"]+)"', read("server/metrics.c")))


def close_grace_s():
    m = re.search(r"#define STOP_GRACE_NS \((\d+)ull \* 1000000000ull\)", read("server/signals.c"))
    if not m:
        sys.exit("check-deploy: could not read STOP_GRACE_NS in server/signals.c")
    return int(m.group(1))


def image_env():
    """ENV QUILL_*=... the Dockerfile's runtime stage sets."""
    return dict(re.findall(r"\b(QUILL_[A-Z_]+)=(\S+)", read("deploy/Dockerfile")))


OPTS = quill_options()
ENVS = {env_name(o) for o in OPTS} | {"QUILL_CONFIG"}


def check_env(where, names):
    for n in names:
        if n.startswith("QUILL_") and n not in ENVS:
            problem(where, f"{n} is not an option quill serve reads from the environment "
                           "(config/config.c)")


def shutdown_timeout(envs):
    return int(envs.get("QUILL_SHUTDOWN_TIMEOUT", OPTS["shutdown-timeout"]))


def duration_s(text):
    """Compose durations: 45s, 1m30s, 2m."""
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", str(text))
    if not m or not any(m.groups()):
        return None
    h, mi, s = (int(g or 0) for g in m.groups())
    return h * 3600 + mi * 60 + s


# ---- Kubernetes ----
def check_k8s(kdir, versions):
    kust_path = os.path.join(kdir, "kustomization.yaml")
    kust = load_all(kust_path)[0]
    listed = kust.get("resources", [])
    on_disk = sorted(f for f in os.listdir(kdir)
                     if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml")
    for f in on_disk:
        if f not in listed:
            problem(kust_path, f"{f} is not listed in resources")
    docs = []
    for f in listed:
        p = os.path.join(kdir, f)
        if not os.path.isfile(p):
            problem(kust_path, f"resource {f} does not exist")
            continue
        docs += [(p, d) for d in load_all(p)]
    # helper resources applied by hand (tools/): validated too, but not cross-checked
    tools = os.path.join(kdir, "tools")
    extra = []
    if os.path.isdir(tools):
        for f in sorted(os.listdir(tools)):
            extra += [(os.path.join(tools, f), d) for d in load_all(os.path.join(tools, f))]
    for p, d in docs + extra:
        for v in versions:
            try:
                kubernetes_validate.validate(d, v, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(x) for x in e.path)
                problem(p, f"{d.get('kind')} against Kubernetes {v}: {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problem(p, f"no schema: {e.message}")
    print(f"check-deploy: {kdir}: {len(docs) + len(extra)} resources checked against Kubernetes "
          f"{', '.join(versions)}")

    by_kind = {}
    for p, d in docs:
        by_kind.setdefault(d["kind"], []).append((p, d))
    img_env = image_env()
    routes = open_routes()
    for p, dep in by_kind.get("Deployment", []):
        spec = dep["spec"]["template"]["spec"]
        for c in spec["containers"]:
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            check_env(p, env)
            port = int(env.get("QUILL_PORT") or img_env.get("QUILL_PORT", OPTS["port"]))
            ports = {pt.get("name"): pt["containerPort"] for pt in c.get("ports", [])}
            if port not in ports.values():
                problem(p, f"container {c['name']} does not expose quill's port {port}")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                pr = c.get(probe)
                if not pr:
                    problem(p, f"container {c['name']} has no {probe}")
                    continue
                get = pr.get("httpGet", {})
                if get.get("path") not in routes:
                    problem(p, f"{probe} GET {get.get('path')}: not a route quill serves "
                               f"without a key ({', '.join(sorted(routes))})")
                if ports.get(get.get("port"), get.get("port")) != port:
                    problem(p, f"{probe} targets port {get.get('port')}, quill listens on {port}")
            if c["readinessProbe"]["httpGet"]["path"] != "/ready":
                problem(p, "readiness must follow /ready (503 while loading or draining)")
            gpus = c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
            if not gpus:
                problem(p, f"container {c['name']} does not request nvidia.com/gpu")
            # grace >= preStop pause + drain + quill's close grace
            pause = 0
            cmd = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            if len(cmd) == 2 and cmd[0] == "sleep":
                pause = int(cmd[1])
            elif not cmd:
                problem(p, "no preStop pause: new connections are refused before the endpoint "
                           "is removed everywhere")
            need = pause + shutdown_timeout(env) + close_grace_s()
            grace = spec.get("terminationGracePeriodSeconds", 30)
            if grace < need:
                problem(p, f"terminationGracePeriodSeconds {grace} < preStop {pause} + "
                           f"shutdown-timeout {shutdown_timeout(env)} + {close_grace_s()} = {need}")
    metrics = gauges()
    for p, hpa in by_kind.get("HorizontalPodAutoscaler", []):
        for m in hpa["spec"].get("metrics", []):
            if m["type"] == "Pods":
                name = m["pods"]["metric"]["name"]
                if name not in metrics:
                    problem(p, f"metric {name} is not a gauge of server/metrics.c")
        ref = hpa["spec"]["scaleTargetRef"]
        if not any(d["metadata"]["name"] == ref["name"] for _, d in by_kind.get(ref["kind"], [])):
            problem(p, f"scaleTargetRef {ref['kind']}/{ref['name']} is not among the resources")
    for kind in ("Service", "PodDisruptionBudget"):
        if kind not in by_kind:
            problem(kdir, f"no {kind}")
    dep_labels = [d["spec"]["template"]["metadata"]["labels"]
                  for _, d in by_kind.get("Deployment", [])]
    for p, d in by_kind.get("Service", []) + by_kind.get("PodDisruptionBudget", []):
        sel = d["spec"]["selector"]
        sel = sel.get("matchLabels", sel) if d["kind"] != "Service" else sel
        if not any(all(lab.get(k) == v for k, v in sel.items()) for lab in dep_labels):
            problem(p, f"{d['kind']} selector {sel} matches no Deployment's pods")
    # the monitoring rule and scrape config name the same metric and Secret
    mon = os.path.join(kdir, "monitoring")
    if os.path.isdir(mon):
        for f in sorted(os.listdir(mon)):
            for d in load_all(os.path.join(mon, f)):
                text = yaml.safe_dump(d)
                for name in re.findall(r"quill:[a-z_]+", text):
                    if name not in metrics:
                        problem(os.path.join(mon, f), f"{name} is not a gauge of server/metrics.c")


# ---- compose ----
def check_compose(path):
    doc = load_all(path)[0]
    for name, svc in doc["services"].items():
        where = f"{path}: service {name}"
        env = svc.get("environment", {})
        if isinstance(env, list):
            env = dict(e.split("=", 1) for e in env)
        check_env(where, env)
        grace = duration_s(svc.get("stop_grace_period", "10s"))
        need = shutdown_timeout(env) + close_grace_s()
        if grace is None or grace < need:
            problem(where, f"stop_grace_period {svc.get('stop_grace_period', '10s')} < "
                           f"shutdown-timeout + {close_grace_s()} s = {need} s")
        if not svc.get("restart"):
            problem(where, "no restart policy")
    example = os.path.join(os.path.dirname(path), "quill.env.example")
    if os.path.isfile(example):
        names = re.findall(r"^#?\s*(QUILL_[A-Z_]+)=", read(os.path.relpath(example, ROOT)), re.M)
        check_env(example, names)
    print(f"check-deploy: {path}: {len(doc['services'])} services agree with quill's options")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k8s-version", action="append", dest="versions",
                    help="Kubernetes version to validate against (repeatable; default 1.28.0 "
                         "and the newest kubernetes-validate knows)")
    ap.add_argument("--k8s", default=os.path.join(ROOT, "deploy/k8s"))
    ap.add_argument("--compose", default=os.path.join(ROOT, "deploy/compose.yaml"))
    a = ap.parse_args()
    versions = a.versions or ["1.28.0", kubernetes_validate.utils.latest_version()]
    check_k8s(a.k8s, versions)
    check_compose(a.compose)
    for p in problems:
        print(f"check-deploy: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
