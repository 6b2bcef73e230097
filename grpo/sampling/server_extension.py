"""grpo's worker extension for a vLLM server (`grpo serve` passes --worker-extension-cls with this class): vLLM
mixes it into each of the server's workers, and the trainer calls its methods by name through the server's
/collective_rpc route (which passes strings only). It runs inside vLLM's worker process: `self` is the worker.

Only the file transfer (a server on the trainer's machine, CPU) goes through here; on GPUs weights come through
vLLM's own weight-transfer API (grpo/sampling/server_transfer.py)."""

from __future__ import annotations

import inspect


class WeightLoader:
    grpo_version = "-1"  # the version the trainer last pushed; -1: the checkpoint the server started from

    def grpo_weights_version(self) -> str:
        """The probe the trainer calls at set-up (that the extension is loaded), and the loaded version."""
        return self.grpo_version

    def grpo_load_weights(self, path: str, version: str) -> str:
        """Load the safetensors file at `path` (checkpoint names and layout) as weight version `version`."""
        from safetensors.torch import load_file

        weights = load_file(path, device="cpu")
        reload = getattr(self, "reload_weights", None)
        runner_reload = getattr(getattr(self, "model_runner", None), "reload_weights", None)
        # the worker's reload_weights forwards *args/**kwargs to its model runner's, whose signature tells
        if callable(reload) and "weights_iterator" in _parameters(reload) | _parameters(runner_reload):
            # vLLM 0.14+: restores checkpoint-format parameters, loads, and repacks the kernels' layouts (the only
            # path on the CPU backend, whose linear layers drop their weights after packing them)
            reload(weights_iterator=iter(weights.items()), is_checkpoint_format=True)
        else:
            self.model_runner.model.load_weights(list(weights.items()))
        self.grpo_version = str(version)
        return self.grpo_version


def _parameters(fn) -> set[str]:
    if not callable(fn):
        return set()
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()
