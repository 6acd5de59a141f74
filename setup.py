from setuptools import find_packages, setup

setup(
    name="vrd_d2",
    version="0.1.0",
    description="Visual relationship detection with low-rank non-negative tensor decomposition, "
    "as a Detectron2 plugin",
    packages=find_packages(exclude=("tests", "tools", "configs")),
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
