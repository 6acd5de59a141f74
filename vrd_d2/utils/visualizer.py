"""Drawing scene graphs: boxes with labels, relations as numbered arrows, and a legend list."""
from typing import Dict, List, Optional, Sequence

import numpy as np
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import VisImage, Visualizer

__all__ = ["RelationVisualizer", "scene_graph_dict"]


def _centre(box: Sequence[float]):
    return (0.5 * (box[0] + box[2]), 0.5 * (box[1] + box[3]))


def scene_graph_dict(instances, relations, thing_classes: Sequence[str],
                     predicate_classes: Sequence[str]) -> Dict:
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
        {"id": i, "box": [round(v, 2) for v in b], "label": thing_classes[c], "label_id": c,
         "score": round(s, 5)}
        for i, (b, c, s) in enumerate(zip(boxes, classes, scores))
    ]
    rels = []
    for (s, o), sc, p, oc, score, rank in zip(
        relations.pair_indices.tolist(), relations.subject_classes.tolist(),
        relations.predicate_classes.tolist(), relations.object_classes.tolist(),
        relations.scores.tolist(), relations.pair_rank.tolist(),
    ):
        rels.append({
            "subject": s, "object": o, "subject_label": thing_classes[sc],
            "predicate": predicate_classes[p], "object_label": thing_classes[oc],
            "subject_id": sc, "predicate_id": p, "object_id": oc,
            "score": float(score), "pair_rank": rank,
        })
    return {"objects": objects, "relations": rels}


class RelationVisualizer:
    """
    Draws a scene graph with Detectron2's :class:`Visualizer` on the image extended by a white
    legend panel on its right: every object box with ``id:label``, every relation as an arrow
    from the subject's to the object's box centre tagged with its rank number, and the legend
    listing ``rank. subject(id) predicate object(id) score`` in the arrow's colour.
    """

    def __init__(self, img_rgb: np.ndarray, scale: Optional[float] = None):
        """
        Args:
            img_rgb: (H, W, 3) uint8 RGB image.
            scale: output scale; default: small images are enlarged to 640 px on their longer
                side so that labels stay readable.
        """
        self.img = img_rgb
        self.scale = scale if scale is not None else max(1.0, 640.0 / max(img_rgb.shape[:2]))

    def draw_scene_graph(self, graph: Dict) -> VisImage:
        h, w = self.img.shape[:2]
        font = max(10.0, min(h, w) / 40.0) / min(self.scale, 2.0) * 1.2 if self.scale > 1 else max(10.0, min(h, w) / 40.0)
        rels: List[Dict] = graph["relations"]
        objects: List[Dict] = graph["objects"]
        lines = ["{}. {}({}) {} {}({})  {:.3g}".format(
            i + 1, r["subject_label"], r["subject"], r["predicate"], r["object_label"],
            r["object"], r["score"]) for i, r in enumerate(rels)]
        title = "relations (subject predicate object, score)"
        longest = max([len(t) for t in lines] + [len(title)])
        panel_w = int(longest * font * 0.62) + 20
        needed_h = int((len(lines) + 2) * font * 1.5)
        canvas_h = max(h, needed_h)
        canvas = np.full((canvas_h, w + panel_w, 3), 255, dtype=np.uint8)
        canvas[:h, :w] = self.img
        vis = Visualizer(canvas, scale=self.scale)
        palette = colormap(rgb=True, maximum=1)
        used = {r["subject"] for r in rels} | {r["object"] for r in rels}
        for obj in objects:
            x0, y0, x1, y1 = obj["box"]
            colour = "lime" if obj["id"] in used else "lightgray"
            vis.draw_box((x0, y0, x1, y1), alpha=0.9, edge_color=colour)
            vis.draw_text("{}:{}".format(obj["id"], obj["label"]), (x0 + 2, y0 + 2),
                          font_size=font * 0.8, color=colour, horizontal_alignment="left")
        ax = vis.output.ax
        vis.draw_text(title, (w + 10, font),
                      font_size=font * 0.9, color="black", horizontal_alignment="left")
        for i, (rel, text) in enumerate(zip(rels, lines)):
            colour = tuple(palette[i % len(palette)])
            sx, sy = _centre(objects[rel["subject"]]["box"])
            ox, oy = _centre(objects[rel["object"]]["box"])
            ax.annotate("", xy=(ox, oy), xytext=(sx, sy), arrowprops=dict(
                arrowstyle="-|>", color=colour, lw=max(1.5, font / 6), shrinkA=4, shrinkB=4,
                mutation_scale=font * 1.4))
            vis.draw_text(str(i + 1), ((sx + ox) / 2, (sy + oy) / 2), font_size=font * 0.9,
                          color=colour, horizontal_alignment="center")
            vis.draw_text(text, (w + 10, font * (2.4 + 1.5 * i)), font_size=font * 0.85,
                          color=colour, horizontal_alignment="left")
        return vis.output
