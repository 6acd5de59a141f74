"""Multi-process training on CPU: detectron2's launch with the gloo backend."""

from datetime import timedelta

import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm

__all__ = ["launch_cpu"]


def _cpu_worker(local_rank, main_func, world_size, dist_url, args, timeout):
    """detectron2.engine.launch._distributed_worker for CPU: gloo, no cuda.set_device."""
    dist.init_process_group(
        backend="gloo", init_method=dist_url, world_size=world_size, rank=local_rank, timeout=timeout
    )
    assert comm._LOCAL_PROCESS_GROUP is None
    comm._LOCAL_PROCESS_GROUP = dist.new_group(list(range(world_size)))
    comm.synchronize()
    main_func(*args)


def launch_cpu(main_func, num_procs: int, dist_url: str = "auto", args=(), timeout=timedelta(minutes=30)):
    """Run ``main_func(*args)`` in ``num_procs`` gloo processes on this machine (1: in-process)."""
    if num_procs <= 1:
        return main_func(*args)
    if dist_url == "auto":
        from detectron2.engine.launch import _find_free_port

        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    mp.spawn(_cpu_worker, nprocs=num_procs, args=(main_func, num_procs, dist_url, args, timeout), daemon=False)
