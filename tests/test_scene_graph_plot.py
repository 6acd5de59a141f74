"""The scene graph drawn as a graph (#15): PNGs for 0, 1, 2 and 30 relations opened and checked for
size and content, labels that do not overlap, and the Graphviz .dot text parsed back, by a small
reader here and by pydot's own parser."""

import os
import re

import numpy as np
import pydot
import pytest
from PIL import Image

from vrd_d2.utils.scene_graph_plot import layout_scene_graph, plot_scene_graph, scene_graph_dot
from vrd_d2.utils.visualizer import MAX_SIDE, MIN_SIDE, relation_colour

NAMES = ["person", "shirt", "pants", "car", "street", "building", "tree", "sky", "dog", "bag"]
PREDICATES = ["on", "wear", "next to", "in front of", "has", "behind", "above", "near", "ride", "hold"]


def make_graph(num_objects, pairs):
    """A scene-graph dict as ``scene_graph_dict`` writes it, relation k on ``pairs[k]``."""
    objects = [
        {"id": i, "box": [0, 0, 1, 1], "label": NAMES[i % len(NAMES)], "label_id": i % len(NAMES), "score": 1.0}
        for i in range(num_objects)
    ]
    rels = [
        {
            "subject": s,
            "object": o,
            "subject_label": NAMES[s % 10],
            "object_label": NAMES[o % 10],
            "predicate": PREDICATES[k % 10],
            "predicate_id": k % 10,
            "subject_id": s % 10,
            "object_id": o % 10,
            "score": 1.0 / (k + 1),
            "pair_rank": 0,
        }
        for k, (s, o) in enumerate(pairs)
    ]
    return {"objects": objects, "relations": rels}


def random_pairs(num_objects, num_relations, seed=0):
    rng = np.random.RandomState(seed)
    return [tuple(int(v) for v in rng.choice(num_objects, 2, replace=False)) for _ in range(num_relations)]


GRAPHS = {
    0: make_graph(3, []),
    1: make_graph(2, [(0, 1)]),
    2: make_graph(2, [(0, 1), (1, 0)]),  # both directions between one pair
    30: make_graph(20, random_pairs(20, 30)),
}


def overlapping_pairs(boxes):
    """Pairs (i, j) of [x0, y0, x1, y1] boxes whose interiors intersect (brute force)."""
    return [
        (i, j)
        for i in range(len(boxes))
        for j in range(i + 1, len(boxes))
        if min(boxes[i][2], boxes[j][2]) > max(boxes[i][0], boxes[j][0])
        and min(boxes[i][3], boxes[j][3]) > max(boxes[i][1], boxes[j][1])
    ]


@pytest.mark.parametrize("num_relations", [0, 1, 2, 30])
def test_graph_png_is_bounded_and_drawn(tmp_path, num_relations):
    graph = GRAPHS[num_relations]
    path = tmp_path / f"g{num_relations}.graph.png"
    Image.fromarray(plot_scene_graph(graph, title="img.jpg")).save(path)
    with Image.open(path) as im:
        assert im.format == "PNG"
        pixels = np.asarray(im.convert("RGB")).astype(int)
    assert MIN_SIDE <= max(pixels.shape[:2]) <= MAX_SIDE
    ink = (pixels < 200).any(axis=2).mean()
    assert ink > 0.001  # the title (and nodes, edges) are drawn, not a blank page
    for k in range(min(num_relations, 3)):  # each edge appears in its relation's colour
        colour = np.array(relation_colour(k)) * 255
        assert (np.abs(pixels - colour).max(axis=2) < 8).sum() > 20, f"edge {k} colour not found"


@pytest.mark.parametrize("num_relations", [0, 1, 2, 30])
def test_layout_has_one_node_per_object_in_a_relation_and_no_overlapping_text(num_relations):
    graph = GRAPHS[num_relations]
    lay = layout_scene_graph(graph)
    used = sorted({r["subject"] for r in graph["relations"]} | {r["object"] for r in graph["relations"]})
    assert lay.node_ids == used
    assert len(lay.edge_texts) == num_relations
    assert np.isfinite(lay.centres).all()
    assert overlapping_pairs(lay.boxes().tolist()) == []


def test_ten_relations_among_five_objects_do_not_overlap():
    # the README case: a handful of objects, about ten relations, several on the same pair
    pairs = [(0, 2), (1, 0), (2, 0), (0, 1), (1, 2), (0, 3), (4, 3), (4, 0), (0, 2), (3, 0)]
    lay = layout_scene_graph(make_graph(5, pairs))
    assert overlapping_pairs(lay.boxes().tolist()) == []


TOKEN = re.compile(r'\s*(?:"((?:[^"\\]|\\.)*)"|(->)|([A-Za-z_][A-Za-z0-9_]*|-?[0-9.]+)|([{}\[\];,=]))', re.S)


def parse_dot(text):
    """A small independent DOT reader: (node id -> attrs, [(tail, head, attrs)]) of a flat digraph."""
    tokens, pos = [], 0
    while pos < len(text.rstrip()):
        m = TOKEN.match(text, pos)
        assert m, f"cannot tokenize at {text[pos:pos + 30]!r}"
        quoted, arrow, ident, punct = m.groups()
        if quoted is not None:
            tokens.append(("str", re.sub(r"\\(.)", lambda c: "\n" if c.group(1) == "n" else c.group(1), quoted)))
        else:
            tokens.append(("sym", arrow or ident or punct))
        pos = m.end()
    assert tokens[:3] == [("sym", "digraph"), ("sym", "scene_graph"), ("sym", "{")] and tokens[-1] == ("sym", "}")
    nodes, edges, stmt = {}, [], []
    for tok in tokens[3:-1]:
        if tok != ("sym", ";"):
            stmt.append(tok)
            continue
        attrs, body = {}, stmt
        if ("sym", "[") in stmt:
            cut = stmt.index(("sym", "["))
            body, inner = stmt[:cut], [t for t in stmt[cut + 1 : -1] if t != ("sym", ",")]
            attrs = {inner[i][1]: inner[i + 2][1] for i in range(0, len(inner), 3)}
        names = [t[1] for t in body]
        if names and names[0] not in ("graph", "node", "edge"):
            if len(names) == 3 and names[1] == "->":
                edges.append((names[0], names[2], attrs))
            else:
                assert len(names) == 1, names
                nodes[names[0]] = attrs
        stmt = []
    return nodes, edges


@pytest.mark.parametrize("num_relations", [0, 1, 2, 30])
def test_dot_parses_back_to_the_nodes_and_edges(num_relations):
    graph = GRAPHS[num_relations]
    nodes, edges = parse_dot(scene_graph_dot(graph, title="img.jpg"))
    used = {r["subject"] for r in graph["relations"]} | {r["object"] for r in graph["relations"]}
    assert len(nodes) == len(used) and len(edges) == num_relations
    for k, (rel, (tail, head, attrs)) in enumerate(zip(graph["relations"], edges)):
        assert (tail, head) == (f"o{rel['subject']}", f"o{rel['object']}")
        assert attrs["label"] == f"{k + 1}. {rel['predicate']}"
        assert nodes[tail]["label"] == f"{rel['subject']}:{rel['subject_label']}"


def test_dot_escapes_quotes_backslashes_and_newlines():
    graph = make_graph(2, [(0, 1)])
    graph["objects"][0]["label"] = 'a "quoted" \\ name'
    graph["relations"][0]["predicate"] = 'says "hi"\nthen \\n'
    nodes, edges = parse_dot(scene_graph_dot(graph, title='file "x".jpg'))
    assert nodes["o0"]["label"] == '0:a "quoted" \\ name'
    assert edges[0][2]["label"] == '1. says "hi"\nthen \\n'


def read_with_pydot(text):
    """(graph attrs, node id -> attrs, [(tail, head, attrs)]) of a DOT text parsed by pydot, the
    quoted values unquoted and unescaped as Graphviz reads them."""
    (dot,) = pydot.graph_from_dot_data(text)

    def unquote(value):
        assert value.startswith('"') and value.endswith('"'), value
        return re.sub(r"\\(.)", lambda c: "\n" if c.group(1) == "n" else c.group(1), value[1:-1])

    def attrs(element):
        return {k: unquote(v) if k in ("label", "tooltip") else v for k, v in element.get_attributes().items()}

    graph = {}
    for stmt in dot.get_node_list():
        if stmt.get_name() == "graph":
            graph.update(attrs(stmt))
    nodes = {n.get_name(): attrs(n) for n in dot.get_node_list() if n.get_name() not in ("graph", "node", "edge")}
    edges = [(e.get_source(), e.get_destination(), attrs(e)) for e in dot.get_edge_list()]
    return graph, nodes, edges


@pytest.mark.parametrize("num_relations", [0, 1, 2, 30])
def test_dot_reads_back_with_pydot(num_relations):
    graph = GRAPHS[num_relations]
    attrs, nodes, edges = read_with_pydot(scene_graph_dot(graph, title="img.jpg"))
    assert attrs["label"] == "img.jpg"
    used = {r["subject"] for r in graph["relations"]} | {r["object"] for r in graph["relations"]}
    assert sorted(nodes) == sorted(f"o{i}" for i in used)
    assert len(edges) == len(graph["relations"])
    by_label = {e["label"]: (t, h, e) for t, h, e in edges}  # pydot groups edges by node pair
    for k, rel in enumerate(graph["relations"]):
        tail, head, e = by_label[f"{k + 1}. {rel['predicate']}"]
        assert (tail, head) == (f"o{rel['subject']}", f"o{rel['object']}")
        assert e["tooltip"] == "score {:.4g}".format(rel["score"])
        assert e["color"].strip('"') == "#{:02x}{:02x}{:02x}".format(*(round(255 * c) for c in relation_colour(k)))


@pytest.mark.parametrize(
    "text",
    ['"quoted whole"', "<b>html-like</b>", "graph", "node", "a\\lb", 'tab\there "x" \\', "1.5", "ünïcode"],
)
def test_dot_shows_any_text_as_written(text):
    # strings pydot would leave unquoted or pass through (keywords, numbers, "..." or <...>, Graphviz
    # escapes like \l) must still read back as the same text
    graph = make_graph(2, [(0, 1)])
    graph["objects"][1]["label"] = text
    graph["relations"][0]["predicate"] = text
    dot_text = scene_graph_dot(graph, title=text)
    for attrs, nodes, edges in (read_with_pydot(dot_text), ({},) + parse_dot(dot_text)):
        assert nodes["o1"]["label"] == f"1:{text}"
        assert edges[0][2]["label"] == f"1. {text}"
    assert read_with_pydot(dot_text)[0]["label"] == text


def test_dot_needs_no_graphviz_binary(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` executable to be found
    assert os.environ["PATH"] == str(tmp_path)
    _, nodes, edges = read_with_pydot(scene_graph_dot(GRAPHS[2]))
    assert len(nodes) == 2 and len(edges) == 2
