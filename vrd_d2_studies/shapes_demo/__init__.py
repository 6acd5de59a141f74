"""``make demo``: every stage of the paper on the embedded shapes data (generated on first use).

Importing this package registers the shapes datasets (shapes_train, shapes_val, shapes_test) in
Detectron2's catalog, as importing :mod:`vrd_d2` registers the builtin ones; the configs under
``configs/Shapes`` need it.
"""

from .data import ensure_shapes, generate_shapes, register_shapes, shapes_root

__all__ = ["ensure_shapes", "generate_shapes", "register_shapes", "shapes_root"]

register_shapes()
