"""Rebuild the shipped demo weights after changing the build settings or code: python -m grpo.demo [NAME ...]
(every demo model when no name is given)."""

import sys

from grpo.demo import BUILDS, SHIPPED, build_demo_model
from grpo.io import atomic_dir

names = sys.argv[1:] or list(BUILDS)
unknown = [n for n in names if n not in BUILDS]
if unknown:
    sys.exit(f"unknown demo model {', '.join(unknown)}; built-in: {', '.join(BUILDS)}")
for name in names:
    target = SHIPPED / name
    print(f"building {name} into {target}")
    with atomic_dir(target, replace=True) as tmp:
        build_demo_model(tmp, BUILDS[name])
