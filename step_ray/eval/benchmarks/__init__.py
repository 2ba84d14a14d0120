"""Public video-QA benchmarks read from their files as distributed: NExT-QA, STAR and AGQA; and step-ray's own QRA.

``load_benchmark(name, input, videos, **options)`` gives the questions of one input file as
:class:`~step_ray.eval.benchmarks.common.BenchmarkQuestion` records, in file order, one per question of the
input (those that cannot be asked carry a ``skip_reason``). ``docs/benchmarks.md`` documents each format and
where its files come from.
"""

from __future__ import annotations

from typing import Any, Callable

from step_ray.eval.benchmarks import agqa, nextqa, qra, star
from step_ray.eval.benchmarks.common import BenchmarkFormatError, BenchmarkQuestion

#: name -> (loader, the keyword options it takes beyond input and videos)
LOADERS: dict[str, tuple[Callable[..., list[BenchmarkQuestion]], tuple[str, ...]]] = {
    nextqa.NAME: (nextqa.load, ("map_uri",)),
    star.NAME: (star.load, ()),
    agqa.NAME: (agqa.load, ("vocabulary_uri",)),
    qra.NAME: (qra.load, ("split",)),
}
BENCHMARKS = tuple(LOADERS)


def load_benchmark(name: str, input_uri: str, videos: str, **options: Any) -> list[BenchmarkQuestion]:
    """The questions of ``input_uri`` for benchmark ``name``; unknown names and options are refused."""
    if name not in LOADERS:
        raise BenchmarkFormatError(f"--benchmark {name}: not one of {', '.join(BENCHMARKS)}")
    loader, accepted = LOADERS[name]
    unknown = sorted(k for k, v in options.items() if v is not None and k not in accepted)
    if unknown:
        raise BenchmarkFormatError(f"--benchmark {name} takes no option {', '.join(unknown)}")
    return loader(input_uri, videos, **{k: v for k, v in options.items() if k in accepted})


__all__ = ["BENCHMARKS", "BenchmarkFormatError", "BenchmarkQuestion", "load_benchmark"]
