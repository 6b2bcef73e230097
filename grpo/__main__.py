"""`python -m grpo ...` (what `torchrun -m grpo train ...` runs): the same app as the `grpo` command."""

from grpo.cli import main

main()
