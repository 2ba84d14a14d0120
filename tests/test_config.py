"""The config tree: YAML + overrides, and errors that name the field."""

import subprocess
import sys
from pathlib import Path

import pytest

from step_ray.config import ConfigError, dump_config, field_docs, from_dict, load_config, to_dict

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_and_overrides():
    cfg = load_config(None, ["train.lr=3e-4", "perception.pool.max_size=3", "train.lora.target_modules=[q_proj]"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.perception.pool.max_size == 3
    # A partial override of a nested section keeps the parent's special defaults for the other fields.
    assert cfg.perception.pool.min_size == 1
    assert cfg.train.lora.target_modules == ["q_proj"]


def test_demo_config_loads_and_round_trips():
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    assert from_dict(to_dict(cfg)) == cfg
    assert "train:" in dump_config(cfg)


@pytest.mark.parametrize("override, field", [
    ("train.zero_stage=5", "train.zero_stage"),
    ("train.nope=1", "train.nope"),
    ("nosection.x=1", "nosection"),
    ("model.frames=three", "model.frames"),
    ("model.frames=3", "model.frames"),
    ("qra.pool.num_gpus=1", "qra.pool.num_gpus"),
    ("perception.detector=sam", "perception.detector"),
    ("train.steps=1.5", "train.steps"),
    ("model.tiny.num_heads=0", "model.tiny.num_heads"),
    ("perception.device=cuda", "perception.device"),  # no GPUs requested for the actors
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value).startswith(field + ":")


def test_bad_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("train:\n  zero_stage: 9\n")
    with pytest.raises(ConfigError, match="^train.zero_stage"):
        load_config(bad)


def test_unreadable_config_file(tmp_path):
    bad = tmp_path / "utf16.yaml"
    bad.write_bytes(b"\xff\xfet\x00r\x00")
    with pytest.raises(ConfigError, match="^--config: cannot read"):
        load_config(bad)


def test_every_field_is_documented():
    rows = field_docs()
    assert len(rows) > 50
    assert all(help_text for _, _, help_text in rows), [name for name, _, h in rows if not h]


def test_cli_bad_config_exits_2_with_one_line():
    proc = subprocess.run([sys.executable, "-m", "step_ray.cli", "qra", "--input", "x", "--output", "y",
                           "qra.max_steps=0"], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("step-ray: error: qra.max_steps"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_missing_input_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "step_ray.cli", "stsg", "--input", str(tmp_path / "none"),
                           "--output", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2 and "no such file" in proc.stderr


def test_cli_missing_yolo_weights_exits_2_before_any_work(tmp_path, real_video):
    proc = subprocess.run([sys.executable, "-m", "step_ray.cli", "stsg", "--input", str(real_video), "--output",
                           str(tmp_path / "out"), "--no-ray", "perception.detector=yolo",
                           f"perception.yolo_weights={tmp_path / 'none.pt'}"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("step-ray: error: perception.yolo_weights: no such file")
    assert not (tmp_path / "out").exists()


def test_globs_keep_only_the_wanted_suffixes(tmp_path):
    from step_ray.utils.inputs import InputError, video_rows

    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    assert [r["video_id"] for r in video_rows([str(tmp_path / "*")])] == ["a"]
    with pytest.raises(InputError):
        video_rows([str(tmp_path / "*.txt")])


def test_docs_config_md_lists_every_field_as_the_code_declares_it():
    """docs/config.md is `step-ray fields --markdown`: regenerate it when a field changes."""
    out = subprocess.run([sys.executable, "-m", "step_ray.cli", "fields", "--markdown"], capture_output=True,
                         text=True, check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    docs = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    assert docs == out, "docs/config.md is stale: step-ray fields --markdown > docs/config.md"
