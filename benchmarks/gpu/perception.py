"""Perception throughput in videos per hour per GPU: step-ray's STSG step (Ray Data GPU actors: decode, YOLO,
ByteTrack, graph building; optionally the Video-LLM parsing keyframes) against a plain loop on one GPU that does
the same per-video work with the same libraries (PyAV decode at the same sampling rate, batched YOLO predict,
ultralytics' ByteTrack per frame; the same generate() calls for the parser) and nothing else.

The YOLO weights are random (``yolo11n.yaml``, nothing is downloaded) with the class-0 score raised, so there are
boxes to track on every frame; ``--yolo-weights`` takes real ones. Both sides load the same ``.pt`` file.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any, Optional

from common import Stream, steady_window


def biased_yolo_weights(directory: Path) -> Path:
    """A ``.pt`` of random-weight YOLO11n whose class-0 score is raised (random weights detect nothing)."""
    import torch
    from ultralytics import YOLO

    path = directory / "yolo11n_random_biased.pt"
    if path.is_file():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    model = YOLO("yolo11n.yaml")
    with torch.no_grad():
        model.model.model[-1].cv3[-1][-1].bias[0] = 6.0
    model.save(str(path))
    return path


def corpus(directory: Path, videos: int, seconds: int, width: int, height: int) -> list[Path]:
    """Synthetic H.264 videos (moving shapes, 30 fps) from step-ray's world: the same files for both sides."""
    from step_ray.config import load_config
    from step_ray.synth.corpus import generate_corpus

    cfg = load_config(None, [f"synth.videos={videos}", f"synth.width={width}", f"synth.height={height}",
                             "synth.fps=30", f"synth.scene_seconds={seconds / 2}", "synth.scenes=2",
                             f"synth.object_size={max(16, height // 8)}"])
    generate_corpus(directory, cfg.synth, cfg.video, cfg.stsg)
    return sorted((directory / "videos").glob("*.mp4"))


class GpuMemoryPoller:
    """Peak GPU memory per process (MiB) while it runs, as ``nvidia-smi`` reports it (the actors are Ray's
    processes: their allocator statistics cannot be read from the driver). Nothing without ``nvidia-smi``."""

    def __init__(self, every: float = 0.5):
        import shutil as _shutil
        import threading

        self.every, self.peaks = every, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True) if _shutil.which("nvidia-smi") else None

    def __enter__(self) -> "GpuMemoryPoller":
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _poll(self) -> None:
        import subprocess

        while not self._stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True).stdout
            for line in out.splitlines():
                try:
                    pid, mb = (int(x) for x in line.split(","))
                except ValueError:
                    continue
                self.peaks[pid] = max(self.peaks.get(pid, 0), mb)
            self._stop.wait(self.every)

    def peak(self, exclude: tuple[int, ...] = ()) -> Optional[float]:
        values = [mb for pid, mb in self.peaks.items() if pid not in exclude]
        return float(max(values)) if values else None


def stack_run(cfg: Any, videos: list[Path], out: Path, warmup: float) -> dict[str, Any]:
    """The STSG step on Ray; the rate from the graphs' write times (steady window); the largest actor's peak
    GPU memory."""
    import os

    from step_ray.pipeline.steps import stsg_step

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    with GpuMemoryPoller() as gpu:
        summary = stsg_step(cfg, [str(v) for v in videos], out)
    if summary["ok"] != len(videos):
        raise RuntimeError(f"stsg step failed on some videos: {summary['errors']}")
    done = [(p.stat().st_mtime, 1.0) for p in out.glob("*.stsg.json")]
    run = steady_window(done, warmup, start=t0)
    return {"videos_per_s": run.value, "window_videos": run.items, "step_seconds": summary["seconds"],
            "keyframes": summary["keyframes"], "parse_samples": summary.get("parse_samples"),
            "peak_gpu_mb": gpu.peak(exclude=(os.getpid(),))}


def plain_run(cfg: Any, videos: list[Path], device: str, warmup: float, parser: Optional[Any] = None
              ) -> dict[str, Any]:
    """The same per-video work as a plain loop in this process, on one GPU."""
    import os

    from ultralytics import YOLO

    model = YOLO(cfg.perception.yolo_weights, task="detect")
    s = Stream()
    generated = 0
    with GpuMemoryPoller() as gpu:
        for path in videos:
            generated += plain_video(path, model, cfg, device, parser)
            s.tick(1)
    run = steady_window(s.events, warmup, start=s.t0)
    return {"videos_per_s": run.value, "window_videos": run.items, "generations": generated,
            "peak_gpu_mb": gpu.peak() if device.startswith("cuda") else None, "pid": os.getpid()}


def plain_video(path: Path, model: Any, cfg: Any, device: str, parser: Optional[Any]) -> int:
    """One video through the plain loop: PyAV decode at the sampling rate, batched YOLO, ByteTrack per frame,
    then (with a parser) its generate() calls; returns how many answers were generated."""
    import av
    import numpy as np
    from ultralytics.engine.results import Boxes

    from step_ray.perception.tracking import new_tracker
    from step_ray.video.decode import target_size

    pc, vc = cfg.perception, cfg.video
    tracker = new_tracker(pc.tracker)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        step = max(1, int(round(float(stream.average_rate) / vc.sample_fps)))
        w, h = target_size(stream.width, stream.height, vc.max_side)
        frames = [f.to_ndarray(format="rgb24", width=w, height=h)
                  for i, f in enumerate(container.decode(stream)) if i % step == 0]
    kept: list[tuple[Any, Any]] = []
    for i in range(0, len(frames), pc.batch):
        batch = frames[i:i + pc.batch]
        results = model.predict([f[..., ::-1] for f in batch], imgsz=pc.imgsz, conf=pc.conf, device=device, verbose=False)
        for frame, r in zip(batch, results):
            b = r.boxes.cpu().numpy()
            data = np.concatenate([b.xyxy, b.conf[:, None], b.cls[:, None]], axis=1).astype(np.float32)
            kept.append((frame, tracker.update(Boxes(data, orig_shape=frame.shape[:2]).numpy(), frame[..., ::-1])))
    return parser.parse_frames(kept, w, h) if parser is not None else 0


@dataclasses.dataclass
class PlainParser:
    """The parser's generate() work, plainly: ``keyframes`` evenly spread frames per video, each with the
    tracked objects in the prompt, ``samples`` sampled answers of up to ``max_new_tokens`` each."""

    model: Any
    processor: Any
    cfg: Any  # SemanticsConfig
    keyframes: int
    device: str

    @classmethod
    def load(cls, path: str, semantics: Any, keyframes: int, device: str) -> "PlainParser":
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype).to(device).eval()
        processor = AutoProcessor.from_pretrained(path)
        processor.tokenizer.padding_side = "left"
        return cls(model, processor, semantics, keyframes, device)

    def parse_frames(self, kept: list, width: int, height: int) -> int:
        import numpy as np
        import torch

        from step_ray.perception.semantics import KeyframeQuery, load_template, render_prompt

        template = load_template(self.cfg.prompt)
        idx = np.unique(np.linspace(0, len(kept) - 1, min(self.keyframes, len(kept))).round().astype(int))
        items = []
        for i in idx:
            frame, tracked = kept[int(i)]
            objects = [(int(r[4]), "object", tuple(float(v) for v in r[:4])) for r in tracked]
            items.append((render_prompt(template, KeyframeQuery(0, float(i), objects), width, height), frame))
        done = 0
        side = self.cfg.image_size
        for j in range(0, len(items), self.cfg.batch_size):
            part = items[j:j + self.cfg.batch_size]
            texts = [self.processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}],
                tokenize=False, add_generation_prompt=True) for p, _ in part]
            inputs = self.processor(text=texts, images=[f for _, f in part], return_tensors="pt", padding=True,
                                    images_kwargs={"size": {"shortest_edge": 56 * 56, "longest_edge": side * side}})
            inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}
            with torch.no_grad():
                out = self.model.generate(**inputs, do_sample=True, temperature=self.cfg.temperature,
                                          num_return_sequences=self.cfg.samples,
                                          max_new_tokens=self.cfg.max_new_tokens,
                                          pad_token_id=self.processor.tokenizer.pad_token_id)
            done += int(out.shape[0])
        return done
