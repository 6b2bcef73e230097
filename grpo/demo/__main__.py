"""Rebuild the shipped demo weights after changing the build settings or code: python -m grpo.demo"""

import os
import shutil

from grpo.demo import BUILDS, SHIPPED, build_demo_model

for name, settings in BUILDS.items():
    target = SHIPPED / name
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    print(f"building {name} into {target}")
    build_demo_model(tmp, settings)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
