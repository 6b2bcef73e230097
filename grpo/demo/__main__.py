"""Rebuild the shipped demo weights after changing the build settings or code: python -m grpo.demo"""

from grpo.demo import BUILDS, SHIPPED, build_demo_model
from grpo.io import atomic_dir

for name, settings in BUILDS.items():
    target = SHIPPED / name
    print(f"building {name} into {target}")
    with atomic_dir(target, replace=True) as tmp:
        build_demo_model(tmp, settings)
