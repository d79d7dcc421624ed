"""cluster/ deploys as shipped: the launcher YAML passes the schema Ray ships for it, the KubeRay manifests have
their groups, GPUs and shared volume, the RayJob's steps are real `rayalign` commands over shipped recipes, one
image name is used everywhere, and the Grafana dashboard queries only rayalign's metric series. Nothing starts."""

import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import typer.main
import yaml

from rayalign.cli import app
from rayalign.config_io import load_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"

# rayalign's ray.util.metrics series (rayalign/metrics.RoleGauges) and the Serve queue Ray Serve records
# itself: name -> (kind, tag keys). Ray's exporter names them ray_<name>, a counter
# ray_<name>_total, and turns each tag key into a label (ray/_private/telemetry/open_telemetry_metric_recorder.py).
METRICS = {
    "rayalign_phase_seconds": ("gauge", {"run", "role", "phase"}),
    "rayalign_tokens_per_second": ("gauge", {"run", "role"}),
    "rayalign_samples_per_second": ("gauge", {"run", "role"}),
    "rayalign_reward_mean": ("gauge", {"run"}),
    "rayalign_mismatch_kl": ("gauge", {"run"}),
    "rayalign_sync_seconds": ("gauge", {"run"}),
    "rayalign_restarts": ("counter", {"run", "role"}),
    "serve_deployment_queued_queries": ("gauge", {"deployment", "application", "handle", "actor_id"}),  # Serve's own
}
EXPORTED = {f"ray_{name}" + ("_total" if kind == "counter" else ""): tags for name, (kind, tags) in METRICS.items()}


def _yaml(name):
    return yaml.safe_load((CLUSTER / name).read_text())


def _launcher_schema():
    import ray.autoscaler  # the package only: importing it starts nothing

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def _image_tag():
    """The tag the Dockerfile's build command gives (its first `docker build ... -t TAG`)."""
    return re.search(r"docker build .*?-t (\S+)", (CLUSTER / "Dockerfile").read_text()).group(1)


def _pods(spec):
    return [spec["headGroupSpec"]] + spec["workerGroupSpecs"]


def _container(group):
    return group["template"]["spec"]["containers"][0]


def test_launcher_yaml_passes_rays_schema_and_checks():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _yaml("ray-cluster.yaml")
    jsonschema.validate(cfg, _launcher_schema())
    validate_config(prepare_config(copy.deepcopy(cfg)))  # what `ray up` runs: defaults merged, then checked
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    workers = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert any(t["resources"].get("GPU", 0) > 0 for t in workers), "a GPU worker type"
    assert any(t["resources"].get("CPU", 0) > 0 and not t["resources"].get("GPU") for t in workers), "a CPU type"
    assert any("rayalign[gpu]" in c for c in cfg["setup_commands"])


@pytest.mark.parametrize("breakage", ["unknown top-level key", "GPU count as text", "unknown docker key",
                                      "node type without node_config"])
def test_the_schema_check_catches_a_broken_launcher_yaml(breakage):
    cfg = _yaml("ray-cluster.yaml")
    gpu = next(t for t in cfg["available_node_types"].values() if t["resources"].get("GPU"))
    if breakage == "unknown top-level key":
        cfg["setup_comands"] = cfg.pop("setup_commands")
    elif breakage == "GPU count as text":
        gpu["resources"]["GPU"] = "4"
    elif breakage == "unknown docker key":
        cfg["docker"]["imgae"] = cfg["docker"]["image"]
    else:
        del gpu["node_config"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cfg, _launcher_schema())


def test_one_image_everywhere_built_on_the_pinned_ray():
    tag = _image_tag()
    ray_pin = re.search(r'"ray\[[^\]]*\]==([\d.]+)\.\*"', (ROOT / "pyproject.toml").read_text()).group(1)
    base = re.search(r"^ARG BASE=(\S+)", (CLUSTER / "Dockerfile").read_text(), re.MULTILINE).group(1)
    assert base.startswith(f"rayproject/ray:{ray_pin}.") and "-py311-" in base
    assert _yaml("ray-cluster.yaml")["docker"]["image"] == tag
    for name, spec in [("raycluster", _yaml("kuberay/raycluster.yaml")["spec"]),
                       ("rayjob", _yaml("kuberay/rayjob.yaml")["spec"]["rayClusterSpec"])]:
        assert spec["rayVersion"].startswith(ray_pin + "."), name
        assert {_container(g)["image"] for g in _pods(spec)} == {tag}, name
    assert tag in (CLUSTER / "README.md").read_text()


def test_raycluster_has_head_cpu_and_gpu_groups_on_the_shared_claim():
    claim = _yaml("kuberay/storage.yaml")
    assert claim["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in claim["spec"]["accessModes"]
    cluster = _yaml("kuberay/raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"], cluster["metadata"]["name"]) == ("ray.io/v1", "RayCluster",
                                                                                     "rayalign")
    spec = cluster["spec"]
    assert "rayStartParams" in spec["headGroupSpec"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu = _container(groups["gpu"])["resources"]
    assert int(gpu["limits"]["nvidia.com/gpu"]) >= 1 and gpu["requests"] == gpu["limits"]
    assert "nvidia.com/gpu" not in _container(groups["cpu"])["resources"]["limits"]
    for group in _pods(spec):
        volumes = {v["name"]: v for v in group["template"]["spec"]["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in _container(group)["volumeMounts"]}
        assert volumes[mounts["/mnt/shared"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


def test_rayjob_runs_on_the_rayclusters_spec():
    job = _yaml("kuberay/rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob") and job["metadata"]["name"]
    assert job["spec"]["rayClusterSpec"] == _yaml("kuberay/raycluster.yaml")["spec"]


def _steps(entrypoint):
    """`bash -c 'set -e; cd DIR; [test -f|-d PATH ||] rayalign ...; ...'` -> (DIR, [(guard path, argv)])."""
    shell, flag, script = shlex.split(entrypoint)
    assert (shell, flag) == ("bash", "-c")
    lines = [s.strip() for s in script.split(";") if s.strip()]
    assert lines[0] == "set -e" and lines[1].startswith("cd ")
    steps = []
    for line in lines[2:]:
        guard, _, command = line.rpartition("||")
        guard = shlex.split(guard)
        assert not guard or guard[:2] in (["test", "-f"], ["test", "-d"]), line
        steps.append((guard[2] if guard else None, shlex.split(command)))
    return lines[1][3:], steps


def test_rayjob_steps_are_rayalign_commands_over_shipped_recipes():
    """Each step parses as a real CLI subcommand; each recipe exists in the image's copy of this repo and loads;
    every file or model directory a step reads is made by an earlier step; the last step is GRPO."""
    job = _yaml("kuberay/rayjob.yaml")
    workdir = re.search(r"^WORKDIR (\S+)", (CLUSTER / "Dockerfile").read_text(), re.MULTILINE).group(1)
    cwd, steps = _steps(job["spec"]["entrypoint"])
    assert cwd == "/mnt/shared"
    cli, made, trainers = typer.main.get_command(app), set(), []
    for guard, argv in steps:
        assert argv[0] == "rayalign", argv
        command, rest = cli.commands.get(argv[1]), argv[2:]
        if argv[1] == "data":
            command, rest = command.commands.get(argv[2]), argv[3:]
        assert command is not None, f"not a rayalign command: {shlex.join(argv)}"
        ctx = command.make_context(" ".join(argv[:3]), list(rest))
        if argv[1] == "data":
            out = str(ctx.params["out"])
        else:
            recipe = Path(ctx.params["config"])
            assert recipe.is_relative_to(workdir), recipe
            flags = ["--training.resume", "auto"] if ctx.params["resume"] else []
            cfg = load_config(ROOT / recipe.relative_to(workdir), ctx.args + flags)
            splits = [s for s in (cfg.data.train, cfg.data.eval) if s is not None]
            assert {d.path for s in splits for d in s.datasets} <= made, f"{recipe}: data not made before"
            assert cfg.model.name_or_path.count("/") == 1 or cfg.model.name_or_path in made, recipe
            out = f"{cfg.training.output_dir}/final"
            trainers.append(cfg.trainer)
        assert guard in (None, out), f"the step's guard {guard} is not its output {out}"
        made.add(out)
    assert trainers[-1] == "grpo"


def _queries(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            else:
                yield from _queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from _queries(item)


def test_dashboard_queries_only_rayalign_series_with_their_labels():
    dash = json.loads((CLUSTER / "grafana/rayalign-dashboard.json").read_text())
    assert {v["name"] for v in dash["templating"]["list"]} >= {"datasource", "run", "role"}
    assert any(p.get("repeat") == "role" for p in dash["panels"])
    used = set()
    for query in _queries(dash):
        names = set(re.findall(r"\b(?:ray_)?(?:rayalign|serve)_\w+", query))
        assert names and names <= set(EXPORTED), f"unknown series in {query}"
        used |= names
        labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", query))
        for group in re.findall(r"\bby\s*\(([^)]*)\)", query) + re.findall(r",\s*(\w+)\)\s*$", query):
            labels |= {label.strip() for label in group.split(",")}
        for name in names:
            assert labels <= EXPORTED[name], f"{query}: {labels - EXPORTED[name]} is not a label of {name}"
    assert used == set(EXPORTED), f"series without a panel: {set(EXPORTED) - used}"
    readme = (CLUSTER / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in EXPORTED)


def test_the_dashboards_series_are_the_ones_rayalign_records():
    source = (ROOT / "rayalign" / "metrics.py").read_text()
    recorded = set(re.findall(r'(?:Gauge|Counter)\("(rayalign_\w+)"', source))
    assert recorded == {name for name in METRICS if name.startswith("rayalign_")}
    assert 'Counter("rayalign_restarts"' in source and METRICS["rayalign_restarts"][0] == "counter"
