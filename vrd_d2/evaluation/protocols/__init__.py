"""Relation recall protocols behind a registry (docs/EVALUATION.md): :mod:`.registry` (the
registry, the base class, which protocol a dataset gets), one module per protocol: :mod:`.lu`
(Lu et al. 2016), :mod:`.sgb` (the Scene-Graph-Benchmark)."""

from .lu import LU_TOPK, LuProtocol, evaluate_records, format_results_table
from .registry import (
    COMBINED_PROTOCOLS,
    DEFAULT_PROTOCOL,
    METADATA_KEY,
    VRD_PROTOCOL_REGISTRY,
    ProtocolResult,
    RelationProtocol,
    build_protocols,
    format_protocol_table,
    protocol_choices,
    protocol_members,
    registered_protocols,
    resolve_protocol,
    tasks_for_mode,
)
from .sgb import SGBProtocol

__all__ = [k for k in globals().keys() if not k.startswith("_") and k not in ("lu", "registry", "sgb")]
