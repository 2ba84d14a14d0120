"""Pool-fit preflight: does a step's plan of actor pools fit the Ray it is about to run on?

Ray Data starts every pool's ``min_size`` actors as a step begins and each holds its logical CPUs and GPUs
until the step ends. When the pools of one step together ask for more than a fixed-size Ray has, the last pool's
actors wait for the first pool to finish, so a streaming step runs its stages one after another (measured:
two 1-CPU perception actors and the 0.25-CPU graph builder on 2 CPUs started the builder only near the end).
:func:`check_pool_fit` fails such a plan before any actor starts, with a :class:`~step_ray.config.ConfigError`
naming the option to change; a plan whose ``max_size`` actors cannot all run is only logged (the pool runs with
fewer actors). One actor that no node can hold fails too. A cluster this driver *joined* (``ray.address`` or
``RAY_ADDRESS``) may autoscale, so it is not checked: the same rule as training's resource check.

A step calls it in one line before it maps its stages, e.g. ``check_pool_fit(cfg, "perception.pool",
"stsg.pool")``.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Optional

from step_ray.config import ConfigError, PoolConfig, StepRayConfig

logger = logging.getLogger(__name__)

_EPS = 1e-9


def cluster_autoscales(cfg: StepRayConfig) -> bool:
    """Whether this driver joins a cluster (which may add nodes) rather than starting a fixed-size embedded Ray."""
    if cfg.ray.address == "local":
        return False
    return bool(cfg.ray.address) or bool(os.environ.get("RAY_ADDRESS"))


@dataclass(frozen=True)
class Resources:
    """What a fixed-size Ray holds: the totals, and the most one node has (one actor must fit on a node)."""

    cpus: float
    gpus: float
    node_cpus: float
    node_gpus: float

    @classmethod
    def of_ray(cls) -> "Resources":
        import ray

        total = ray.cluster_resources()
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")] or [total]
        return cls(float(total.get("CPU", 0)), float(total.get("GPU", 0)),
                   max(float(n.get("CPU", 0)) for n in nodes), max(float(n.get("GPU", 0)) for n in nodes))


def pool_at(cfg: StepRayConfig, path: str) -> PoolConfig:
    """The pool at a dotted config path (``perception.pool``)."""
    node = cfg
    for part in path.split("."):
        node = getattr(node, part)
    if not isinstance(node, PoolConfig):
        raise TypeError(f"{path} is not an actor pool")
    return node


def check_pool_fit(cfg: StepRayConfig, *pool_paths: str, use_ray: bool = True,
                   resources: Optional[Resources] = None) -> None:
    """Fail before a step starts when its pools (dotted config paths; they run at the same time) cannot all
    start on this fixed-size Ray; log when their ``max_size`` cannot be reached. Starts (or joins) Ray as the
    step would. Skipped without Ray and on a joined (possibly autoscaling) cluster; ``resources`` overrides
    what Ray reports (tests)."""
    if not use_ray or (resources is None and cluster_autoscales(cfg)):
        return
    if resources is None:
        from step_ray.utils.ray_session import init_ray

        init_ray(cfg.ray)
        resources = Resources.of_ray()
    pools = [(p, pool_at(cfg, p)) for p in pool_paths]
    for path, pool in pools:
        for kind, ask, have in (("num_cpus", pool.num_cpus, resources.node_cpus),
                                ("num_gpus", pool.num_gpus, resources.node_gpus)):
            if ask > have + _EPS:
                unit = kind[4:-1].upper()
                raise ConfigError(f"{path}.{kind}", f"one actor asks for {ask:g} {unit}s but no Ray node has more "
                                                    f"than {have:g}: lower {path}.{kind}")
    for kind, have in (("num_cpus", resources.cpus), ("num_gpus", resources.gpus)):
        need = sum(pool.min_size * getattr(pool, kind) for _, pool in pools)
        if need > have + _EPS:
            raise ConfigError(*_overflow(pools, kind, need, have))
        most = sum(pool.max_size * getattr(pool, kind) for _, pool in pools)
        if most > have + _EPS:
            logger.warning("the actor pools %s can have %g %ss at their max_size, Ray has %g: some pools will run "
                           "fewer actors than max_size", ", ".join(p for p, _ in pools), most, kind[4:-1].upper(),
                           have)


def _overflow(pools: list[tuple[str, PoolConfig]], kind: str, need: float, have: float) -> tuple[str, str]:
    """(the option to change, the message) for pools whose minimum does not fit: the largest ask is named, with
    the value that would make the plan fit."""
    unit = kind[4:-1].upper()
    plan = " + ".join(f"{p} {pool.min_size} x {getattr(pool, kind):g}" for p, pool in pools
                      if getattr(pool, kind) > 0)
    path, pool = max(pools, key=lambda x: x[1].min_size * getattr(x[1], kind))
    rest = need - pool.min_size * getattr(pool, kind)
    fit = math.floor((have - rest) / pool.min_size * 1000 + _EPS) / 1000 if have > rest else 0.0
    hint = f"lower {path}.{kind}" + (f" to {fit:g} or less" if fit > 0 else "")
    hint += f" or {path}.min_size, or give Ray more {unit}s" + (" (ray.num_cpus)" if kind == "num_cpus" else "")
    return (f"{path}.{kind}",
            f"the step's actor pools start with {plan} = {need:g} {unit}s (min_size x {kind}), but Ray has "
            f"{have:g}: the last pool would wait for the others to finish; {hint}")
