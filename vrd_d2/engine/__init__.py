from .launch import launch_cpu
from .trainer import SGDWithTotalNormClip, Trainer, build_vrd_optimizer
