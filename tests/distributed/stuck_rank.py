"""A loop shaped like the trainer's (stages, a collective in grpo/train) on however many ranks torchrun starts, in
which rank 1 gets stuck in grpo/score of step STEP: `sleep` (its main thread blocks forever; its watchdog still
runs) or `stop` (it SIGSTOPs itself: nothing in it runs). For tests/test_heartbeat.py, which times how soon the
job ends.

    torchrun --standalone --nproc-per-node 2 stuck_rank.py sleep|stop STEP HEARTBEAT_S TIMEOUT_S
"""

import os
import signal
import sys
import time
from pathlib import Path

import torch

from grpo.parallel import close_world, init_world, launched_world
from grpo.train.profiling import StepProfiler, stage

mode, stuck_step, heartbeat_s, timeout_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
world = launched_world()
init_world(world, torch.device("cpu"), timeout_s, heartbeat_s=heartbeat_s)
profiler = StepProfiler(0, "torch", Path("."), enabled=False)  # its begin(step) tells the heartbeat the step
for step in range(1, 1000):
    profiler.begin(step)
    with stage("grpo/step"):
        with stage("grpo/generate"):
            time.sleep(0.05)
        with stage("grpo/score"):
            if world.rank == 1 and step == stuck_step:
                print(f"rank 1 stuck in step {step} ({mode})", file=sys.stderr, flush=True)
                if mode == "stop":
                    time.sleep(3)  # long enough for its watchdog to publish that it is in this stage
                    os.kill(os.getpid(), signal.SIGSTOP)
                time.sleep(10**6)
        with stage("grpo/train"):
            world.sum([1.0])  # where rank 0 waits for rank 1
    if world.is_main:
        print(f"step {step} done", file=sys.stderr, flush=True)
close_world(world)
