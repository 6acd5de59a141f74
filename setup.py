import glob
import os
import shutil

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.realpath(__file__))


def get_model_zoo_configs():
    """Link (or, where links fail, copy) configs/ to vrd_d2/configs and return its files as the
    package's data, so that ``vrd_d2.model_zoo.get_config_file`` finds them after any install
    (detectron2's setup.py does the same with its model zoo)."""
    source = os.path.join(HERE, "configs")
    destination = os.path.join(HERE, "vrd_d2", "configs")
    if os.path.isdir(source):  # absent when building from an sdist, which holds vrd_d2/configs itself
        if os.path.islink(destination):
            os.unlink(destination)
        elif os.path.isdir(destination):
            shutil.rmtree(destination)
        try:
            os.symlink(os.path.join("..", "configs"), destination)
        except OSError:
            shutil.copytree(source, destination)
    return [
        os.path.relpath(p, os.path.join(HERE, "vrd_d2"))
        for ext in ("yaml", "json")
        for p in glob.glob(os.path.join(destination, "**", f"*.{ext}"), recursive=True)
    ]


setup(
    name="vrd_d2",
    version="0.1.0",
    description="Visual relationship detection with low-rank non-negative tensor decomposition, "
    "as a Detectron2 plugin",
    packages=find_packages(exclude=("tests", "tools", "configs")),
    # the published JSON Schema of the vrd json format (vrd_d2.data.vrd_json_check reads it)
    package_data={"vrd_d2": get_model_zoo_configs() + ["data/vrd_json.schema.json"]},
    python_requires=">=3.9",
    # torch, torchvision and detectron2 are installed by scripts/setup_env.sh (see README):
    # detectron2 is not on PyPI under its name and torch's build depends on the user's CUDA.
    install_requires=[
        "numpy",
        "opencv-python",
        "pycocotools",
        "fvcore",
        "h5py",
        "scipy",
        "matplotlib",
        "pydot>=3",
        "tqdm",
    ],
    extras_require={"dev": ["pytest", "hypothesis", "black==26.10.1", "isort==9.0.2"]},
)
