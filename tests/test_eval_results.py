"""tools/eval_results.py on Lu et al.'s gt.mat: .mat and JSON results, and bad inputs."""

import json
import os

import numpy as np
import pytest
from conftest import REPO_DIR as REPO  # noqa: E402
from conftest import SHARED_VRD_DIR as SHARED  # noqa: E402

GT_MAT = os.path.join(SHARED, "lu2016", "evaluation", "gt.mat")
PATH_MAT = os.path.join(SHARED, "lu2016", "data", "imagePath.mat")

from tools_loader import load_tool  # noqa: E402  (tests/ is on sys.path under pytest)

eval_results = load_tool("eval_results")  # tools/eval_results.py: only its main(argv) is used

from vrd_d2.evaluation import load_lu_ground_truth, write_results_json  # noqa: E402


@pytest.fixture(scope="module")
def lu_gt():
    if not (os.path.isfile(GT_MAT) and os.path.isfile(PATH_MAT)):
        pytest.skip(f"Lu et al.'s gt.mat not found under {SHARED} (set VRD_D2_SHARED_DATA)")
    return load_lu_ground_truth(GT_MAT, PATH_MAT)


def _cells(arrays):
    c = np.empty((1, len(arrays)), dtype=object)
    for i, a in enumerate(arrays):
        c[0, i] = a
    return c


def _write_lu_mat(path, gts, n_images=None):
    import scipy.io

    gts = gts[:n_images] if n_images else gts
    scipy.io.savemat(
        path,
        {
            "rlp_labels_ours": _cells([g["labels"].astype(np.float64) + 1 for g in gts]),
            "rlp_confs_ours": _cells([np.linspace(1, 0.5, len(g["labels"])).reshape(-1, 1) for g in gts]),
            "sub_bboxes_ours": _cells([g["sub_boxes"] for g in gts]),
            "obj_bboxes_ours": _cells([g["obj_boxes"] for g in gts]),
        },
    )


def _json_images(names, gts):
    return [
        {
            "image_id": i,
            "file_name": n,
            "record": {
                **g,
                "scores": np.linspace(1, 0.5, len(g["labels"])),
                "pair_rank": np.zeros(len(g["labels"]), np.int64),
            },
        }
        for i, (n, g) in enumerate(zip(names, gts))
    ]


def test_lu_mat_results_perfect_score_100(lu_gt, tmp_path):
    _, gts = lu_gt
    res_path, out = str(tmp_path / "res.mat"), str(tmp_path / "scores.json")
    _write_lu_mat(res_path, gts)
    eval_results.main([res_path, "--gt-mat", GT_MAT, "--json", out])
    scores = json.load(open(out))
    for key in (
        "relationship_R@50",
        "relationship_R@100",
        "phrase_R@50",
        "phrase_R@100",
        "zeroshot_relationship_R@50",
        "zeroshot_relationship_R@100",
        "zeroshot_phrase_R@50",
        "zeroshot_phrase_R@100",
    ):
        assert scores[key] == pytest.approx(100.0), key


def test_json_results_half_and_wrong_image_count(lu_gt, tmp_path):
    names, gts = lu_gt
    images = _json_images(names, gts)
    for im in images:  # keep every second relation
        r = im["record"]
        im["record"] = {k: v[::2] for k, v in r.items()}
    path = str(tmp_path / "res.json")
    write_results_json(path, images[::-1])  # order must not matter (matched by file name)
    scores = eval_results.main([path, "--gt-mat", GT_MAT])
    expected = 100.0 * sum((len(g["labels"]) + 1) // 2 for g in gts) / sum(len(g["labels"]) for g in gts)
    assert scores["relationship_R@100"] == pytest.approx(expected)
    write_results_json(path, images[:999])
    with pytest.raises(ValueError, match="999 images, but the ground truth has 1000"):
        eval_results.main([path, "--gt-mat", GT_MAT])


def test_lu_mat_wrong_number_of_cells(lu_gt, tmp_path):
    res_path = str(tmp_path / "res.mat")
    _write_lu_mat(res_path, lu_gt[1], n_images=998)
    with pytest.raises(ValueError, match="998 cells, expected 1000"):
        eval_results.main([res_path, "--gt-mat", GT_MAT])


@pytest.mark.parametrize(
    "row_field,value,message",
    [
        ("predicate", 70, r"row 1: predicate id 70 outside the class list"),
        ("subject", -1, r"row 1: subject id -1 outside the class list"),
        ("subject_box", [50.0, 10, 40, 20], r"row 1: subject_box .* x2 < x1"),
        ("score", None, r"row 1: score is nan"),
    ],
)
def test_bad_json_rows_name_image_and_row(lu_gt, tmp_path, row_field, value, message):
    names, gts = lu_gt
    path = str(tmp_path / "res.json")
    write_results_json(path, _json_images(names, gts))
    data = json.load(open(path))
    data["images"][0]["relations"][1][row_field] = value
    json.dump(data, open(path, "w"))
    with pytest.raises(ValueError, match=r"image 0 \(image_id=0, " + names[0] + r"\), " + message):
        eval_results.main([path, "--gt-mat", GT_MAT])


def test_bad_lu_mat_row_names_image(lu_gt, tmp_path):
    import scipy.io

    names, gts = lu_gt
    res_path = str(tmp_path / "res.mat")
    _write_lu_mat(res_path, gts)
    m = scipy.io.loadmat(res_path)
    m["rlp_confs_ours"][0, 3][2, 0] = np.nan
    scipy.io.savemat(res_path, {k: v for k, v in m.items() if not k.startswith("__")})
    with pytest.raises(ValueError, match=r"image 3 \(" + names[3] + r"\), row 2: score is nan"):
        eval_results.main([res_path, "--gt-mat", GT_MAT])
