"""What the fast decoding paths cost in picture and graph quality, against full decoding, on the synthetic corpus
and on real footage.

For every corpus and decoder: the mean / min PSNR of the sampled frames against full decoding (PyAV, every frame,
deblocking on) at the same timestamps, converted the same way to the size perception sees
(:mod:`step_ray.video.quality`); how many frames late the decoder's frames are (``pyav-sparse`` skips sampled
frames that no other frame refers to and takes the next decoded one); and the detection agreement: the objects F1
of the graph built from the decoder's frames against the graph built from full decoding (objects matched by mean
box IoU >= 0.5, a box at the nearest sampled time within half a sampling interval). ``decord`` decodes the same
frames exactly but resizes them with OpenCV instead of libswscale: its row is the noise floor of the graph
itself (how much the detector's graph moves when pixels move by a resampling filter). On the synthetic corpus the
graphs are also scored against the ground truth. ``decode_s``: seconds spent decoding (the stage's own timer).

Corpora: the synthetic world at 30 fps sampled at 5 fps; the real clip ``carphone`` (176x144, 4 s) at 5 fps; the
1-minute 720p video of ``benchmarks/videos.py`` (real footage, upscaled, with grain and cuts) at 1 and 5 fps.

Headline (``ratio=``): the agreement of the decoder ``video.backend: auto`` picks with full decoding, the lowest
over the corpora.

    flock /tmp/step-ray-heavy.lock .venv/bin/python benchmarks/bench_decode_quality.py [--synth-videos 12]
"""

from __future__ import annotations

import argparse

import torch  # noqa: F401  -- before decord (see step_ray.video.decode)

from common import WORK, finish, value_run  # noqa: E402
from videos import SOURCE, make_video  # noqa: E402

BACKENDS = ("pyav", "pyav-refs", "pyav-sparse", "decord")  # pyav: the reference (full decoding)


def build(path: str, video_id: str, overrides: list[str], out: str):
    """(graph, stage row) of one video, built in this process by the STSG stages."""
    from step_ray.config import load_config
    from step_ray.stsg import schema
    from step_ray.stsg.stage import GraphStage, StsgStage

    cfg = load_config(None, overrides)
    stage, builder = StsgStage(cfg, out_dir=out), GraphStage(cfg, out_dir=out)
    stage.setup()
    builder.setup()
    row = stage.process({"video_id": video_id, "uri": path})
    if row["status"] != "ok":
        raise RuntimeError(f"{path}: {row['error']}")
    built = builder.process(row)
    with open(built["stsg_path"]) as f:
        return schema.loads(f.read()), row


def corpus_rows(name: str, videos: list[tuple[str, str]], fps: float, gt_dir=None) -> list[dict]:
    from step_ray.config import load_config
    from step_ray.stsg import schema
    from step_ray.stsg.scoring import Counts, object_agreement
    from step_ray.video.decode import open_sampled
    from step_ray.video.quality import frame_quality

    over = [f"video.sample_fps={fps}"]
    auto = open_sampled(videos[0][1], load_config(None, over).video)
    auto_backend = auto.info.backend
    auto.close()
    graphs: dict[str, dict[str, object]] = {b: {} for b in BACKENDS}
    decode_s = {b: 0.0 for b in BACKENDS}
    for b in BACKENDS:
        for vid, path in videos:
            g, row = build(path, vid, over + [f"video.backend={b}"], str(WORK / "decode_quality" / name / b))
            graphs[b][vid] = g
            decode_s[b] += row["seconds_decode"] or 0.0
    rows = []
    for b in BACKENDS:
        agree, truth = Counts(), Counts()
        psnr, low, late, late_max, frames, identical = [], [], [], 0, 0, 0
        for vid, path in videos:
            agree += object_agreement(graphs[b][vid], graphs["pyav"][vid], time_tol=0.5 / fps)
            if gt_dir is not None:
                with open(gt_dir / f"{vid}.stsg.json") as f:
                    truth += object_agreement(graphs[b][vid], schema.loads(f.read()))
            q = frame_quality(path, load_config(None, over + [f"video.backend={b}"]).video)
            psnr.append(q.mean_psnr * q.frames)
            low.append(q.min_psnr)
            late.append(q.late_frames_mean * q.frames)
            late_max = max(late_max, q.late_frames_max)
            frames += q.frames
            identical += q.identical
        row = {"corpus": name, "backend": b, "role": "reference" if b == "pyav" else "",
               "auto": b == auto_backend, "frames": frames, "psnr_mean": sum(psnr) / frames, "psnr_min": min(low),
               "identical": f"{100 * identical / frames:.0f}%", "late_mean": sum(late) / frames, "late_max": late_max,
               "objects_f1_vs_full": agree.f1, "tp/fp/fn": f"{agree.tp}/{agree.fp}/{agree.fn}",
               "decode_s": decode_s[b], "x_decord_decode": decode_s["decord"] / decode_s[b] if decode_s[b] else None}
        if gt_dir is not None:
            row["objects_f1_vs_truth"] = truth.f1
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synth-videos", type=int, default=12, help="synthetic videos (default 12)")
    args = ap.parse_args()
    from step_ray.config import load_config
    from step_ray.synth.corpus import generate_corpus

    synth = WORK / f"quality_synth30_{args.synth_videos}"
    cfg = load_config(None, [f"synth.videos={args.synth_videos}", "synth.fps=30", "synth.seed=1"])
    generate_corpus(synth, cfg.synth, cfg.video, cfg.stsg)
    synth_videos = [(p.stem, str(p)) for p in sorted((synth / "videos").glob("*.mp4"))]
    v720 = str(make_video(WORK / "carphone_1280x720_1min.mp4", 60))
    rows = corpus_rows("synthetic, 30 fps, @5 fps", synth_videos, 5.0, gt_dir=synth / "gt")
    rows += corpus_rows("carphone 176x144, @5 fps", [("carphone", str(SOURCE))], 5.0)
    rows += corpus_rows("720p 1 min, @1 fps", [("v720", v720)], 1.0)
    rows += corpus_rows("720p 1 min, @5 fps", [("v720", v720)], 5.0)
    chosen = [r for r in rows if r["auto"]]
    worst = min(r["objects_f1_vs_full"] for r in chosen)
    head = {"candidate": "video.backend=auto", "baseline": "full decoding (pyav)", "higher_is_better": True,
            "ratio": worst, "round_min": worst, "round_max": max(r["objects_f1_vs_full"] for r in chosen),
            "per_round": [r["objects_f1_vs_full"] for r in chosen]}
    notes = {"auto_picks": {r["corpus"]: r["backend"] for r in chosen},
             "reference": "pyav: every frame decoded, deblocking on, the same frame conversion",
             "noise_floor": "decord: the same frames exactly, resized by OpenCV: how far the graph moves anyway"}
    finish("bench_decode_quality", rows, notes, head, {"auto_agreement": [value_run(worst)]})


if __name__ == "__main__":
    main()
