"""The scene graph drawn as a graph: objects as labelled nodes, relations as labelled directed
edges, laid out in numpy and drawn with matplotlib's Agg backend (no Graphviz binary needed); and
the same graph as a Graphviz ``.dot`` text, written by pydot, for users who have Graphviz.

Both read the JSON-ready dict of :func:`vrd_d2.utils.visualizer.scene_graph_dict`: the nodes are
the objects that take part in its relations (in id order), the edges its relations in rank order,
coloured as the arrows of :class:`~vrd_d2.utils.visualizer.RelationVisualizer`.
"""

from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
import pydot
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch
from matplotlib.path import Path

from .visualizer import MAX_SIDE, MIN_SIDE, relation_colour, text_size

__all__ = ["GraphLayout", "layout_scene_graph", "plot_scene_graph", "scene_graph_dot"]

FONT_SIZE = 11.0  # points; the layout unit is the point, so text sizes and positions agree
REPULSION_RANGE, GRAVITY = 2.0, 0.05  # in units of the ideal edge length: keeps a graph compact
PIXELS_PER_POINT = 1.5  # the drawing's resolution when that fits in [min_side, max_side]


@dataclass
class GraphLayout:
    """Positions of a scene graph's boxes, in points, y up.

    Attributes:
        node_ids: [N] object ids of the nodes.
        node_texts, edge_texts: [N] and [M] the strings drawn.
        edges: [M, 2] int (subject node, object node), rows in relation rank order.
        centres: float [N + M, 2] box centres: the N nodes, then the M edge labels.
        sizes: float [N + M, 2] box (width, height), padding included.
    """

    node_ids: List[int]
    node_texts: List[str]
    edge_texts: List[str]
    edges: np.ndarray
    centres: np.ndarray
    sizes: np.ndarray

    def boxes(self) -> np.ndarray:
        """float [N + M, 4] boxes (x0, y0, x1, y1) of the nodes then the edge labels."""
        half = self.sizes / 2
        return np.concatenate([self.centres - half, self.centres + half], axis=1)


def layout_scene_graph(graph: Dict, font_size: float = FONT_SIZE, iterations: int = 300) -> GraphLayout:
    """
    Lay out ``graph``: a force-directed layout (Fruchterman-Reingold) of the graph where every
    relation is split in two by a point for its label (so labels repel each other and the nodes
    like nodes do), then the boxes of all nodes and labels are pushed apart until none overlap.
    Deterministic: it starts from a circle, with no random numbers.
    """
    rels = graph["relations"]
    labels = {o["id"]: o["label"] for o in graph["objects"]}
    node_ids = sorted({r["subject"] for r in rels} | {r["object"] for r in rels})
    row = {obj: i for i, obj in enumerate(node_ids)}
    node_texts = [f"{i}:{labels[i]}" for i in node_ids]
    edge_texts = [f"{k + 1}. {r['predicate']}" for k, r in enumerate(rels)]
    edges = np.array([(row[r["subject"]], row[r["object"]]) for r in rels], dtype=np.int64).reshape(-1, 2)
    pad = 0.5 * font_size
    sizes = (
        np.array(
            [text_size(t, font_size) for t in node_texts] + [text_size(t, 0.9 * font_size) for t in edge_texts]
        ).reshape(-1, 2)
        + 2 * pad
    )
    n, m = len(node_ids), len(rels)
    ideal = 1.5 * float(np.median(sizes[:, 0])) if len(sizes) else 1.0
    centres = _initial_positions(n, edges, ideal)
    centres = _force_directed(centres, _split_edges(n, edges), ideal, iterations)
    centres = _centre_parallel_labels(centres, n, edges)
    centres = _remove_overlaps(centres, sizes, margin=font_size)
    return GraphLayout(node_ids, node_texts, edge_texts, edges, centres, sizes)


def plot_scene_graph(
    graph: Dict, title: str = "", min_side: int = MIN_SIDE, max_side: int = MAX_SIDE, font_size: float = FONT_SIZE
) -> np.ndarray:
    """
    Draw ``graph`` as a graph.

    Returns:
        uint8 RGB image (H, W, 3) whose longer side lies in [``min_side``, ``max_side``]: a small
        graph is enlarged, a large one reduced (its text with it).
    """
    lay = layout_scene_graph(graph, font_size)
    n = len(lay.node_ids)
    note = "" if n else f"no relations to draw ({len(graph['objects'])} objects)"
    head = [t for t in (title, note) if t]
    boxes = lay.boxes()
    margin = 2 * font_size
    if len(boxes):
        x0, y0 = boxes[:, :2].min(axis=0) - margin
        x1, y1 = boxes[:, 2:].max(axis=0) + margin
    else:
        x0, y0, x1, y1 = 0.0, 0.0, 2 * margin, 0.0
    head_h = 1.6 * font_size * len(head)
    width = max(x1 - x0, max((text_size(t, font_size)[0] for t in head), default=0.0) + 2 * margin)
    height = (y1 - y0) + head_h
    longest = max(width, height)
    dpi = 72.0 * float(np.clip(PIXELS_PER_POINT * longest, min_side, max_side)) / longest
    fig = Figure(figsize=(width / 72.0, height / 72.0), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes([0.0, 0.0, 1.0, 1.0])
    ax.set_axis_off()
    ax.set_xlim(x0, x0 + width)
    ax.set_ylim(y0, y0 + height)
    for i, line in enumerate(head):
        ax.text(
            x0 + margin,
            y0 + height - 1.6 * font_size * (i + 0.8),
            line,
            fontsize=font_size,
            va="center",
            ha="left",
            color="black" if i or not title else "dimgray",
        )
    for k, (s, o) in enumerate(lay.edges.tolist()):
        path = _edge_path(lay.centres[s], lay.centres[n + k], lay.centres[o], boxes[s], boxes[o])
        colour = relation_colour(k)
        ax.add_patch(
            FancyArrowPatch(path=path, arrowstyle="-|>", mutation_scale=1.3 * font_size, color=colour, lw=1.4, zorder=1)
        )
        ax.text(
            *lay.centres[n + k],
            lay.edge_texts[k],
            fontsize=0.9 * font_size,
            ha="center",
            va="center",
            color="black",
            zorder=3,
            bbox=dict(boxstyle="round,pad=0.3", fc="white", ec=colour, lw=1.2),
        )
    for i, text in enumerate(lay.node_texts):
        ax.text(
            *lay.centres[i],
            text,
            fontsize=font_size,
            ha="center",
            va="center",
            zorder=4,
            bbox=dict(boxstyle="round,pad=0.4", fc="#e8f0fa", ec="#35506e", lw=1.2),
        )
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def scene_graph_dot(graph: Dict, title: str = "") -> str:
    """``graph`` as a Graphviz digraph: one node per object taking part in a relation
    (``o<id>``, labelled ``id:label``), one edge per relation labelled ``rank. predicate``, in
    the colour of the drawings, with its score as tooltip. pydot writes and quotes it."""
    rels = graph["relations"]
    used = {r["subject"] for r in rels} | {r["object"] for r in rels}
    dot = pydot.Dot("scene_graph", graph_type="digraph")
    if title:
        dot.set_graph_defaults(label=_dot_string(title), labelloc="t")
    dot.set_node_defaults(shape="box", style="rounded,filled", fillcolor="#e8f0fa")
    for obj in graph["objects"]:
        if obj["id"] in used:
            dot.add_node(pydot.Node(f"o{obj['id']}", label=_dot_string(f"{obj['id']}:{obj['label']}")))
    for k, r in enumerate(rels):
        label = _dot_string(f"{k + 1}. {r['predicate']}")
        tooltip = _dot_string("score {:.4g}".format(r["score"]))
        colour = to_hex(relation_colour(k))
        dot.add_edge(pydot.Edge(f"o{r['subject']}", f"o{r['object']}", label=label, color=colour, tooltip=tooltip))
    return dot.to_string()


def _dot_string(text: str) -> str:
    """``text`` as a quoted DOT string that Graphviz shows as written. pydot quotes only where it
    sees the need and leaves backslashes alone (to pass escapes such as ``\\l``): always quoted
    here, with backslashes doubled first, so that no label is read as a keyword, HTML or escape."""
    return pydot.core.make_quoted(text.replace("\\", "\\\\"))


def _initial_positions(n: int, edges: np.ndarray, ideal: float) -> np.ndarray:
    """Nodes on a circle (in id order), each label point between its nodes, nudged sideways by
    its rank among the relations of the same pair so that parallel edges start apart."""
    radius = max(ideal, ideal * n / np.pi)
    angle = np.pi / 2 - 2 * np.pi * np.arange(n) / max(n, 1)
    nodes = radius * np.stack([np.cos(angle), np.sin(angle)], axis=1) if n > 1 else np.zeros((n, 2))
    labels = np.zeros((len(edges), 2))
    seen: Dict[Tuple[int, int], int] = {}
    for k, (s, o) in enumerate(edges.tolist()):
        key = (min(s, o), max(s, o))
        j = seen[key] = seen.get(key, -1) + 1
        d = nodes[o] - nodes[s]
        normal = np.array([-d[1], d[0]]) / max(np.hypot(*d), 1e-9)
        side = (1 if s < o else -1) * (0.25 + 0.5 * j)
        labels[k] = (nodes[s] + nodes[o]) / 2 + side * ideal * normal
    return np.concatenate([nodes, labels], axis=0)


def _split_edges(n: int, edges: np.ndarray) -> np.ndarray:
    """[2M, 2] springs: subject - label point, label point - object (the label of edge k is n + k)."""
    mid = n + np.arange(len(edges))
    return np.concatenate([np.stack([edges[:, 0], mid], 1), np.stack([mid, edges[:, 1]], 1)]).reshape(-1, 2)


def _force_directed(pos: np.ndarray, springs: np.ndarray, ideal: float, iterations: int) -> np.ndarray:
    """Fruchterman-Reingold: repulsion ideal^2 / d between all points, attraction d^2 / ideal
    along ``springs``, a weak pull to the centre, and a step limit that cools linearly."""
    pos = pos.astype(np.float64).copy()
    if len(pos) < 2:
        return pos
    temperature = ideal
    for step in range(iterations):
        delta = pos[:, None, :] - pos[None, :, :]
        dist = np.maximum(np.linalg.norm(delta, axis=2), 1e-3 * ideal)
        repel = np.where(dist < REPULSION_RANGE * ideal, ideal**2 / dist**2, 0.0)
        force = (delta * repel[:, :, None]).sum(axis=1)
        d = pos[springs[:, 0]] - pos[springs[:, 1]]
        pull = d * (np.linalg.norm(d, axis=1, keepdims=True) / ideal)
        np.add.at(force, springs[:, 0], -pull)
        np.add.at(force, springs[:, 1], pull)
        force -= GRAVITY * (pos - pos.mean(axis=0))
        length = np.maximum(np.linalg.norm(force, axis=1, keepdims=True), 1e-12)
        pos += force / length * np.minimum(length, temperature * (1 - step / iterations) + 1e-3 * ideal)
    return pos - pos.mean(axis=0)


def _centre_parallel_labels(pos: np.ndarray, n: int, edges: np.ndarray) -> np.ndarray:
    """Labels of relations on the same pair of nodes moved to the middle of the pair, each keeping
    its distance from the line through the nodes: their curves then nest instead of crossing."""
    pos = pos.copy()
    groups: Dict[Tuple[int, int], List[int]] = {}
    for k, (s, o) in enumerate(edges.tolist()):
        groups.setdefault((min(s, o), max(s, o)), []).append(k)
    for (a, b), ks in groups.items():
        if len(ks) < 2:
            continue
        axis = pos[b] - pos[a]
        axis /= max(np.hypot(*axis), 1e-9)
        middle = (pos[a] + pos[b]) / 2
        for k in ks:
            offset = pos[n + k] - middle
            pos[n + k] = middle + offset - axis * (offset @ axis)
    return pos


def _remove_overlaps(pos: np.ndarray, sizes: np.ndarray, margin: float, max_rounds: int = 2000) -> np.ndarray:
    """Push boxes (centres ``pos``, ``sizes``) apart, each overlapping pair along the axis where
    it overlaps least, until no two boxes come closer than ``margin``."""
    pos = pos.copy()
    n = len(pos)
    if n < 2:
        return pos
    upper = np.triu(np.ones((n, n), dtype=bool), 1)
    for _ in range(max_rounds):
        delta = pos[:, None, :] - pos[None, :, :]
        need = (sizes[:, None, :] + sizes[None, :, :]) / 2 + margin
        overlap = need - np.abs(delta)
        clash = (overlap > 0).all(axis=2) & upper
        if not clash.any():
            break
        i, j = np.nonzero(clash)
        axis = np.argmin(overlap[i, j], axis=1)
        sign = np.sign(delta[i, j, axis])
        sign[sign == 0] = 1  # coincident centres: the earlier box moves the positive way
        push = np.zeros_like(pos)
        amount = sign * (overlap[i, j, axis] / 2 + 1e-6)
        np.add.at(push, (i, axis), amount)
        np.add.at(push, (j, axis), -amount)
        pos += push / np.maximum(1, np.bincount(np.concatenate([i, j]), minlength=n))[:, None] ** 0.5
    return pos


def _edge_path(start: np.ndarray, through: np.ndarray, end: np.ndarray, box_start, box_end) -> Path:
    """The quadratic Bezier curve from ``start`` to ``end`` that passes through ``through`` at its
    middle, as a polyline cut where it leaves the start box and enters the end box."""
    control = 2 * through - (start + end) / 2
    t = np.linspace(0.0, 1.0, 101)[:, None]
    pts = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end
    inside_start = _inside(pts, box_start)
    inside_end = _inside(pts, box_end)
    first = int(np.argmin(inside_start)) if not inside_start.all() else 0
    last = len(pts) - 1 - int(np.argmin(inside_end[::-1])) if not inside_end.all() else len(pts) - 1
    if last <= first:  # the boxes touch: a short straight stub
        first, last = 0, len(pts) - 1
    return Path(pts[first : last + 1])


def _inside(pts: np.ndarray, box) -> np.ndarray:
    return (pts[:, 0] >= box[0]) & (pts[:, 0] <= box[2]) & (pts[:, 1] >= box[1]) & (pts[:, 1] <= box[3])
