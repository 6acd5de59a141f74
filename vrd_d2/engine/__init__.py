from .launch import launch_cpu
from .schedule import check_solver, iterations_for_epochs, resolve_schedule, stage_training_dicts
from .stage_inputs import check_evaluation_mode, check_stage_inputs
from .trainer import AdamWithTotalNormClip, SGDWithTotalNormClip, Trainer, build_vrd_optimizer
