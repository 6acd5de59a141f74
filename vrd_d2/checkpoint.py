"""Loading vrd_d2 weights safely and strictly: :class:`VRDCheckpointer`.

Detectron2's DetectionCheckpointer unpickles ``.pkl`` files (a pickle can run any code), skips
weights whose shape differs from the model's with a warning (so a rank-1 CP head loaded into a
rank-5 model stays random) and only warns when a checkpoint has none of the relation head (the
evaluation then reports random weights). VRDCheckpointer keeps its file handling and:

- refuses pickles unless the caller trusts the file (``trust_pickle=True``, ``--trust-pickle``);
  ``.pth`` / ``.pt`` files are read with ``torch.load(weights_only=True)``;
- raises ValueError for a relation-head weight whose shape differs from the model's (rank, class
  or predicate counts), naming the key and both shapes, unless the run trains that weight (e.g.
  stage 2 of another rank from a stage-1 checkpoint; never with ``require_relation_head``);
  detector weights of another shape are still re-initialised (a new class count is a deliberate
  fine-tune); each re-initialised key gets a log line;
- with ``require_relation_head`` (evaluation, demo): raises when the checkpoint lacks relation-head
  weights or matches no key of the model, and when ``MODEL.VRD.USE_PRIOR`` is on but the
  triplet prior is empty (no counts in the checkpoint and none from ``DATASETS.TRAIN``);
- on ``--resume``, reads ``last_checkpoint`` strictly: empty (a kill between fvcore opening it and
  writing the name), not text, or naming a missing file is an error naming it and the way out;
- writes checkpoints and ``last_checkpoint`` through a temporary file each, so a kill leaves the
  previous file or the whole new one, never an empty or truncated one;
- adds ``info`` (the Trainer's: class and predicate names and the config, see
  :mod:`vrd_d2.checkpoint_info`) to every checkpoint it saves, so that the weights stand alone;
  ``load`` returns them with the other entries the model does not take.
"""

import logging
import os
import pickle
from typing import Iterable, List, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .utils.safe_write import atomic_open, atomic_write_text

__all__ = ["VRDCheckpointer", "ResumeError", "is_relation_head_key", "DETECTOR_ROI_MODULES"]

logger = logging.getLogger(__name__)

# StandardROIHeads' own modules; everything else under ``roi_heads.`` is the relation head.
DETECTOR_ROI_MODULES = (
    "box_pooler",
    "box_head",
    "box_predictor",
    "mask_pooler",
    "mask_head",
    "keypoint_pooler",
    "keypoint_head",
)

TRUST_HINT = (
    "Load it only if you trust its source: pass --trust-pickle to the tools, or "
    "trust_pickle=True to VRDCheckpointer in Python."
)


class ResumeError(ValueError):
    """``--resume`` cannot tell from ``last_checkpoint`` which checkpoint to load; the message names
    the file and the way out (tools/train_net.py prints it as a one-line error)."""


def is_relation_head_key(key: str) -> bool:
    """Whether state-dict ``key`` belongs to the relation head (CP branches, spatial branch,
    selection head, triplet_counts), under any module layout of VRDROIHeads: every key under
    ``roi_heads.`` that is not one of StandardROIHeads' detector modules."""
    if not key.startswith("roi_heads."):
        return False
    return key.split(".")[1] not in DETECTOR_ROI_MODULES


def _short_list(keys: Iterable[str], n: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


class VRDCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that refuses untrusted pickles and mismatched relation-head weights
    (see the module docstring)."""

    def __init__(
        self,
        model,
        save_dir: str = "",
        *,
        trust_pickle: bool = False,
        require_relation_head: bool = False,
        info: Optional[dict] = None,
        **checkpointables,
    ):
        """
        Args:
            model, save_dir, checkpointables: as DetectionCheckpointer.
            trust_pickle: allow files that need arbitrary unpickling (``.pkl``, old ``.pth``).
            require_relation_head: the caller evaluates or runs the relation head: a checkpoint
                without its weights, or an empty prior with ``use_prior``, is an error.
            info: plain entries (str, lists of str) saved into every checkpoint (:meth:`save`),
                e.g. :func:`vrd_d2.checkpoint_info.checkpoint_info`.
        """
        super().__init__(model, save_dir, **checkpointables)
        self.trust_pickle = bool(trust_pickle)
        self.require_relation_head = bool(require_relation_head)
        self.info = dict(info or {})
        self._path = ""

    # ------------------------------------------------------------------------------ files
    def load(self, path: str, *args, **kwargs):
        if not path and self.require_relation_head:
            raise ValueError(
                "VRDCheckpointer: no checkpoint given (MODEL.WEIGHTS / --weights is empty): the relation "
                "head would run with random weights. Pass the model_final.pth of a relation stage."
            )
        if path and "://" not in path and not os.path.isfile(path):
            raise FileNotFoundError(f"VRDCheckpointer: checkpoint not found: {path}")
        self._path = path
        ret = super().load(path, *args, **kwargs)
        if path and self.require_relation_head:
            self._check_prior()
        return ret

    def _load_file(self, filename: str):
        if filename.endswith(".pkl"):
            if self.trust_pickle:
                return super()._load_file(filename)
            raise ValueError(
                f"VRDCheckpointer: {filename} is a pickle file, which can run code when loaded. {TRUST_HINT}"
            )
        try:
            data = torch.load(filename, map_location=torch.device("cpu"), weights_only=not self.trust_pickle)
        except pickle.UnpicklingError as e:
            why = [line.strip() for line in str(e).splitlines() if "Unsupported global" in line]
            raise ValueError(
                f"VRDCheckpointer: {filename} holds objects other than tensors and plain containers, so loading "
                f"it needs arbitrary unpickling ({why[0] if why else 'torch.load(weights_only=True) refused it'}). "
                f"{TRUST_HINT}"
            ) from None
        except (RuntimeError, EOFError, OSError) as e:
            raise ValueError(f"VRDCheckpointer: cannot read {filename} as a torch checkpoint: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"VRDCheckpointer: {filename} holds a {type(data).__name__}, expected a dict of weights")
        if filename.endswith(".pyth") and "model_state" in data:  # pycls, as DetectionCheckpointer
            state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        return data if "model" in data else {"model": data}

    def get_checkpoint_file(self) -> str:
        """The checkpoint ``last_checkpoint`` names (``--resume``); "" when it vanished meanwhile."""
        if "://" in self.save_dir:
            return super().get_checkpoint_file()
        tag = os.path.join(self.save_dir, "last_checkpoint")
        way_out = (
            "delete it to start from MODEL.WEIGHTS, or write into it the name of a checkpoint of "
            f"{self.save_dir} (model_*.pth) to resume from"
        )
        try:
            with open(tag, "rb") as f:
                name = f.read().decode("utf-8").strip()
        except FileNotFoundError:
            return ""
        except UnicodeDecodeError:
            raise ResumeError(f"VRDCheckpointer: cannot resume: {tag} is not text (corrupt); {way_out}") from None
        if not name or "\n" in name or "\x00" in name:
            what = "is empty" if not name else f"does not hold one file name ({name[:80]!r})"
            raise ResumeError(f"VRDCheckpointer: cannot resume: {tag} {what}; {way_out}")
        path = os.path.join(self.save_dir, name)
        if not os.path.isfile(path):
            raise ResumeError(f"VRDCheckpointer: cannot resume: {tag} names {path}, which does not exist; {way_out}")
        return path

    def save(self, name: str, **kwargs) -> None:
        """As fvcore's ``Checkpointer.save`` plus ``info``, through a temporary file (local folders)."""
        kwargs = {**self.info, **kwargs}
        if not self.save_dir or not self.save_to_disk or "://" in self.save_dir:
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        with atomic_open(save_file, "wb") as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if "://" in self.save_dir:
            return super().tag_last_checkpoint(last_filename_basename)
        atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)

    # ------------------------------------------------------------------------------ weights
    def _load_model(self, checkpoint):
        state = checkpoint["model"]
        if any(k.startswith("module.") for k in state):  # saved from DDP, as fvcore strips it
            state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
            checkpoint["model"] = state
        model_state = self.model.state_dict()
        self._check_relation_shapes(state, model_state)
        try:
            incompatible = super()._load_model(checkpoint)
        except RuntimeError as e:  # torch's size mismatch under a key renamed by a load hook
            raise ValueError(f"VRDCheckpointer: {self._path}: {e}") from None
        for key, shape_ckpt, shape_model in incompatible.incorrect_shapes:
            if not is_relation_head_key(key):  # relation-head keys were logged above
                logger.info(
                    f"VRDCheckpointer: detector weight {key} re-initialised: shape {shape_ckpt} in "
                    f"{self._path}, {shape_model} in the model (e.g. another class count)"
                )
        if self.require_relation_head:
            self._check_relation_keys(incompatible.missing_keys, model_state)
        return incompatible

    def _check_relation_shapes(self, state, model_state):
        # Re-initialising is intended only for what this run trains from scratch (stage 2 from a stage-1
        # checkpoint of another rank) and for counts the model rebuilds from DATASETS.TRAIN; a frozen or
        # evaluated weight of another shape would stay random.
        trained = {n for n, p in self.model.named_parameters() if p.requires_grad}
        for key, value in state.items():
            if key in model_state and is_relation_head_key(key) and hasattr(value, "shape"):
                got, want = tuple(value.shape), tuple(model_state[key].shape)
                if got == want:
                    continue
                if not self.require_relation_head and (key in trained or key.endswith("triplet_counts")):
                    logger.info(
                        f"VRDCheckpointer: relation-head weight {key} re-initialised: shape {got} in "
                        f"{self._path}, {want} in the model, which this run trains"
                    )
                else:
                    raise ValueError(
                        f"VRDCheckpointer: {self._path}: relation-head weight {key} has shape {got} in the "
                        f"checkpoint but {want} in the model: MODEL.VRD.RANK, MODEL.ROI_HEADS.NUM_CLASSES and "
                        f"MODEL.VRD.NUM_PREDICATES (and the branch sizes) must match the run that saved it"
                    )

    def _check_relation_keys(self, missing_keys: List[str], model_state):
        missing = set(missing_keys)
        if not set(model_state) - missing:
            raise ValueError(
                f"VRDCheckpointer: {self._path} matches no weight of the model (is it a vrd_d2 checkpoint of "
                f"this architecture? model keys look like {_short_list(model_state, 3)})"
            )
        relation_missing = [k for k in missing if is_relation_head_key(k)]
        if relation_missing:
            raise ValueError(
                f"VRDCheckpointer: {self._path} lacks relation-head weights: {_short_list(relation_missing)}. "
                f"Evaluate the model_final.pth of a relation stage (stage 2 or 3), not a detector checkpoint."
            )

    def _check_prior(self):
        use_prior = any(bool(getattr(m, "use_prior", False)) for m in self.model.modules())
        counts = [b for name, b in self.model.named_buffers() if name.endswith("triplet_counts")]
        if use_prior and counts and all(float(c.sum()) == 0 for c in counts):
            raise ValueError(
                f"VRDCheckpointer: MODEL.VRD.USE_PRIOR is on but the triplet prior is empty: {self._path} holds "
                f"no triplet counts and DATASETS.TRAIN gave none. Set DATASETS.TRAIN to the training split "
                f"(its counts are computed), use a checkpoint saved by vrd_d2 training, or set "
                f"MODEL.VRD.USE_PRIOR False."
            )
