"""`python -m rewards.sandbox`: print which protections this machine lets the code sandbox apply."""

import logging
import sys

from rewards.sandbox.capabilities import detect, tree_memory_cap

logging.basicConfig(level=logging.WARNING)
caps = detect()
print(f"level: {caps.level}")
for name in caps.applied:
    print(f"  applied: {name}")
for name in caps.missing:
    print(f"  missing: {name}")
print(f"  memory cap of a program's process tree: {tree_memory_cap(caps)}")
for level, err in caps.why.items():
    print(f"  level {level} ruled out: {err}")
sys.exit(0 if caps.level in ("userns", "rootns") else 1)
