"""The paper's Table 4 (phrase classification at k = 1 and free k as the CP rank, the selection
head P(X_sel | b) and the prior psi_u are added), defined once.

A row is a :class:`Variant`: the CP rank and the test-time score terms. Each rank trains its own
stage 2 (weights of one rank do not load into a model of another:
:func:`vrd_d2.engine.check_stage_inputs`); the rows of ranks 1-4 score psi_c alone (no X_sel, no
prior), so their chains stop after stage 2. Rank 5 is the main model, so its chain is the main one
(stage 2 -> 3), whose X_sel the rank-5 rows use.
:func:`ablation_runs` writes the whole ablation of a dataset as ``tools/train_net.py`` runs of the
dataset's stage configs with overrides; :mod:`vrd_d2.engine.pipeline` plans them. The
per-rank YAML files they replace are listed in docs/CONFIG_CHANGES.md.
"""

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple

__all__ = ["Variant", "AblationRun", "RANKS", "MAIN_RANK", "ROWS", "ablation_runs"]


@dataclass(frozen=True)
class Variant:
    """One row of an ablation.

    rank: CP rank R of psi_c; use_cp: score with psi_c (False: uniform psi_c, e.g. "prior alone");
    use_selection: multiply by the selection head's P(X_sel); use_prior: multiply by the triplet
    prior psi_u; crf_normalize: MODEL.VRD.CRF_NORMALIZE (the per-pair normaliser of P(t | b);
    False = the paper's eq. 7 product psi_c * psi_u; None = the config's value). Test time only.
    """

    rank: int
    use_cp: bool = True
    use_selection: bool = False
    use_prior: bool = False
    crf_normalize: Optional[bool] = None

    def _values(self) -> Dict[str, object]:
        out = {"RANK": self.rank, "USE_CP": self.use_cp, "USE_SELECTION": self.use_selection}
        out["USE_PRIOR"] = self.use_prior
        if self.crf_normalize is not None:
            out["CRF_NORMALIZE"] = self.crf_normalize
        return out

    def apply(self, cfg):
        """Write the variant into ``cfg`` (in place; returns it)."""
        for key, value in self._values().items():
            setattr(cfg.MODEL.VRD, key, value)
        return cfg

    def opts(self) -> List[str]:
        """The variant as command-line overrides (``MODEL.VRD.RANK 3 ...``), the same keys as
        :meth:`apply`."""
        return [x for key, value in self._values().items() for x in (f"MODEL.VRD.{key}", str(value))]

    def as_dict(self) -> Dict[str, object]:
        return asdict(self)

    def tag(self, name: str) -> str:
        """A folder name for the variant called ``name``."""
        return name.split(" (")[0].replace(" ", "_").replace(",", "").replace("+", "plus")


RANKS = (1, 2, 3, 4, 5)
MAIN_RANK = 5
# (run name, Table 4 row label, variant): the rank rows score psi_c alone; no_selection is not in the paper
ROWS: Tuple[Tuple[str, str, Variant], ...] = tuple((f"rank{r}_eval", f"rank {r}", Variant(rank=r)) for r in RANKS) + (
    ("no_prior", "rank 5 + X_sel", Variant(rank=MAIN_RANK, use_selection=True)),
    ("full", "rank 5 + X_sel + prior", Variant(rank=MAIN_RANK, use_selection=True, use_prior=True)),
    ("no_selection", "rank 5 + prior (no X_sel; not in the paper)", Variant(rank=MAIN_RANK, use_prior=True)),
)
EVAL_CONFIG = "eval_phrase_cls.yaml"  # Table 4 is phrase classification ...
EVAL_OPTS = ("MODEL.VRD.TEST.K_PER_PAIR", "[1,0]")  # ... at k = 1 and free k


@dataclass(frozen=True)
class AblationRun:
    """One ``tools/train_net.py`` run of the ablation: ``config`` (under ``configs/<DATASET>/``)
    with the overrides ``opts`` (paths under ``output/``); ``label`` names the Table 4 row of an
    evaluation."""

    name: str
    config: str
    opts: Tuple[str, ...]
    eval_only: bool
    label: str = ""


def ablation_runs(dataset_dir: str) -> List[AblationRun]:
    """The Table 4 runs of the dataset whose configs are under ``configs/<dataset_dir>/`` ("VRD",
    "VG150"), in order: per rank stage 2 (``rank{r}``), for rank 5 only stage 3
    (``rank5_selection``: no row of ranks 1-4 uses X_sel), and the rank's row (``rank{r}_eval``,
    from its last stage), then the other rows of :data:`ROWS`. A rank's runs write
    ``output/<dataset_dir>/ablations/``, but rank 5's training runs are the main stage 2 and
    stage 3 (the configs' own folders)."""
    out = f"output/{dataset_dir}"

    def trained(r: int, stage: str) -> str:
        main = {"stage2": f"{out}/stage2_triplet", "stage3": f"{out}/stage3_selection"}
        return main[stage] if r == MAIN_RANK else f"{out}/ablations/rank{r}_{stage}"

    def last(r: int) -> str:  # the weights a rank's rows read: stage 3 only where X_sel was trained
        return trained(r, "stage3" if r == MAIN_RANK else "stage2")

    evals = {}
    for name, label, variant in ROWS:
        weights = ("MODEL.WEIGHTS", f"{last(variant.rank)}/model_final.pth")
        opts = tuple(variant.opts()) + EVAL_OPTS + weights + ("OUTPUT_DIR", f"{out}/ablations/{name}")
        evals[name] = AblationRun(name, EVAL_CONFIG, opts, True, label)
    runs = []
    for r in RANKS:  # each rank's chain, then its row
        rank = ("MODEL.VRD.RANK", str(r))
        weights = ("MODEL.WEIGHTS", f"{trained(r, 'stage2')}/model_final.pth")
        runs.append(AblationRun(f"rank{r}", "stage2_triplet.yaml", rank + ("OUTPUT_DIR", trained(r, "stage2")), False))
        if r == MAIN_RANK:
            opts = rank + weights + ("OUTPUT_DIR", trained(r, "stage3"))
            runs.append(AblationRun(f"rank{r}_selection", "stage3_selection.yaml", opts, False))
        runs.append(evals.pop(f"rank{r}_eval"))
    return runs + list(evals.values())
