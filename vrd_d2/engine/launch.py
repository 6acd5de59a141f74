"""Multi-process training on CPU: detectron2's launch with the gloo backend."""

import logging
import os
import sys
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
    comm.synchronize()
    dist.destroy_process_group()
    _exit_without_finalization()


def _exit_without_finalization():
    """End a finished worker with ``os._exit(0)`` once its logs and streams are flushed.

    A gloo worker thread releases the last collective's tensors after the caller already has the
    result, and releasing a tensor that has a Python object takes the GIL. When that happens after
    interpreter finalization began, the thread is unwound inside a C++ destructor and the process
    dies of SIGABRT ("terminate called without an active exception") although all its work is
    done: mp.spawn then raises ProcessExitedException. Seen in about 1 of 30 2-process runs on 2
    busy cores (torch 2.14, see pytorch/pytorch#179291, abandoned). Skipping finalization avoids it.
    """
    logging.shutdown()  # flushes and closes every handler, e.g. detectron2's log.txt
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def launch_cpu(main_func, num_procs: int, dist_url: str = "auto", args=(), timeout=timedelta(minutes=30)):
    """Run ``main_func(*args)`` in ``num_procs`` gloo processes on this machine (1: in-process).

    Return values of ``main_func`` are dropped when ``num_procs > 1``, as in detectron2's launch;
    write results to files. Each worker exits with ``os._exit(0)`` after ``main_func`` returns (see
    ``_exit_without_finalization``): ``atexit`` handlers of the worker do not run.
    """
    if num_procs <= 1:
        return main_func(*args)
    if dist_url == "auto":
        from detectron2.engine.launch import _find_free_port

        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    mp.spawn(_cpu_worker, nprocs=num_procs, args=(main_func, num_procs, dist_url, args, timeout), daemon=False)
