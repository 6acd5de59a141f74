"""The protocol registry: which recall protocol scores a dataset, and the base class a protocol
implements (docs/EVALUATION.md).

A protocol is a :class:`RelationProtocol` subclass registered in :data:`VRD_PROTOCOL_REGISTRY`
and chosen by its ``name`` (``MODEL.VRD.TEST.PROTOCOL``, ``VRDEvaluator(protocol=...)``,
``tools/eval_results.py --protocol``). Adding one is one file and one registration::

    @VRD_PROTOCOL_REGISTRY.register()
    class MyProtocol(RelationProtocol):
        name = "mine"
        title = "My protocol"

        def evaluate(self, predictions, ground_truths, complete_ground_truths=None, num_predicates=None):
            ...  # -> ProtocolResult(results task -> metric -> value)

Besides the registered names: "auto" = the dataset's default, its metadata's
:data:`METADATA_KEY` (set when the dataset is registered: VRD and custom JSON "lu", VG150 / VG200
"sgb"); "both" = Lu's and SGB's from the same predictions, each under its own key.
"""

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.utils.registry import Registry

from ...config import MODES

__all__ = [
    "VRD_PROTOCOL_REGISTRY",
    "RelationProtocol",
    "ProtocolResult",
    "METADATA_KEY",
    "DEFAULT_PROTOCOL",
    "COMBINED_PROTOCOLS",
    "registered_protocols",
    "protocol_choices",
    "resolve_protocol",
    "protocol_members",
    "build_protocols",
    "format_protocol_table",
    "tasks_for_mode",
]

VRD_PROTOCOL_REGISTRY = Registry("VRD_PROTOCOL")
VRD_PROTOCOL_REGISTRY.__doc__ = """Relation recall protocols (RelationProtocol subclasses), looked up by
their ``name`` attribute."""

#: the dataset-metadata field holding the dataset's default protocol (what "auto" picks)
METADATA_KEY = "evaluation_protocol"
#: what "auto" picks for a dataset whose metadata has no :data:`METADATA_KEY` (Lu et al.'s, the paper's)
DEFAULT_PROTOCOL = "lu"
#: names that run several protocols in one pass; the results hold each under its own name
COMBINED_PROTOCOLS = {"both": ("lu", "sgb")}
AUTO = "auto"


@dataclass
class ProtocolResult:
    """What one protocol's :meth:`RelationProtocol.evaluate` returns.

    Attributes:
        results: task -> metric -> value (detectron2's evaluator results layout).
        notes: printed under the protocol's table in the evaluator's log.
        record: extra JSON fields of this run for ``vrd_evaluation.json`` (e.g. SGB's image counts).
    """

    results: "OrderedDict[str, Dict[str, float]]"
    notes: str = ""
    record: dict = field(default_factory=dict)


class RelationProtocol:
    """A recall protocol over aligned per-image records (layout of :mod:`vrd_d2.evaluation.recall`).

    :class:`~vrd_d2.evaluation.VRDEvaluator` constructs every protocol it runs with the same
    keyword options (``mode``, ``k_values``, ``topk_values``, ``best_k``, ``iou_threshold``,
    ``denominator``, ``sgb_zeroshot_triplets``); a protocol takes those it uses and ignores the
    others (``**unused``). ``topk_values`` None means the protocol's own K.
    """

    #: the registry name (MODEL.VRD.TEST.PROTOCOL value, results key under a combined protocol)
    name: str = ""
    #: heading of its table when several protocols are printed together
    title: str = ""
    #: a line printed under its table (e.g. what a column label means)
    legend: str = ""

    def __init__(self, *, mode: str = "sgdet", iou_threshold: float = 0.5, **unused):
        self.mode = mode
        self.iou_threshold = float(iou_threshold)

    def evaluate(
        self,
        predictions: Sequence[Optional[dict]],
        ground_truths: Sequence[dict],
        complete_ground_truths: Optional[Sequence[dict]] = None,
        num_predicates: Optional[int] = None,
    ) -> ProtocolResult:
        """Score ``predictions[i]`` (a record or None) against ``ground_truths[i]``;
        ``complete_ground_truths``: a second ground truth per image (Shapes' ``_complete`` tasks);
        ``num_predicates``: P of the mean recall (None: from the labels)."""
        raise NotImplementedError

    def table(self, results: Dict[str, Dict[str, float]]) -> str:
        """The printable table of this protocol's ``results``."""
        raise NotImplementedError

    def settings(self) -> dict:
        """JSON fields of ``vrd_evaluation.json`` naming this protocol's options."""
        return {}

    def flat_scores(self, results: Dict[str, Dict[str, float]], k: int = 0) -> Dict[str, float]:
        """The flat ``<task>_<metric>`` scores of ``tools/eval_results.py --json`` (``k``: the k per
        pair of a protocol that reports several)."""
        return {f"{task}_{name}": value for task, metrics in results.items() for name, value in metrics.items()}

    def flat_settings(self, k: int = 0) -> dict:
        """Fields written beside :meth:`flat_scores` in the ``--json`` file."""
        return {}


def registered_protocols() -> "OrderedDict[str, type]":
    """name -> protocol class, in registration order."""
    out = OrderedDict()
    for key, cls in VRD_PROTOCOL_REGISTRY:
        if not cls.name or cls.name in out or cls.name in COMBINED_PROTOCOLS or cls.name == AUTO:
            raise ValueError(
                f"VRD_PROTOCOL_REGISTRY: {key}.name = {cls.name!r}; it must be non-empty and unlike "
                f"{sorted(out) + sorted(COMBINED_PROTOCOLS) + [AUTO]}"
            )
        out[cls.name] = cls
    return out


def protocol_choices() -> Tuple[str, ...]:
    """Every value MODEL.VRD.TEST.PROTOCOL accepts: the registered names, "auto", the combined ones."""
    return tuple(registered_protocols()) + (AUTO,) + tuple(COMBINED_PROTOCOLS)


def resolve_protocol(protocol: str, metadata=None) -> str:
    """The protocol to run: ``protocol`` itself, or for "auto" the dataset's default,
    ``metadata.evaluation_protocol`` (:data:`DEFAULT_PROTOCOL` when the metadata has none).

    Raises ValueError for an unknown ``protocol`` or an unknown metadata value (naming the dataset)."""
    choices = protocol_choices()
    if protocol not in choices:
        raise ValueError(f"evaluation protocol must be one of {choices}, found {protocol!r}")
    if protocol != AUTO:
        return protocol
    default = metadata.get(METADATA_KEY, None) if metadata is not None else None
    if default is None:
        return DEFAULT_PROTOCOL
    if default not in choices or default == AUTO:
        name = metadata.get("name", "?")
        raise ValueError(
            f"dataset {name!r}: metadata {METADATA_KEY}={default!r} is not a protocol; expected one of "
            f"{tuple(c for c in choices if c != AUTO)}"
        )
    return default


def protocol_members(protocol: str) -> Tuple[str, ...]:
    """The registered protocols a resolved name runs: ("lu", "sgb") for "both", else itself."""
    return COMBINED_PROTOCOLS.get(protocol, (protocol,))


def build_protocols(protocol: str, **options) -> "OrderedDict[str, RelationProtocol]":
    """name -> protocol instance for a resolved ``protocol``, each built with ``options``."""
    classes = registered_protocols()
    return OrderedDict((name, classes[name](**options)) for name in protocol_members(protocol))


def format_protocol_table(results: dict, protocols: Sequence[RelationProtocol]) -> str:
    """The printable table of an evaluator's results: one protocol's table, or for several each
    under its title (the results hold each protocol's under its name)."""
    protocols = list(protocols)
    if len(protocols) == 1:
        return protocols[0].table(results)
    parts: List[str] = []
    for p in protocols:
        parts.append(f"{p.title or p.name}:\n{p.table(results[p.name])}" + (f"\n{p.legend}" if p.legend else ""))
    return "\n".join(parts)


def tasks_for_mode(mode: str):
    """[(task name, matching criterion)]: sgdet reports relationship and phrase detection; the
    gold-box modes report the relationship criterion under the mode's own name."""
    if mode == "sgdet":
        return [("relationship", "relationship"), ("phrase", "phrase")]
    if mode in ("phrase_cls", "predcls"):
        return [(mode, "relationship")]
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
