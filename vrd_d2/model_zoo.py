"""The configs of ``configs/`` found inside the installed package, as detectron2's
``model_zoo.get_config_file``: ``setup.py`` links (or copies) ``configs/`` to ``vrd_d2/configs``
and installs its files with the package, so that a non-editable ``pip install .`` finds them.

    cfg.merge_from_file(get_config_file("VRD/stage2_triplet.yaml"))
"""

import os

__all__ = ["get_config_root", "get_config_file"]

_PACKAGE_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
# a source checkout used without building (PYTHONPATH=.): setup.py has not made the link yet
_CHECKOUT_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def get_config_root() -> str:
    """The folder holding the configs: ``vrd_d2/configs`` of the installed package, or ``configs/``
    of the source checkout that the package is imported from when it has not been built. A
    FileNotFoundError naming both when neither exists."""
    for root in (_PACKAGE_CONFIGS, _CHECKOUT_CONFIGS):
        if os.path.isdir(root):
            return root
    raise FileNotFoundError(
        f"vrd_d2.model_zoo: no configs folder: neither {_PACKAGE_CONFIGS} (installed by setup.py) "
        f"nor {_CHECKOUT_CONFIGS} (a source checkout) exists; reinstall vrd_d2 (pip install .)"
    )


def get_config_file(config_path: str) -> str:
    """The path of ``config_path`` (relative to ``configs/``, e.g. ``"VRD/stage2_triplet.yaml"``)
    inside the installed package. A FileNotFoundError naming the path when there is no such
    config."""
    root = get_config_root()
    path = os.path.normpath(os.path.join(root, config_path))
    if os.path.isabs(config_path) or not path.startswith(root + os.sep) or not os.path.isfile(path):
        raise FileNotFoundError(f"vrd_d2.model_zoo: {config_path!r} is not a config of the model zoo ({path})")
    return path
