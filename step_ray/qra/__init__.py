"""Reasoning-path sampling and QRA rendering: STSG -> programs -> question, rationale, answer, options.

Public API: :func:`sample_qra` (one graph -> records + stats), :class:`Program` and :func:`execute` (the path
programs and their executor), :data:`QRA_SCHEMA`, :func:`write_parquet`, :func:`read_parquet` (the record
contract and its files).
"""

from step_ray.qra.families import FAMILIES, family_of
from step_ray.qra.paths import Anchor, ExecutionError, GraphIndex, Hop, Program, execute, trace
from step_ray.qra.records import QRA_SCHEMA, check_record, read_parquet, split_of, write_parquet
from step_ray.qra.sampler import sample_qra

__all__ = [
    "FAMILIES", "family_of", "Anchor", "ExecutionError", "GraphIndex", "Hop", "Program", "execute", "trace",
    "QRA_SCHEMA", "check_record", "read_parquet", "split_of", "write_parquet", "sample_qra",
]
