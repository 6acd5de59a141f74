#!/usr/bin/env python3
"""Install detectron2's Python package from an sdist that ships no C++ sources.

    install_detectron2_sdist.py --download NAME VERSION DEST_DIR
    install_detectron2_sdist.py --install SDIST.tar.gz SITE_PACKAGES

``--download`` fetches the sdist without building it (``pip download`` would try to build
it to read its metadata, which fails without the C++ sources). ``--install`` unpacks its
``detectron2/`` package, adds the model-zoo configs, a placeholder ``detectron2/_C.py``
that raises a clear ImportError, and a ``.dist-info`` so that pip and importlib.metadata
see detectron2 as installed.
"""

import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request

PLACEHOLDER_C = '''"""Placeholder for detectron2's compiled extension (not built in this environment).

vrd_d2 installs detectron2's Python sources only. The compiled ops (deformable
convolution, rotated boxes / rotated NMS / rotated ROIAlign, and the fast COCO
evaluation) are not available; nothing in vrd_d2 uses them. To get them, install an
official detectron2 build into this environment (see vrd_d2's README).
"""

_MESSAGE = (
    "detectron2._C (compiled ops: deformable conv, rotated boxes, fast COCO eval) is not "
    "installed: this environment has detectron2's Python sources only. Install an official "
    "detectron2 build to use {!r}."
)


def __getattr__(name):
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(name)
    raise ImportError(_MESSAGE.format(name))
'''


def download(name, version, dest):
    os.makedirs(dest, exist_ok=True)
    filename = f"{name}-{version}.tar.gz"
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    url = f"{index}/{name}/"
    req = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            files = json.load(r)["files"]
    except Exception as e:  # noqa: BLE001 - report any network/parse failure the same way
        sys.exit(f"install_detectron2_sdist: cannot read the package index {url}: {e}")
    match = [f for f in files if f["filename"].lower().replace("_", "-") == filename.lower()]
    if not match:
        sys.exit(f"install_detectron2_sdist: {filename} is not listed at {url}")
    entry = match[0]
    out = os.path.join(dest, entry["filename"])
    with urllib.request.urlopen(entry["url"], timeout=300) as r, open(out, "wb") as f:
        shutil.copyfileobj(r, f)
    expected = entry.get("hashes", {}).get("sha256")
    if expected:
        got = hashlib.sha256(open(out, "rb").read()).hexdigest()
        if got != expected:
            os.remove(out)
            sys.exit(f"install_detectron2_sdist: sha256 of {out} is {got}, the index says {expected}")
    print(f"install_detectron2_sdist: downloaded {out}")


def install(sdist, site):
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(tmp)
        (root,) = [os.path.join(tmp, d) for d in os.listdir(tmp)]
        pkg = os.path.join(root, "detectron2")
        if not os.path.isfile(os.path.join(pkg, "__init__.py")):
            sys.exit(f"install_detectron2_sdist: {sdist} has no detectron2/ package")
        target = os.path.join(site, "detectron2")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(pkg, target, symlinks=False)
        # detectron2's setup.py copies the top-level configs/ into model_zoo/configs.
        configs = os.path.join(root, "configs")
        zoo = os.path.join(target, "model_zoo", "configs")
        if os.path.isdir(configs) and not os.path.isdir(zoo):
            shutil.copytree(configs, zoo)
        with open(os.path.join(target, "_C.py"), "w") as f:
            f.write(PLACEHOLDER_C)
        version = "0.6"
        info = os.path.join(site, f"detectron2-{version}.dist-info")
        shutil.rmtree(info, ignore_errors=True)
        os.makedirs(info)
        with open(os.path.join(info, "METADATA"), "w") as f:
            f.write(
                f"Metadata-Version: 2.1\nName: detectron2\nVersion: {version}\n"
                "Summary: Detectron2 Python sources (no compiled ops), installed by vrd_d2\n"
            )
        with open(os.path.join(info, "INSTALLER"), "w") as f:
            f.write("vrd_d2\n")
        records = []
        for d, _, files in os.walk(target):
            for fn in files:
                records.append(os.path.relpath(os.path.join(d, fn), site) + ",,")
        records += [f"detectron2-{version}.dist-info/{n},," for n in ("METADATA", "INSTALLER", "RECORD")]
        with open(os.path.join(info, "RECORD"), "w") as f:
            f.write("\n".join(records) + "\n")
    print(f"install_detectron2_sdist: installed detectron2 into {target}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--download":
        download(*sys.argv[2:])
    elif len(sys.argv) == 4 and sys.argv[1] == "--install":
        install(*sys.argv[2:])
    else:
        sys.exit(__doc__)
