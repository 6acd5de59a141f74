"""The embedded default dataset: procedurally generated shapes with box-pair relations.

Deterministic for a seed (byte-for-byte: same PNGs and jsons), generated on first use into
``$VRD_D2_CACHE/shapes-<version>-<seed>`` (default cache ``~/.cache/vrd_d2``), written into a
temporary folder and renamed, so a crash never leaves a half-written dataset.

It carries the phenomena the paper is about:

- multimodal relations: a pair is usually related by several valid predicates at once (e.g.
  ``left of`` + ``above`` + ``near`` + ``smaller than``);
- incomplete annotation: an "annotator" looks at a pair with probability ``exp(-gap / 30px)``
  (nearer pairs more often) and then labels each valid predicate with a predicate-specific
  probability; ``relations`` holds what was labelled, ``relations_complete`` every valid relation;
- skewed triplet frequencies: class and labelling probabilities are unequal;
- predicates that need geometry (left of, above, near, inside, larger than) and predicates fixed
  by the two colours (same colour as, different colour from; inside: a square of the other
  colour), so neither boxes nor classes alone suffice and the predicate co-varies with the class
  pair;
- hidden attributes: an object is in shadow with probability ``SHADOW_PROB`` (drawn dark grey,
  its colour invisible; the annotator still knows it, ``"shadowed": true`` in the json), so its
  class is uncertain between two colours and the colour predicates go with the hidden colour
  (exactly one of "same colour as" / "different colour from" holds): the triplet distribution of
  such a pair is a mixture of up to four (subject colour, object colour) components, not one
  class x predicates x one class. CP rank >= 4 represents it; rank 1 (the product of its
  marginals) cannot: ``shapes_oracle`` measures the recall this costs (v3: >= 3 points).

Images are 128x128 PNG (cv2) with 3-6 objects of 6 classes (shape x colour), 10 predicates;
1200 train / 100 val / 200 test images. Stored in the vrd json format (custom.py).
"""

import logging
import os
import shutil
import tempfile
from typing import Dict, Optional

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from vrd_d2.data.datasets.common import build_flip_map
from vrd_d2.data.datasets.custom import load_vrd_json_file

logger = logging.getLogger(__name__)

__all__ = [
    "SHAPES_VERSION",
    "SHAPE_CLASSES",
    "SHAPE_PREDICATES",
    "SPLIT_SIZES",
    "shapes_root",
    "generate_shapes",
    "ensure_shapes",
    "register_shapes",
    "valid_predicates",
    "expected_labels",
]

SHAPES_VERSION = "v5"  # v5: 1200 train images (v4: 600); v4: colours differ in luminance; v3 (never
# released): "different colour from" replaces "same shape as", shadow 0.2
SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "blue")
# Red is brighter than blue (luminance ~121 vs ~55; v3 and before: 91 vs 79, nearly equal): with
# isoluminant colours the detector's shape features (luminance edges) carry no colour and stage 1
# learned colour late or never (every blue object called red).
COLOUR_BGR = {"red": (70, 70, 240), "blue": (200, 50, 10)}
SHAPE_CLASSES = [f"{c} {s}" for c in COLOURS for s in SHAPES]
CLASS_PROBS = np.array([0.30, 0.20, 0.07, 0.20, 0.15, 0.08])  # skew: red circles common
SHAPE_PREDICATES = [
    "left of",
    "right of",
    "above",
    "below",
    "near",
    "larger than",
    "smaller than",
    "same colour as",
    "different colour from",
    "inside",
]
# Probability that an annotator looking at a pair writes down each valid predicate (skew).
LABEL_PROBS = np.array([0.60, 0.35, 0.50, 0.30, 0.70, 0.25, 0.15, 0.70, 0.70, 0.90])
SHADOW_PROB = 0.20  # v2: 0.15 (v1: none)
SHADOW_BGR = 28
SIZES = np.array([10, 14, 20, 28, 36, 44])
SIZE_PROBS = np.array([0.22, 0.22, 0.2, 0.16, 0.1, 0.1])
SPLIT_SIZES = {"train": 1200, "val": 100, "test": 200}
SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}
IMAGE_SIZE = 128
NEAR_PX = 12.0
LOOK_SCALE_PX = 30.0


def _class_shape_colour(cat: int):
    return SHAPES[cat % len(SHAPES)], COLOURS[cat // len(SHAPES)]


def _gap(a, b) -> float:
    """Euclidean distance between two XYXY boxes (0 if they touch or overlap)."""
    dx = max(0.0, max(b[0] - a[2], a[0] - b[2]))
    dy = max(0.0, max(b[1] - a[3], a[1] - b[3]))
    return float(np.hypot(dx, dy))


def _inside(a, b) -> bool:
    return a[0] >= b[0] and a[1] >= b[1] and a[2] <= b[2] and a[3] <= b[3]


def valid_predicates(box_s, cat_s, box_o, cat_o):
    """Every predicate that holds for (subject, object) by the dataset's definitions.

    Boxes XYXY_ABS; ids into SHAPE_CLASSES. Returns a sorted list of predicate ids.
    """
    out = []
    area_s = (box_s[2] - box_s[0]) * (box_s[3] - box_s[1])
    area_o = (box_o[2] - box_o[0]) * (box_o[3] - box_o[1])
    nested = _inside(box_s, box_o) or _inside(box_o, box_s)
    if box_s[2] <= box_o[0]:
        out.append(0)
    if box_s[0] >= box_o[2]:
        out.append(1)
    if box_s[3] <= box_o[1]:
        out.append(2)
    if box_s[1] >= box_o[3]:
        out.append(3)
    if not nested and _gap(box_s, box_o) <= NEAR_PX:
        out.append(4)
    if area_s >= 2 * area_o:
        out.append(5)
    if 2 * area_s <= area_o:
        out.append(6)
    colour_s = _class_shape_colour(cat_s)[1]
    colour_o = _class_shape_colour(cat_o)[1]
    out.append(7 if colour_s == colour_o else 8)  # same colour as / different colour from
    if _inside(box_s, box_o):
        out.append(9)
    return out


def _obvious(valid) -> int:
    """The predicate an annotator who looked writes down when the draws picked none."""
    return max(valid, key=lambda p: LABEL_PROBS[p])


def look_probability(box_s, box_o) -> float:
    """P(the annotator looks at the pair) = exp(-gap / LOOK_SCALE_PX)."""
    return float(np.exp(-_gap(box_s, box_o) / LOOK_SCALE_PX))


def expected_labels(valid) -> np.ndarray:
    """float [P]: expected number of times each predicate is labelled for a pair whose valid
    predicates are ``valid``, given that the annotator looked (each with LABEL_PROBS, and the
    obvious one when none was drawn)."""
    out = np.zeros(len(SHAPE_PREDICATES))
    valid = list(valid)
    if valid:
        out[valid] = LABEL_PROBS[valid]
        out[_obvious(valid)] += float(np.prod(1.0 - LABEL_PROBS[valid]))
    return out


def _shape_mask(shape: str, x1: int, y1: int, size: int):
    import cv2

    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    if shape == "circle":
        r = (size - 1) // 2
        cv2.circle(mask, (x1 + r, y1 + r), r, 255, -1)
    elif shape == "square":
        cv2.rectangle(mask, (x1, y1), (x1 + size - 1, y1 + size - 1), 255, -1)
    else:
        pts = np.array(
            [[x1, y1 + size - 1], [x1 + size - 1, y1 + size - 1], [x1 + (size - 1) // 2, y1]],
            np.int32,
        )
        cv2.fillPoly(mask, [pts], 255)
    return mask


def _place_objects(rng):
    """Sample 3-6 objects: list of (cat, x1, y1, size, container index or -1)."""
    while True:
        n = int(rng.integers(3, 7))
        objs = []
        for _ in range(n):
            cat = int(rng.choice(len(SHAPE_CLASSES), p=CLASS_PROBS))
            size = int(rng.choice(SIZES, p=SIZE_PROBS))
            for _attempt in range(50):
                hosts = [
                    k
                    for k, o in enumerate(objs)
                    if _class_shape_colour(o[0])[0] == "square"
                    and o[4] < 0
                    and o[3] >= 2 * size + 6
                    and _class_shape_colour(o[0])[1] != _class_shape_colour(cat)[1]
                ]
                if hosts and rng.random() < 0.8:
                    h = hosts[int(rng.integers(len(hosts)))]
                    hx, hy, hs = objs[h][1], objs[h][2], objs[h][3]
                    x1 = int(rng.integers(hx + 3, hx + hs - size - 3 + 1))
                    y1 = int(rng.integers(hy + 3, hy + hs - size - 3 + 1))
                    box = (x1, y1, x1 + size, y1 + size)
                    others = [o for k, o in enumerate(objs) if k != h and o[4] != h]
                    container = h
                else:
                    x1 = int(rng.integers(2, IMAGE_SIZE - size - 2 + 1))
                    y1 = int(rng.integers(2, IMAGE_SIZE - size - 2 + 1))
                    box = (x1, y1, x1 + size, y1 + size)
                    others = [o for o in objs if o[4] < 0]
                    container = -1
                if container >= 0:
                    # must not touch the host's other contents
                    others = others + [o for o in objs if o[4] == container]
                ok = all(_gap(box, (o[1], o[2], o[1] + o[3], o[2] + o[3])) >= 3 for o in others)
                if ok:
                    objs.append((cat, x1, y1, size, container))
                    break
        if len(objs) >= 3:
            return objs


def _make_image(rng, index: int, split: str):
    import cv2

    objs = _place_objects(rng)
    grey = float(rng.uniform(70, 170))
    ramp = np.linspace(-15, 15, IMAGE_SIZE)[None, :] * float(rng.choice([-1.0, 1.0]))
    noise = rng.normal(0.0, 6.0, (IMAGE_SIZE, IMAGE_SIZE, 3))
    image = grey + ramp[..., None] + noise
    boxes, cats = [], []
    shadowed = []
    for cat, x1, y1, size, _ in objs:
        shape, colour = _class_shape_colour(cat)
        mask = _shape_mask(shape, x1, y1, size)
        ys, xs = np.nonzero(mask)
        boxes.append([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1])
        cats.append(cat)
        jitter = rng.integers(-25, 26, 3)
        shadowed.append(bool(rng.random() < SHADOW_PROB))
        if shadowed[-1]:  # colour invisible: the annotator still knows it
            bgr = np.full(3, SHADOW_BGR) + jitter // 3
        else:
            bgr = np.clip(np.array(COLOUR_BGR[colour]) + jitter, 0, 255)
        image[mask > 0] = bgr
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    complete, annotated = [], []
    for i in range(len(objs)):
        for j in range(len(objs)):
            if i == j:
                continue
            valid = valid_predicates(boxes[i], cats[i], boxes[j], cats[j])
            complete.extend([i, j, p] for p in valid)
            looked = rng.random() < look_probability(boxes[i], boxes[j])
            draws = rng.random(len(valid))
            if not looked:
                continue
            labelled = [p for p, u in zip(valid, draws) if u < LABEL_PROBS[p]]
            if not labelled:  # an annotator who looked writes down at least the obvious one
                labelled = [_obvious(valid)]
            annotated.extend([i, j, p] for p in labelled)
    if not annotated:  # every image gets at least one label: the nearest pair's most obvious one
        pairs = [(i, j) for i in range(len(objs)) for j in range(len(objs)) if i != j]
        i, j = min(pairs, key=lambda ij: (_gap(boxes[ij[0]], boxes[ij[1]]), ij))
        valid = valid_predicates(boxes[i], cats[i], boxes[j], cats[j])
        annotated.append([i, j, _obvious(valid)])
    fname = f"{split}/{index:06d}.png"
    entry = {
        "file_name": fname,
        "image_id": index,
        "height": IMAGE_SIZE,
        "width": IMAGE_SIZE,
        "objects": [{"bbox": b, "category_id": c, "shadowed": h} for b, c, h in zip(boxes, cats, shadowed)],
        "relations": annotated,
        "relations_complete": complete,
    }
    return image, entry


def shapes_root(seed: int = 0) -> str:
    cache = os.path.expanduser(os.getenv("VRD_D2_CACHE", "~/.cache/vrd_d2"))
    return os.path.join(cache, f"shapes-{SHAPES_VERSION}-{seed}")


def generate_shapes(out_dir: str, seed: int = 0, split_sizes: Optional[Dict[str, int]] = None):
    """Generate the dataset into ``out_dir`` atomically (tmp folder beside it, then rename).

    ``split_sizes`` overrides SPLIT_SIZES (the first n images of a split do not depend on n).
    Returns ``out_dir``. If another process finished first, its copy is kept.
    """
    import json

    import cv2

    split_sizes = dict(SPLIT_SIZES if split_sizes is None else split_sizes)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".shapes-tmp-", dir=parent)
    try:
        for split, n in split_sizes.items():
            rng = np.random.default_rng([seed, SPLIT_INDEX[split]])
            os.makedirs(os.path.join(tmp, split))
            images = []
            for index in range(n):
                image, entry = _make_image(rng, index, split)
                if not cv2.imwrite(os.path.join(tmp, entry["file_name"]), image):
                    raise OSError(f"cv2.imwrite failed for {entry['file_name']} in {tmp}")
                images.append(entry)
            data = {
                "thing_classes": SHAPE_CLASSES,
                "predicate_classes": SHAPE_PREDICATES,
                "flip_predicate_pairs": [["left of", "right of"]],
                "seed": seed,
                "version": SHAPES_VERSION,
                "images": images,
            }
            with open(os.path.join(tmp, f"shapes_{split}.json"), "w") as f:
                json.dump(data, f, sort_keys=True)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not os.path.isdir(out_dir):
                raise
            logger.info(f"shapes dataset {out_dir} was generated concurrently; keeping that one")
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def ensure_shapes(root: Optional[str] = None, seed: int = 0) -> str:
    """Return the dataset folder, generating it first if it does not exist yet."""
    root = root or shapes_root(seed)
    if not os.path.isdir(root):
        logger.info(f"Generating the shapes dataset (seed {seed}) into {root} ...")
        generate_shapes(root, seed)
    return root


def register_shapes(root: Optional[str] = None, seed: int = 0, prefix: str = "shapes"):
    """Register ``<prefix>_{train,val,test}``; generation runs on the first DatasetCatalog.get."""
    folder = root or shapes_root(seed)
    flip = build_flip_map(SHAPE_PREDICATES, [("left of", "right of")])
    for split in SPLIT_SIZES:
        name = f"{prefix}_{split}"

        def load(split=split, name=name):
            r = ensure_shapes(folder, seed)
            return load_vrd_json_file(os.path.join(r, f"shapes_{split}.json"), r, name=name)

        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(
            thing_classes=list(SHAPE_CLASSES),
            predicate_classes=list(SHAPE_PREDICATES),
            flip_predicate_map=flip,
            evaluator_type="vrd",
            evaluation_protocol="lu",
            train_split=f"{prefix}_train",
            image_root=folder,
            json_file=os.path.join(folder, f"shapes_{split}.json"),
            shapes_seed=seed,
        )
