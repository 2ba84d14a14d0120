"""Drawing scene graphs: real PNG and HTML files from synthetic ground truth and from hand-made graphs, with
and without a readable video."""

import io
from pathlib import Path

import numpy as np
from PIL import Image

from step_ray.cli import main
from step_ray.config import load_config
from step_ray.stsg import schema
from step_ray.stsg.build import build_stsg
from step_ray.stsg.draw import BLANK, load_keyframes, resolve_video, show
from test_stsg_scoring import world

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    img = Image.open(io.BytesIO(data))
    img.load()  # decodes the whole image: a truncated file fails here
    return img


def test_png_of_synthetic_graph_uses_the_real_frames(synth_corpus, tmp_path):
    item = synth_corpus["items"][0]
    summary = show(item["gt_path"], tmp_path / "g.png", None, synth_corpus["cfg"].video)
    img = _png(tmp_path / "g.png")
    assert img.size[0] >= 1000 and img.size[1] >= 600
    assert summary["frames"] == item["path"] and summary["keyframes_drawn"] > 0
    # The graph's uri is relative to the corpus (gt/..); the keyframes are decoded frames, not blank ones.
    g = schema.read(item["gt_path"])
    video = resolve_video(g, Path(item["gt_path"]), None)
    assert video.resolve() == Path(item["path"]).resolve()
    kf = load_keyframes(g, video, synth_corpus["cfg"].video)
    assert kf.note is None and all(not np.all(im == BLANK) for im in kf.images.values())
    assert all(im.shape == (g.graph["height"], g.graph["width"], 3) for im in kf.images.values())


def test_html_is_self_contained_and_lists_every_object(synth_corpus, tmp_path):
    item = synth_corpus["items"][1]
    g = schema.read(item["gt_path"])
    show(item["gt_path"], tmp_path / "g.html", None, synth_corpus["cfg"].video)
    page = (tmp_path / "g.html").read_text()
    for n in schema.nodes_of(g, "object"):
        assert n in page
    for e in schema.nodes_of(g, "event"):
        assert e in page
    assert page.count("data:image/png;base64,") == 1 + len(schema.nodes_of(g, "keyframe"))
    assert "src=\"http" not in page and "<script" not in page


def test_missing_video_still_draws(tmp_path):
    g = build_stsg(world(), load_config().stsg, "ground_truth")  # its uri /nowhere/v.mp4 does not exist
    path = tmp_path / "v.stsg.json"
    schema.write(g, path)
    summary = show(path, tmp_path / "v.png", None, load_config().video)
    assert summary["frames"].startswith("blank (video not found")
    assert _png(tmp_path / "v.png").size[0] >= 1000
    show(path, tmp_path / "v.html", str(tmp_path / "v.stsg.json"), load_config().video)  # not a video at all
    page = (tmp_path / "v.html").read_text()
    assert "video not readable" in page and all(n in page for n in schema.nodes_of(g, "object"))


def test_cli_show_stsg(tmp_path, capsys):
    g = build_stsg(world(), load_config().stsg, "ground_truth")
    path = tmp_path / "v.stsg.json"
    schema.write(g, path)
    assert main(["show-stsg", str(path)]) == 0
    _png(tmp_path / "v.png")  # default output: next to the graph
    assert "keyframes_drawn" in capsys.readouterr().out
    (tmp_path / "bad.stsg.json").write_text("[]")
    assert main(["show-stsg", str(tmp_path / "bad.stsg.json")]) == 2
    assert main(["show-stsg", str(path), "--output", str(tmp_path / "v.jpg")]) == 2
    g.nodes["obj:0:0"].pop("first")  # right version, a field missing
    schema.write(g, tmp_path / "broken.stsg.json")
    assert main(["show-stsg", str(tmp_path / "broken.stsg.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("step-ray: error:") for line in err)
    assert "malformed graph" in err[2]
