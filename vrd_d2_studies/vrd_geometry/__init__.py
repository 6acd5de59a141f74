"""The geometry-only head on the real VRD annotations (``tools/vrd_real.py``)."""
