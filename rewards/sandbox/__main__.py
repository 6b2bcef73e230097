"""`python -m rewards.sandbox`: print which protections this machine lets the code sandbox apply."""

import logging
import sys

from rewards.sandbox.capabilities import detect

logging.basicConfig(level=logging.WARNING)
caps = detect()
print(f"level: {caps.level}")
for name in caps.applied:
    print(f"  applied: {name}")
for name in caps.missing:
    print(f"  missing: {name}")
if caps.report.get("cgroups"):
    tree_cap = "cgroup (memory.max of the program's own cgroup)"
elif caps.report.get("pidns"):
    tree_cap = "RSS watchdog (the keeper sums the tree's resident memory every 50 ms; no cgroup without root)"
else:
    tree_cap = "none (RLIMIT_AS caps each process only)"
print(f"  memory cap of a program's process tree: {tree_cap}")
for level, err in caps.why.items():
    print(f"  level {level} ruled out: {err}")
sys.exit(0 if caps.level in ("userns", "rootns") else 1)
