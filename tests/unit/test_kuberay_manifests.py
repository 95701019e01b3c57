"""The KubeRay manifests in cluster/kuberay/ validate offline, and they describe the cluster the loop asks Ray for.

- Each manifest validates against KubeRay's own CRD schema (vendored in cluster/kuberay/crd-schemas/, see its README),
  made strict the way `kubeconform -strict` is: an object with declared properties accepts no others (the API server
  would silently prune a misspelt field).
- `serveConfigV2` loads into Ray Serve's own `ServeDeploySchema`; every path an entrypoint or a Serve app names exists
  in the image (the Dockerfile copies the repository to /home/ray/hsd-ray), and the job's arguments load as a Config.
- The pods' CPUs and GPUs hold every Ray resource bundle the loop reserves (learners, teachers, chat replicas,
  gatekeeper) for cluster/gpu.yaml, with no whole pod to spare.
- Ray token authentication is on in every manifest and in cluster/*.yaml.
"""

from __future__ import annotations

import ast
import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from hsd_ray.config import Config

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "cluster" / "kuberay"
IMAGE_ROOT = "/home/ray/hsd-ray"  # where cluster/kuberay/Dockerfile copies the repository
CRD_KINDS = ("RayCluster", "RayJob", "RayService")


def _manifests() -> dict[str, dict]:
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(KUBERAY.glob("*.yaml"))}


def _strict(node):
    """Close every object schema that lists its properties; OpenAPI's `nullable` becomes a null type."""
    if isinstance(node, list):
        return [_strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


_SCHEMAS: dict[str, dict] = {}


def _validator(kind: str) -> jsonschema.Draft7Validator:
    if kind not in _SCHEMAS:
        raw = json.loads((KUBERAY / "crd-schemas" / f"{kind.lower()}-v1.json").read_text())
        _SCHEMAS[kind] = _strict(raw)
    return jsonschema.Draft7Validator(_SCHEMAS[kind])


def _errors(doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in _validator(doc["kind"]).iter_errors(doc)]


def _cluster_spec(doc: dict) -> dict:
    return {"RayCluster": lambda d: d["spec"], "RayJob": lambda d: d["spec"]["rayClusterSpec"],
            "RayService": lambda d: d["spec"]["rayClusterConfig"]}[doc["kind"]](doc)


def _ray_docs() -> dict[str, dict]:
    return {name: doc for name, doc in _manifests().items() if doc.get("kind") in CRD_KINDS}


def test_every_kind_is_there_and_validates_against_the_kuberay_crd_schema():
    docs = _ray_docs()
    assert sorted(d["kind"] for d in docs.values()) == sorted(CRD_KINDS), docs.keys()
    for name, doc in docs.items():
        assert doc["apiVersion"] == "ray.io/v1", name
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), name
        assert _errors(doc) == [], name


def test_the_strict_schema_refuses_misspelt_and_mistyped_fields():
    doc = _ray_docs()["raycluster.yaml"]
    misspelt = copy.deepcopy(doc)
    misspelt["spec"]["workerGroupSpec"] = misspelt["spec"].pop("workerGroupSpecs")
    assert any("workerGroupSpec" in e for e in _errors(misspelt))
    bad_mode = copy.deepcopy(doc)
    bad_mode["spec"]["authOptions"]["mode"] = "password"
    assert any("authOptions/mode" in e for e in _errors(bad_mode))
    no_group_name = copy.deepcopy(doc)
    del no_group_name["spec"]["workerGroupSpecs"][0]["groupName"]
    assert any("groupName" in e for e in _errors(no_group_name))


def test_the_rayjob_runs_on_the_same_cluster_as_the_raycluster():
    docs = _ray_docs()
    assert docs["rayjob.yaml"]["spec"]["rayClusterSpec"] == docs["raycluster.yaml"]["spec"]


def test_serve_config_loads_into_rays_serve_schema_and_names_what_exists():
    from ray.serve.schema import ServeDeploySchema

    serve_cfg = yaml.safe_load(_ray_docs()["rayservice.yaml"]["spec"]["serveConfigV2"])
    schema = ServeDeploySchema.parse_obj(serve_cfg)
    assert schema.http_options.host == "0.0.0.0"  # inside the pod; the Service in front of it is ClusterIP
    (app,) = schema.applications
    module, attr = app.import_path.split(":")
    source = ROOT / f"{module.replace('.', '/')}.py"
    assert source.is_file(), app.import_path
    assigned = {t.id for node in ast.parse(source.read_text()).body if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Name)}
    assert attr in assigned, f"{source} defines no top-level {attr!r}"
    env = app.runtime_env["env_vars"]
    cfg = Config.load(_in_repo(env["HSD_RAY_CONFIG"]), env.get("HSD_RAY_OVERRIDES", "").split())
    assert _serve_bundles(cfg)  # and the RayService's pods hold them: test_pods_hold_every_bundle_the_loop_reserves


def test_the_rayjob_entrypoint_names_files_that_exist_and_arguments_that_load():
    cfg = _job_config(_ray_docs()["rayjob.yaml"]["spec"]["entrypoint"])
    assert cfg.job.max_steps or cfg.job.duration_s, "a RayJob must end by itself"
    assert cfg.serve.host == "0.0.0.0", "inside the pod the chat service must listen beyond localhost"
    assert cfg.engine.kind == "vllm" and cfg.learner.use_gpu


def test_the_image_puts_the_repository_where_the_manifests_look_for_it():
    dockerfile = (KUBERAY / "Dockerfile").read_text()
    assert re.search(rf"^COPY\b.*\s\.\s+{re.escape(IMAGE_ROOT)}\s*$", dockerfile, re.M), dockerfile
    assert re.search(r'pip install[^\n]*"\.\[gpu\]"', dockerfile), "the image installs the gpu extra"
    ray_pin = re.search(r'"ray\[[^]]*\]==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert f"FROM rayproject/ray:{ray_pin}-" in dockerfile
    images = {c["image"] for doc in _ray_docs().values() for c in _containers(_cluster_spec(doc))}
    assert len(images) == 1, images
    for doc in _ray_docs().values():
        assert _cluster_spec(doc)["rayVersion"] == ray_pin


def test_pods_hold_every_bundle_the_loop_reserves():
    """First-fit-decreasing packing of the loop's bundles into the pods (Ray places each bundle on one node)."""
    docs = _ray_docs()
    job_cfg = _job_config(docs["rayjob.yaml"]["spec"]["entrypoint"])
    env = yaml.safe_load(docs["rayservice.yaml"]["spec"]["serveConfigV2"])["applications"][0]["runtime_env"]
    serve_cfg = Config.load(_in_repo(env["env_vars"]["HSD_RAY_CONFIG"]))
    for name, bundles in (("raycluster.yaml", _loop_bundles(job_cfg)), ("rayjob.yaml", _loop_bundles(job_cfg)),
                          ("rayservice.yaml", _serve_bundles(serve_cfg))):
        nodes = _nodes(_cluster_spec(docs[name]))
        assert _packs(bundles, nodes), f"{name}: {bundles} do not fit {nodes}"
        gpu_pods = [n for n in nodes if n["GPU"] > 0]
        spare = [n for n in nodes if n is not gpu_pods[-1]]
        assert not _packs(bundles, spare), f"{name}: a whole GPU pod is spare"


def test_gpu_sharing_fits_vllm_memory():
    """Engines that share a GPU (fractional GPU bundles) must fit their vLLM memory fractions on it."""
    cfg = Config.load(ROOT / "cluster" / "gpu.yaml")
    for gpus in (cfg.teacher.gpus_per_worker, cfg.serve.gpus_per_replica, cfg.version_gate.gpus):
        if 0 < gpus < 1:
            assert int(1 / gpus) * cfg.engine.vllm_gpu_memory_utilization <= 0.95, gpus


def test_token_authentication_everywhere():
    for name, doc in _ray_docs().items():
        assert _cluster_spec(doc)["authOptions"]["mode"] == "token", name
        for container in _containers(_cluster_spec(doc)):
            names = {e["name"] for e in container.get("env", [])}
            assert not names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}, f"{name}: KubeRay sets these from authOptions"
    for path in sorted((ROOT / "cluster").glob("*.yaml")):
        assert Config.load(path).ray.auth_mode == "token", path


def test_every_pod_mounts_the_shared_storage_the_config_writes_to():
    docs = _manifests()
    claim = docs["storage.yaml"]
    assert claim["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in claim["spec"]["accessModes"]
    output_dir = Config.load(ROOT / "cluster" / "gpu.yaml").job.output_dir
    for name, doc in _ray_docs().items():
        spec = _cluster_spec(doc)
        for template in [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]:
            volumes = {v["name"]: v for v in template["spec"]["volumes"]}
            for container in template["spec"]["containers"]:
                (mount,) = container["volumeMounts"]
                volume = volumes[mount["name"]]
                assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"], name
                assert output_dir.startswith(mount["mountPath"] + "/"), (name, output_dir)
                cache = {e["name"]: e.get("value") for e in container["env"]}["HSD_RAY_MODEL_CACHE"]
                assert cache.startswith(mount["mountPath"] + "/"), name


# ---- helpers -------------------------------------------------------------------------------------------------


def _in_repo(path: str) -> Path:
    assert path.startswith(IMAGE_ROOT + "/"), f"{path} is not inside the image's copy of the repository"
    local = ROOT / path[len(IMAGE_ROOT) + 1:]
    assert local.exists(), f"{path} names {local}, which does not exist"
    return local


def _job_config(entrypoint: str) -> Config:
    """train_job.py's own reading of the entrypoint's arguments (every path it names must exist)."""
    argv = shlex.split(entrypoint)
    assert argv[0] == "python" and _in_repo(argv[1]).name == "train_job.py", argv
    args, overrides = argv[2:], []
    config = None
    while args:
        arg = args.pop(0)
        if arg == "--config":
            config = _in_repo(args.pop(0))
        elif arg in ("--max-steps", "--duration"):
            key = {"--max-steps": "job.max_steps", "--duration": "job.duration_s"}[arg]
            overrides.append(f"{key}={args.pop(0)}")
        else:
            overrides.append(arg)
    assert config is not None, "the RayJob names its config file"
    return Config.load(config, overrides)


def _serve_bundles(cfg: Config) -> list[dict]:
    return [{"CPU": cfg.serve.cpus_per_replica, "GPU": cfg.serve.gpus_per_replica}] * cfg.serve.replicas


def _loop_bundles(cfg: Config) -> list[dict]:
    """What the loop reserves: Train workers (learner.py), teachers (job.py), replicas (serve.py), gatekeeper."""
    learner = {"CPU": cfg.learner.cpus_per_worker, "GPU": 1.0 if cfg.learner.use_gpu else 0.0}
    teacher = {"CPU": cfg.teacher.cpus_per_worker, "GPU": cfg.teacher.gpus_per_worker}
    gate = [{"CPU": cfg.version_gate.cpus, "GPU": cfg.version_gate.gpus}] if cfg.version_gate.enabled else []
    return [learner] * cfg.learner.num_workers + [teacher] * cfg.teacher.num_workers + _serve_bundles(cfg) + gate


def _containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def _nodes(spec: dict) -> list[dict]:
    """Ray's view of each pod: CPUs from rayStartParams num-cpus or the container's limit, GPUs from its limit."""
    nodes = []
    for group, count in [(spec["headGroupSpec"], 1), *((g, g["replicas"]) for g in spec.get("workerGroupSpecs", []))]:
        (container,) = [c for c in group["template"]["spec"]["containers"] if c["name"].startswith("ray-")]
        res = container["resources"]
        assert res["requests"] == res["limits"], f"{group.get('groupName', 'head')}: requests differ from limits"
        params = group.get("rayStartParams", {})
        cpu = float(params.get("num-cpus", res["limits"]["cpu"]))
        gpu = float(params.get("num-gpus", res["limits"].get("nvidia.com/gpu", 0)))
        if "groupName" in group:
            assert group["minReplicas"] <= count <= group["maxReplicas"]
        nodes += [{"CPU": cpu, "GPU": gpu} for _ in range(count)]
    return nodes


def _packs(bundles: list[dict], nodes: list[dict]) -> bool:
    free = [dict(n) for n in nodes]
    for b in sorted(bundles, key=lambda b: (b["GPU"], b["CPU"]), reverse=True):
        node = next((n for n in free if n["CPU"] >= b["CPU"] - 1e-9 and n["GPU"] >= b["GPU"] - 1e-9), None)
        if node is None:
            return False
        node["CPU"] -= b["CPU"]
        node["GPU"] -= b["GPU"]
    return True
