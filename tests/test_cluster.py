"""The cluster files, tested: cluster/aws.yaml against Ray's own schema and validate_config, the KubeRay
manifests through Ray's own KubeRay reader (and against the KubeRay v1 CRD schemas when they are given), the
RayJob's cluster equal to the RayCluster, and the GPU configs fitting the GPUs those files name (per-actor and
per-worker memory estimates, step_ray/utils/memory.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from step_ray.config import load_config
from step_ray.utils import memory

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
GIB = memory.GIB


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def aws() -> dict:
    return _yaml(CLUSTER / "aws.yaml")


@pytest.fixture(scope="module")
def raycluster() -> dict:
    return _yaml(KUBERAY / "raycluster.yaml")


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return _yaml(KUBERAY / "rayjob.yaml")


# ------------------------------------------------------------------------------------------------ the files


def test_aws_launcher_config_passes_rays_schema_and_validation(aws):
    from ray.autoscaler._private.util import prepare_config, validate_config

    # What `ray up` does before it talks to AWS: fill in the defaults, then Ray's ray-schema.json and its own
    # cross-field checks.
    prepared = prepare_config(copy.deepcopy(aws))
    validate_config(prepared)
    assert prepared["available_node_types"].keys() == aws["available_node_types"].keys()
    assert aws["head_node_type"] in aws["available_node_types"]
    head = aws["available_node_types"][aws["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert any("--dashboard-host=127.0.0.1" in c for c in aws["head_start_ray_commands"])


def test_rayjob_runs_exactly_the_raycluster_spec(raycluster, rayjob):
    """rayjob.yaml carries a copy of raycluster.yaml's spec (a RayJob creates its own cluster): they must not
    drift apart."""
    assert rayjob["spec"]["rayClusterSpec"] == raycluster["spec"]


def test_rayjob_runtime_env_is_the_job_runtime_env(rayjob):
    env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    assert env.pop("working_dir") == "/home/ray/step-ray"
    assert env == _yaml(ROOT / "jobs" / "runtime_env.yaml")


def test_kuberay_manifests_read_by_rays_own_kuberay_autoscaler(raycluster, rayjob):
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    for spec in (raycluster["spec"], rayjob["spec"]["rayClusterSpec"]):
        assert spec["autoscalerOptions"]["version"] == "v2"  # explicit: the operator sets restartPolicy Never
        assert spec["enableInTreeAutoscaling"] is True
        assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
        cr = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "step-ray", "namespace": "default"},
              "spec": spec}
        config = _derive_autoscaling_config_from_ray_cr(cr)  # what the autoscaler sidecar reads the CR into
        types = config["available_node_types"]
        assert types["gpu"]["resources"]["GPU"] == 1 and types["gpu"]["resources"]["CPU"] == 7
        assert types["headgroup"]["resources"]["CPU"] == 0
        assert "GPU" not in types["cpu"]["resources"]


def _schema_errors(value, schema: dict, path: str = "") -> list[str]:
    """Fields the CRD does not know (the API server drops them silently, or rejects them with strict
    validation), on top of jsonschema's type / enum / required checks."""
    errors = []
    if isinstance(value, dict) and schema.get("type") == "object" and "properties" in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        for key, sub in value.items():
            if key not in schema["properties"]:
                errors.append(f"{path}.{key}: unknown field")
            else:
                errors += _schema_errors(sub, schema["properties"][key], f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += _schema_errors(item, schema["items"], f"{path}[{i}]")
    return errors


CRDS = ROOT / "tests" / "data" / "kuberay"  # KubeRay v1.1.0's CRDs, gzipped (tests/data/README.md)


@pytest.mark.parametrize("manifest, crd", [("raycluster.yaml", "ray.io_rayclusters.yaml"),
                                           ("rayjob.yaml", "ray.io_rayjobs.yaml")])
def test_kuberay_manifests_against_the_v1_crd_schemas(manifest, crd):
    import gzip

    import jsonschema

    definition = yaml.safe_load(gzip.decompress((CRDS / f"{crd}.gz").read_bytes()))
    version = next(v for v in definition["spec"]["versions"] if v["name"] == "v1")
    schema = version["schema"]["openAPIV3Schema"]
    doc = _yaml(KUBERAY / manifest)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == definition["spec"]["names"]["kind"]
    jsonschema.validate(doc, schema)
    assert _schema_errors(doc, schema) == []


# ------------------------------------------------------------------------------------------------ memory


def test_memory_estimate_by_hand():
    """A small shape whose figures can be checked on paper: 1e9 parameters, LoRA r=8 on q_proj only."""
    shape = memory.ModelShape(params=1e9, vision_params=1e8, hidden=1024, intermediate=4096, layers=10, vocab=1000,
                              kv_heads=8, head_dim=128)
    cfg = load_config(None, ["train.num_workers=4", "train.use_gpu=true", "train.precision=bf16",
                             "train.zero_stage=2", "train.lora.r=8", "train.lora.target_modules=[q_proj]",
                             "train.batch_size=1", "model.max_length=1000", "train.gradient_checkpointing=false"])
    est = memory.training_worker(cfg, shape).parts
    lora = 10 * 8 * (1024 + 1024)
    assert est["weights"] == 2e9  # bf16, replicated under ZeRO-2
    assert est["trainable"] == 2 * lora
    assert est["optimizer"] == pytest.approx(12 * lora / 4) and est["gradients"] == pytest.approx(4 * lora / 4)
    tokens = 1 * 2 * 1000  # multitask: answer + rationale sequences
    assert est["activations"] == tokens * 10 * 2 * (8 * 1024 + 3 * 4096)
    assert est["logits"] == tokens * 1000 * 10
    ckpt = memory.training_worker(load_config(None, ["train.gradient_checkpointing=true", "train.num_workers=4",
                                                     "train.zero_stage=3", "train.precision=bf16",
                                                     "model.max_length=1000", "train.batch_size=1"]), shape).parts
    assert ckpt["activations"] < est["activations"] / 4
    assert ckpt["weights"] == pytest.approx(2e9 / 4 + 2 * (0.9e9 / 10) * 2)  # partitioned + two gathered layers


def _cluster_gpus() -> dict[str, tuple[str, int]]:
    """GPU worker type -> (accelerator, GPUs per node), read from the shipped cluster files."""
    aws = _yaml(CLUSTER / "aws.yaml")
    found = {}
    for name, node in aws["available_node_types"].items():
        instance = node["node_config"]["InstanceType"]
        if instance in memory.INSTANCE_GPUS:
            found[f"aws:{name}"] = memory.INSTANCE_GPUS[instance]
    for group in _yaml(KUBERAY / "raycluster.yaml")["spec"]["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        if "nvidia.com/gpu" in limits:
            gpu = group["template"]["metadata"]["annotations"]["step-ray.io/gpu"]
            found[f"kuberay:{group['groupName']}"] = (gpu, int(limits["nvidia.com/gpu"]))
    return found


def test_cluster_config_fits_the_gpus_of_the_cluster_files(capsys):
    """configs/cluster_gpu.yaml on the shipped clusters: every perception actor (as many as Ray packs on a GPU)
    and every training worker within the GPU's memory, the workers' accelerator type the clusters' own, the
    GPU node count enough for the training workers."""
    cfg = load_config(ROOT / "configs" / "cluster_gpu.yaml")
    gpus = _cluster_gpus()
    assert set(gpus) == {"aws:ray.worker.gpu", "kuberay:gpu"}
    per_actor = memory.perception_actor(cfg)
    packed = memory.actors_per_gpu(cfg.perception.pool.num_gpus)
    worker = memory.training_worker(cfg)
    aws = _yaml(CLUSTER / "aws.yaml")
    for where, (gpu, count) in gpus.items():
        budget = memory.gpu_memory_bytes(gpu)
        assert packed * per_actor.total <= budget, f"{where} {gpu}: {packed} x {per_actor.describe()}"
        assert worker.total <= budget, f"{where} {gpu}: training worker {worker.describe()}"
        assert cfg.train.accelerator_type == gpu
    assert aws["available_node_types"]["ray.worker.gpu"]["max_workers"] >= cfg.train.num_workers
    gpu_group = next(g for g in _yaml(KUBERAY / "raycluster.yaml")["spec"]["workerGroupSpecs"]
                     if g["groupName"] == "gpu")
    assert gpu_group["maxReplicas"] >= cfg.train.num_workers
    # CPUs: a training worker (and the perception actors packed on a GPU) fit a node's CPUs (7 in a pod).
    assert cfg.train.cpus_per_worker <= 7 and packed * cfg.perception.pool.num_cpus <= 7
    with capsys.disabled():
        print(f"\n  cluster_gpu.yaml on A10G 24 GiB: perception actor {per_actor.describe()} (x{packed} per GPU); "
              f"training worker {worker.describe()}")


@pytest.mark.parametrize("name", ["gpu_qwen25vl_7b_lora_zero3.yaml", "gpu_qwen25vl_7b_full_offload.yaml"])
def test_training_configs_fit_the_gpu_they_name(name, capsys):
    cfg = load_config(ROOT / "configs" / name)
    assert cfg.train.accelerator_type in memory.GPU_MEMORY_GIB, "a GPU config names the accelerator it is sized for"
    worker = memory.training_worker(cfg)
    assert worker.total <= memory.gpu_memory_bytes(cfg.train.accelerator_type), worker.describe()
    assert cfg.train.gradient_checkpointing and cfg.train.zero_stage == 3
    with capsys.disabled():
        print(f"\n  {name} on {cfg.train.accelerator_type}: training worker {worker.describe()}")


def test_the_old_cluster_config_would_not_have_fit():
    """The control: the settings this file shipped with before (two 7B parsers per GPU, batch 2 without
    gradient checkpointing) exceed a 24 GiB A10G by the same estimate."""
    cfg = load_config(ROOT / "configs" / "cluster_gpu.yaml", [
        "perception.pool.num_gpus=0.5", "train.gradient_checkpointing=false", "train.batch_size=2"])
    budget = memory.gpu_memory_bytes("A10G")
    assert memory.actors_per_gpu(0.5) * memory.perception_actor(cfg).total > budget
    assert memory.training_worker(cfg).total > budget
