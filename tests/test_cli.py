"""What users meet around a run, without Ray: --version, `config`, overrides anywhere, exit codes, config ranges
and duplicated keys, manifest ids that cannot leave the output folder, output locations checked before work,
bad QRA files, the stream order as a pure function, progress bars only on terminals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from step_ray.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "step_ray.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=environ, timeout=300)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


# ------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("override, field", [
    ("train.lr=.inf", "train.lr"),
    ("video.sample_fps=.inf", "video.sample_fps"),
    ("video.sample_fps=.nan", "video.sample_fps"),
    ("train.weight_decay=-1", "train.weight_decay"),
    ("train.lora.alpha=0", "train.lora.alpha"),
    ("perception.min_area=-1", "perception.min_area"),
    ("train.warmup_steps=-5", "train.warmup_steps"),
    ("run.seed=-1", "run.seed"),
    ("perception.pool.num_gpus=1.5", "perception.pool.num_gpus"),
    ("perception.pool.max_retries=-1", "perception.pool.max_retries"),
    ("stsg.motion_min_px_per_s=-2", "stsg.motion_min_px_per_s"),
])
def test_values_out_of_range_name_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value).startswith(field + ":")


def test_duplicated_yaml_keys_are_an_error(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  steps: 3\nrun:\n  seed: 1\ntrain:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"^--config: .*c.yaml: key 'train' appears twice .*lines 1 and 5"):
        load_config(f)
    f.write_text("train:\n  steps: 3\n  steps: 4\n")
    with pytest.raises(ConfigError, match="key 'steps' appears twice"):
        load_config(f)


def test_every_shipped_config_loads():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        load_config(path)


# ------------------------------------------------------------------------------------------------ the CLI


def test_version_and_resolved_config(tmp_path):
    from step_ray import __version__

    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"step-ray {__version__}" and __version__ != "unknown"
    proc = cli("config", "--config", str(ROOT / "configs" / "demo.yaml"), "train.steps=7", "run.seed=3")
    assert proc.returncode == 0, proc.stderr
    printed = tmp_path / "resolved.yaml"
    printed.write_text(proc.stdout)
    cfg = load_config(printed)  # the output is itself a valid config, with the overrides applied
    assert cfg == load_config(ROOT / "configs" / "demo.yaml", ["train.steps=7", "run.seed=3"])
    assert cfg.train.steps == 7 and proc.stdout.startswith("# step-ray ")


def test_overrides_anywhere_never_taken_as_inputs(tmp_path):
    from step_ray.cli import build_parser, split_overrides

    rest, overrides = split_overrides(["self-train", "--input", "/v", "a.mp4", "train.steps=5", "./x.y=z.mp4",
                                       "--no-ray", "qra.pool.max_size=3"])
    args = build_parser().parse_args(rest)
    assert args.input == ["/v", "a.mp4", "./x.y=z.mp4"] and overrides == ["train.steps=5", "qra.pool.max_size=3"]
    # Through the real CLI: the override after --input is applied (and refused here: a bad value), not read as a
    # path; an unknown section is named as such.
    proc = cli("self-train", "--input", str(tmp_path), "train.steps=0", "--no-ray")
    assert proc.returncode == 2 and one_error_line(proc).startswith("step-ray: error: train.steps:")
    proc = cli("stsg", "--input", str(tmp_path), "nosection.x=1", "--output", str(tmp_path / "o"))
    assert proc.returncode == 2 and one_error_line(proc).startswith("step-ray: error: nosection:")
    proc = cli("fields", "train.steps=3")
    assert proc.returncode == 2 and "takes no config overrides" in proc.stderr


def test_output_checked_before_any_work(tmp_path, real_video):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for output in (a_file, a_file / "below"):
        proc = cli("stsg", "--input", str(real_video), "--output", str(output), "--no-ray")
        assert proc.returncode == 2 and one_error_line(proc).startswith(f"step-ray: error: --output {output}:")
    # Inside a `ray job submit --working-dir` job a relative output would land in Ray's temporary copy.
    job_env = {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": {"working_dir": "gcs://x.zip"}})}
    proc = cli("self-train", "--input", str(real_video), "--no-ray", cwd=tmp_path, env=job_env)
    assert proc.returncode == 2 and "run.output_dir runs/demo: a relative path inside a Ray job" in proc.stderr
    assert not (tmp_path / "runs").exists()
    # An object-store prefix is no local path: it passes the check as is (its first write checks it), for every
    # command that takes an output, and nothing is made locally (no "s3:" folder).
    from step_ray.pipeline.steps import check_output

    for flag in ("run.output_dir", "--output", "--out"):
        check_output("s3://bucket/run", flag)
    assert not (tmp_path / "s3:").exists() and not Path("s3:").exists()


def test_bad_qra_files_exit_2_naming_the_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    noise = tmp_path / "noise.parquet"
    noise.write_bytes(os.urandom(2000))
    nosplit = tmp_path / "nosplit.parquet"
    pq.write_table(pa.table({"id": ["a"], "question": ["q"]}), nosplit)
    for command in ("train", "eval"):
        proc = cli(command, "--input", str(noise), "--output", str(tmp_path / "o"))
        assert proc.returncode == 2 and f"{noise}: not a readable Parquet file" in one_error_line(proc)
        proc = cli(command, "--input", str(nosplit), "--output", str(tmp_path / "o"))
        assert proc.returncode == 2 and "not a QRA file" in one_error_line(proc) and "split" in proc.stderr


def test_nothing_usable_exits_1_with_one_line(tmp_path):
    graphs = tmp_path / "graphs"
    graphs.mkdir()
    (graphs / "broken.stsg.json").write_text("{not json")
    proc = cli("qra", "--input", str(graphs), "--output", str(tmp_path / "qra"), "--no-ray")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("step-ray: error: no QRA sample came out of 1 graph")
    assert (tmp_path / "qra" / "stats.json").is_file()  # the reasons are kept


@pytest.mark.parametrize("video_id", ["../../escaped", "/tmp/step-ray-escaped", "a/b", ".hidden", ["a", "list"],
                                      {"x": 1}, "x" * 300, "tab\tid"])
def test_manifest_ids_never_leave_the_output_folder(tmp_path, real_video, video_id):
    from step_ray.utils.inputs import InputError, video_rows

    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"uri": str(real_video), "video_id": video_id}) + "\n")
    with pytest.raises(InputError, match=r"m.jsonl: line 1: video_id"):
        video_rows([str(manifest)])


def test_manifest_id_refused_by_the_cli_before_work(tmp_path, real_video):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"uri,video_id\n{real_video},ok_id\n{real_video},../../escaped\n")
    out = tmp_path / "deep" / "out"
    proc = cli("stsg", "--input", str(manifest), "--output", str(out), "--no-ray")
    assert proc.returncode == 2 and "line 3: video_id '../../escaped' must be a plain file name" in proc.stderr
    assert not out.exists() and not (tmp_path / "escaped.stsg.json").exists()
    from step_ray.utils.inputs import video_rows

    (tmp_path / "n.jsonl").write_text(json.dumps({"uri": str(real_video), "video_id": 42}) + "\n")
    assert video_rows([str(tmp_path / "n.jsonl")])[0]["video_id"] == "42"


# ------------------------------------------------------------------------------------------------ the stream


def test_stream_order_is_a_pure_function_of_seed_and_pass():
    import pyarrow as pa

    from step_ray.train.stream import pass_order, stream_table

    base = pa.table({"id": [f"q{i}" for i in range(7)]})
    whole = stream_table(base, seed=5, start=0, end=30)
    assert whole["pos"].to_pylist() == list(range(30))
    for start in (0, 3, 7, 12, 29):  # a resumed stream is the tail of the whole one, whatever the start
        tail = stream_table(base, seed=5, start=start, end=30)
        assert tail.to_pylist() == whole.slice(start).to_pylist()
    passes = [whole["id"].to_pylist()[p * 7:(p + 1) * 7] for p in range(4)]
    assert all(sorted(p) == sorted(base["id"].to_pylist()) for p in passes)  # each pass: every question once
    assert len({tuple(p) for p in passes}) == 4  # in its own order
    assert (pass_order(5, 2, 7) == pass_order(5, 2, 7)).all() and not (pass_order(5, 2, 7) == pass_order(6, 2, 7)).all()


def test_collate_drops_positions_a_restored_checkpoint_covers():
    import numpy as np

    from step_ray.models.encoding import pack_sequence
    from step_ray.train.stream import ShardCollate
    import torch

    seq = {"input_ids": torch.tensor([1, 2, 3]), "attention_mask": torch.tensor([1, 1, 1]),
           "labels": torch.tensor([-100, 2, 3]), "task": torch.tensor(0)}
    packed = pack_sequence(seq)
    batch = {"seq": np.array([packed, packed, b"", packed], dtype=object),
             "skip": np.array(["", "", "video missing", ""]), "qra_rows": np.array([1, 0, 1, 1]),
             "pos": np.array([4, 4, 5, 6])}
    micro, questions, skipped, first = ShardCollate(0, start=5)(batch)
    assert (questions, skipped, first) == (2, 1, 5) and micro["input_ids"].shape[0] == 1
    micro, questions, skipped, first = ShardCollate(0)(batch)
    assert (questions, skipped, first) == (3, 1, 4) and micro["input_ids"].shape[0] == 3


# ------------------------------------------------------------------------------------------------ output


def test_progress_bars_only_on_a_terminal(monkeypatch):
    from step_ray.utils.env import show_progress

    monkeypatch.delenv("STEP_RAY_PROGRESS", raising=False)
    assert show_progress() is sys.stderr.isatty()
    monkeypatch.setenv("STEP_RAY_PROGRESS", "0")
    assert show_progress() is False
    monkeypatch.setenv("STEP_RAY_PROGRESS", "1")
    assert show_progress() is True


# ------------------------------------------------------------------------------------------------ security


class _Payload:
    """What a crafted checkpoint carries: unpickling it calls Path.touch (any callable could be there)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_yolo_weights_are_not_unpickled(tmp_path):
    """A .pt file whose pickle runs code when loaded: the detector refuses it (ULTRALYTICS_SAFE_LOAD, set by
    step-ray before ultralytics is imported) and the code never runs."""
    import torch

    from step_ray.config import PerceptionConfig
    from step_ray.perception.detectors import build_detector

    assert os.environ.get("ULTRALYTICS_SAFE_LOAD") == "1"
    marker = tmp_path / "pwned"
    weights = tmp_path / "evil.pt"
    torch.save({"model": _Payload(str(marker))}, weights)
    with pytest.raises(Exception):  # noqa: B017 - whatever ultralytics raises: it must not load the file
        build_detector(PerceptionConfig(detector="yolo", yolo_weights=str(weights)), "cpu")
    assert not marker.exists()
