"""Studies beside the vrd_d2 library: the embedded shapes demo, the real-VRD geometry study, the
ablation runner they share and the benchmarks. They import :mod:`vrd_d2`; the library never imports
them."""
