"""Drawing scene graphs on their image: boxes with labels, relations as numbered arrows, and a
legend list; the drawing's size is bounded whatever the image's size."""

import functools
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import VisImage, Visualizer
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.font_manager import FontProperties

__all__ = ["RelationVisualizer", "scene_graph_dict", "relation_colour", "text_size"]

# Longest side of a drawing, in pixels: small images are enlarged so that labels stay readable,
# large ones reduced so that memory stays bounded (a 6000 x 6000 photo would need gigabytes).
MIN_SIDE, MAX_SIDE = 480, 2000


def _centre(box: Sequence[float]):
    return (0.5 * (box[0] + box[2]), 0.5 * (box[1] + box[3]))


def scene_graph_dict(instances, relations, thing_classes: Sequence[str], predicate_classes: Sequence[str]) -> Dict:
    """
    A JSON-ready scene graph of one image.

    Args:
        instances: ``Instances`` with ``pred_boxes`` (XYXY_ABS), ``pred_classes``, ``scores``.
        relations: the relation field (already selected, e.g. by ``select_relations``) with
            ``pair_indices`` into ``instances``.

    Returns:
        ``{"objects": [{id, box, label, label_id, score}], "relations": [{subject, object,
        subject_label, predicate, object_label, predicate_id, score, pair_rank}]}``.
    """
    boxes = instances.pred_boxes.tensor.tolist()
    classes = instances.pred_classes.tolist()
    scores = instances.scores.tolist()
    objects = [
        {"id": i, "box": [round(v, 2) for v in b], "label": thing_classes[c], "label_id": c, "score": round(s, 5)}
        for i, (b, c, s) in enumerate(zip(boxes, classes, scores))
    ]
    rels = []
    for (s, o), sc, p, oc, score, rank in zip(
        relations.pair_indices.tolist(),
        relations.subject_classes.tolist(),
        relations.predicate_classes.tolist(),
        relations.object_classes.tolist(),
        relations.scores.tolist(),
        relations.pair_rank.tolist(),
    ):
        rels.append(
            {
                "subject": s,
                "object": o,
                "subject_label": thing_classes[sc],
                "predicate": predicate_classes[p],
                "object_label": thing_classes[oc],
                "subject_id": sc,
                "predicate_id": p,
                "object_id": oc,
                "score": float(score),
                "pair_rank": rank,
            }
        )
    return {"objects": objects, "relations": rels}


def relation_colour(rank: int) -> Tuple[float, float, float]:
    """The RGB colour (in [0, 1]) of the relation at 0-based ``rank``, the same in every drawing."""
    palette = _palette()
    return tuple(float(c) for c in palette[rank % len(palette)])


@functools.lru_cache(maxsize=1)
def _palette() -> np.ndarray:
    return colormap(rgb=True, maximum=1)


def text_size(text: str, size: float) -> Tuple[float, float]:
    """(width, height) of ``text`` set in the default sans-serif font at ``size`` (any unit: the
    result is in the same unit), as matplotlib will render it."""
    prop = FontProperties(family=["sans-serif"], size=size)
    width, _, _ = _renderer().get_text_width_height_descent(text or " ", prop, ismath=False)
    return float(width), float(size * 1.2)


@functools.lru_cache(maxsize=1)
def _renderer() -> RendererAgg:
    return RendererAgg(1, 1, 72)  # at 72 dpi one point is one pixel: sizes come back in the font's unit


class RelationVisualizer:
    """
    Draws a scene graph with Detectron2's :class:`Visualizer` on the image extended by a white
    legend panel on its right: every object box with ``id:label``, every relation as an arrow
    from the subject's to the object's box centre tagged with its rank number, and the legend
    listing ``rank. subject(id) predicate object(id) score`` in the arrow's colour.

    The image is first resized so that its longer side lies in [``MIN_SIDE``, ``MAX_SIDE`` -
    legend width]; the legend is at most ``MAX_SIDE`` / 3 wide (long lines are cut with "...")
    and as tall as ``MAX_SIDE`` (relations beyond are counted on a last line), so the drawing's
    longer side lies in [``MIN_SIDE``, ``MAX_SIDE``] whatever the image's size or aspect.
    """

    def __init__(self, img_rgb: np.ndarray, min_side: int = MIN_SIDE, max_side: int = MAX_SIDE):
        """
        Args:
            img_rgb: (H, W, 3) uint8 RGB image.
            min_side, max_side: bounds of the drawing's longer side, in pixels.
        """
        if not 0 < min_side <= max_side:
            raise ValueError(f"RelationVisualizer: need 0 < min_side <= max_side, found {min_side}, {max_side}")
        self.img = img_rgb
        self.min_side, self.max_side = min_side, max_side

    def draw_scene_graph(self, graph: Dict) -> VisImage:
        """Draw ``graph`` (the dict of :func:`scene_graph_dict`, boxes in ``self.img``'s pixels)."""
        h, w = self.img.shape[:2]
        panel_max = self.max_side // 3
        side = min(max(max(h, w), self.min_side), self.max_side - panel_max)
        scale = side / max(h, w)
        dh, dw = max(1, round(h * scale)), max(1, round(w * scale))
        sx, sy = dw / w, dh / h
        font_px = float(np.clip(side / 45.0, 12.0, 24.0))
        line_px = 1.5 * font_px
        rels: List[Dict] = graph["relations"]
        objects: List[Dict] = graph["objects"]
        lines = [
            "{}. {}({}) {} {}({})  {:.3g}".format(
                i + 1, r["subject_label"], r["subject"], r["predicate"], r["object_label"], r["object"], r["score"]
            )
            for i, r in enumerate(rels)
        ]
        max_rows = int((self.max_side - 2.4 * line_px) // line_px)
        if len(lines) > max_rows:
            lines = lines[: max_rows - 1] + [f"... {len(rels) - max_rows + 1} more in the JSON"]
        title = "relations (subject predicate object, score)"
        text_px = 0.85 * font_px
        longest = max(text_size(t, text_px)[0] for t in lines + [title])
        panel_w = int(np.ceil(min(longest + 2 * font_px, panel_max)))
        title, *lines = [_fit(t, panel_w - 2 * font_px, text_px) for t in [title] + lines]
        canvas_h = min(max(dh, int((len(lines) + 2.4) * line_px)), self.max_side)
        canvas = np.full((canvas_h, dw + panel_w, 3), 255, dtype=np.uint8)
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        canvas[:dh, :dw] = cv2.resize(np.ascontiguousarray(self.img), (dw, dh), interpolation=interpolation)
        vis = Visualizer(canvas, scale=1.0)
        pt = 72.0 / vis.output.dpi  # draw_text sizes are points; ours are pixels
        used = {r["subject"] for r in rels} | {r["object"] for r in rels}
        boxes = {o["id"]: _scaled(o["box"], sx, sy) for o in objects}
        for obj in objects:
            x0, y0, x1, y1 = boxes[obj["id"]]
            colour = "lime" if obj["id"] in used else "lightgray"
            vis.draw_box((x0, y0, x1, y1), alpha=0.9, edge_color=colour)
            vis.draw_text(
                "{}:{}".format(obj["id"], obj["label"]),
                (x0 + 2, y0 + 2),
                font_size=0.8 * font_px * pt,
                color=colour,
                horizontal_alignment="left",
            )
        ax = vis.output.ax
        vis.draw_text(
            title, (dw + font_px, 0.6 * font_px), font_size=text_px * pt, color="black", horizontal_alignment="left"
        )
        for i, rel in enumerate(rels):
            colour = relation_colour(i)
            x, y = _centre(boxes[rel["subject"]])
            ox, oy = _centre(boxes[rel["object"]])
            ax.annotate(
                "",
                xy=(ox, oy),
                xytext=(x, y),
                arrowprops=dict(
                    arrowstyle="-|>",
                    color=colour,
                    lw=max(1.5, font_px / 8),
                    shrinkA=4,
                    shrinkB=4,
                    mutation_scale=font_px,
                ),
            )
            vis.draw_text(
                str(i + 1),
                ((x + ox) / 2, (y + oy) / 2),
                font_size=0.9 * font_px * pt,
                color=colour,
                horizontal_alignment="center",
            )
        for i, text in enumerate(lines):
            colour = relation_colour(i) if i < len(rels) and not text.startswith("...") else (0, 0, 0)
            vis.draw_text(
                text,
                (dw + font_px, (2.0 + i) * line_px),
                font_size=text_px * pt,
                color=colour,
                horizontal_alignment="left",
            )
        return vis.output


def _scaled(box: Sequence[float], sx: float, sy: float) -> Tuple[float, float, float, float]:
    return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def _fit(text: str, width: float, size: float) -> str:
    """``text`` cut (with "...") so that it is at most ``width`` wide at font ``size``."""
    if text_size(text, size)[0] <= width:
        return text
    low, high = 0, len(text)  # the longest prefix that fits with "..." lies in [low, high)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if text_size(text[:mid] + "...", size)[0] <= width else (low, mid)
    return text[:low] + "..."
