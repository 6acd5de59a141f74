#!/usr/bin/env python
"""Convert a registered relationship dataset (vrd_train, vg150_test, shapes_val, ...) into the
vrd json format of docs/DATASETS.md, e.g.::

    python tools/convert_to_vrd_json.py --dataset vrd_test --output vrd_test.json

File names are written relative to ``--image-root`` (default: the dataset's ``image_root``
metadata), so the output can be registered with
``register_vrd_json(name, "vrd_test.json", image_root)``.

An existing ``--output`` is replaced only with ``--overwrite``, and never when it is one of the
dataset's own files (e.g. ``annotations_test.json``); the file is written whole or not at all.

``--check FILE`` validates a vrd json file against the published schema
(``vrd_d2/data/vrd_json.schema.json``) and the strict loader, prints each bad entry (file, JSON
path or image and entry, problem) and exits with status 1 if there is any::

    python tools/convert_to_vrd_json.py --check mydata_train.json [--image-root path/to/images]
"""

import argparse
import logging
import sys

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.logger import setup_logger


def convert(dataset: str, output: str, image_root=None, overwrite: bool = False) -> int:
    """Write ``dataset`` to ``output``; returns the number of images written. FileExistsError
    (before anything is read) for an ``output`` that exists (unless ``overwrite``) or is one of
    the dataset's files."""
    import vrd_d2.data  # noqa: F401  (registers the builtin datasets)
    import vrd_d2_studies.shapes_demo  # noqa: F401  (registers the shapes datasets)
    from vrd_d2.data.datasets.custom import dump_vrd_json
    from vrd_d2.utils.safe_write import check_output_path, dataset_files

    if dataset not in DatasetCatalog.list():
        raise KeyError(f"dataset {dataset!r} is not registered; known: " f"{sorted(n for n in DatasetCatalog.list())}")
    md = MetadataCatalog.get(dataset)
    check_output_path(output, dataset_files(md), overwrite)
    records = DatasetCatalog.get(dataset)
    check_output_path(output, dataset_files(md), overwrite)  # loading may have made its files (shapes)
    root = image_root or md.get("image_root", None)
    dump_vrd_json(
        records,
        md.thing_classes,
        md.predicate_classes,
        output,
        flip_predicate_map=md.get("flip_predicate_map", None),
        image_root=root,
    )
    logging.getLogger("vrd_d2").info(f"wrote {len(records)} images of {dataset} to {output}")
    return len(records)


def check(json_file: str, image_root=None) -> int:
    """Print each problem of ``json_file``; 1 if there is any, else 0."""
    from vrd_d2.data.vrd_json_check import check_vrd_json

    problems = check_vrd_json(json_file, image_root)
    for line in problems:
        print(line)
    print(f"{json_file}: {len(problems)} problem(s)" if problems else f"{json_file}: OK")
    return 1 if problems else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    task = parser.add_mutually_exclusive_group(required=True)
    task.add_argument("--dataset", help="registered dataset name to convert")
    task.add_argument("--check", metavar="FILE", help="validate a vrd json file (schema and strict loader)")
    parser.add_argument("--output", help="json file to write (with --dataset)")
    parser.add_argument(
        "--image-root",
        default=None,
        help="write file names relative to this folder (default: image_root metadata of the dataset); with "
        "--check: where images without height/width are (default: the file's folder)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output (never a dataset file)")
    args = parser.parse_args(argv)
    setup_logger(name="vrd_d2")
    if args.check:
        return check(args.check, args.image_root)
    if not args.output:
        parser.error("--output is required with --dataset")
    try:
        convert(args.dataset, args.output, args.image_root, overwrite=args.overwrite)
    except FileExistsError as e:
        parser.exit(2, f"convert_to_vrd_json.py: error: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
