"""How the trainer's weights reach a vllm_server, chosen once at setup (sampler.server.transfer):

- file (auto on CPU): each staging slot is a safetensors file in /dev/shm (a directory of this run's, removed at
  the end); a push asks the server's workers, through grpo's worker extension (grpo/sampling/server_extension.py),
  to load it with vLLM's own reload path. The server must see this machine's files: a server on this machine,
  which is what a CPU run is. Staging writes the file; sending is one RPC.
- nccl (auto on GPU): vLLM's weight-transfer API (vllm >= 0.30: /init_weight_transfer_engine, /start_weight_update,
  /update_weights, /finish_weight_update). The trainer opens rank 0 of an NCCL group with the server's workers
  (ranks 1..W) through vLLM's NCCLTrainerWeightTransferEngine, which broadcasts the tensors packed in buckets while
  the workers receive them. Staging slots are pinned host copies, moved to the GPU tensor by tensor as the
  broadcast takes them, so the policy's own memory is free for the next step while an older push waits its turn.
  Not yet run on GPUs (the GPU machines lent to this project have no vLLM): tests/test_server_sampler.py checks the
  call order against a recording stand-in of vLLM's engine.

Both push the weights in the base checkpoint's naming (LoRA merged), cast to the server's dtype (model.dtype)."""

from __future__ import annotations

import math
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from grpo.errors import UserError
from grpo.sampling.server_http import Http, ServerCallFailed

INIT_S = 300.0  # the NCCL rendezvous: both sides join within this or the set-up fails, naming the address


def build_transfer(server: Any, http: Http, model: torch.nn.Module, slots: int, dtype: torch.dtype) -> Any:
    mode = server.transfer
    if mode == "auto":
        mode = "nccl" if next(model.parameters()).device.type == "cuda" else "file"
    if mode == "file":
        return FileTransfer(http, model, slots, dtype)
    return NcclTransfer(http, model, slots, dtype, server)


def named_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy as vLLM loads a checkpoint: base names, LoRA merged. Tied weights go under both names, as the
    colocated sync sends them: vLLM's CPU backend keeps a packed copy of the output layer apart from the embedding,
    and only a push that names lm_head.weight repacks it (measured: without it the server drifted from the trainer
    by 0.05 in log-prob after three steps)."""
    from grpo.sampling.vllm import _whole, plain_named_tensors  # pure torch; vllm is imported only when used

    for name, tensor in plain_named_tensors(model):
        yield name, _whole(tensor.detach())  # an FSDP shard gathered from every rank: all ranks iterate together


def weight_shapes(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """Each pushed weight's name and full shape, gathering nothing (a DTensor knows its global shape)."""
    from grpo.sampling.vllm import plain_named_tensors

    return [(name, tuple(tensor.shape)) for name, tensor in plain_named_tensors(model)]


@dataclass
class ParamMeta:
    """What vLLM's trainer engine reads of each parameter (its own ParamMeta has these three fields)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]


class FileTransfer:
    def __init__(self, http: Http, model: torch.nn.Module, slots: int, dtype: torch.dtype):
        self.http, self.dtype = http, dtype
        shm = Path("/dev/shm")
        self.dir = Path(tempfile.mkdtemp(prefix="grpo-weights-", dir=shm if shm.is_dir() else None))
        self.paths = [self.dir / f"slot-{i}.safetensors" for i in range(slots)]
        self.bytes_per_push = sum(math.prod(shape) * dtype.itemsize for _, shape in weight_shapes(model))

    def stage(self, weights: Iterator[tuple[str, torch.Tensor]], slot: int) -> None:
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, t in weights:
                copy = t.to("cpu", self.dtype).contiguous()
                if any(copy.data_ptr() == other.data_ptr() for other in tensors.values()):
                    copy = copy.clone()  # safetensors stores no shared tensors: a tied weight is written twice
                tensors[name] = copy
        partial = self.paths[slot].with_suffix(".partial")
        save_file(tensors, str(partial))
        os.replace(partial, self.paths[slot])  # the server never reads half a file

    def send(self, slot: int, version: int) -> None:
        reply = self.http.post("/collective_rpc", {"method": "grpo_load_weights",
                                                   "args": [str(self.paths[slot]), str(version)]})
        loaded = (reply or {}).get("results") if isinstance(reply, dict) else None
        if not loaded or any(str(r) != str(version) for r in loaded):
            raise ServerCallFailed(f"/collective_rpc grpo_load_weights: the workers answered {loaded!r}, not "
                                   f"version {version}")
        self.http.post("/reset_prefix_cache")  # cached KV blocks were computed by the old weights

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class WeightSyncClient:
    """vLLM's VLLMWeightSyncClient protocol (structural) over our Http: every call with sampler.server.timeout_s."""

    def __init__(self, http: Http):
        self.http = http

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        self.http.post("/init_weight_transfer_engine", {"init_info": init_info})

    def shutdown_weight_transfer_engine(self) -> None:
        self.http.post("/shutdown_weight_transfer_engine")

    def start_weight_update(self) -> None:
        self.http.post("/start_weight_update")

    def update_weights(self, update_info: dict) -> None:
        self.http.post("/update_weights", {"update_info": update_info})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.http.post("/finish_weight_update", {"weight_version": weight_version} if weight_version else None)


class StagedWeights:
    """vLLM's WeightSource over one staging slot: metadata without moving anything, then each tensor copied to
    the GPU as the broadcast takes it. `slot` is set before each send."""

    def __init__(self, staged: list[dict[str, torch.Tensor]], device: torch.device):
        self.staged, self.device, self.slot = staged, device, 0

    def metadata(self) -> list[ParamMeta]:
        return [ParamMeta(name, t.dtype, tuple(t.shape)) for name, t in self.staged[self.slot].items()]

    def held_names(self) -> None:
        return None  # one trainer process holds every parameter

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in self.staged[self.slot].items():
            yield name, tensor.to(self.device)


class NcclTransfer:
    def __init__(self, http: Http, model: torch.nn.Module, slots: int, dtype: torch.dtype, server: Any,
                 engine_class: Any = None, init_info_class: Any = None):
        """engine_class / init_info_class: vLLM's NCCLTrainerWeightTransferEngine and NCCLTrainerInitInfo unless
        given (tests give a recording stand-in)."""
        if engine_class is None:
            engine_class, init_info_class = _vllm_nccl_engine()
        self.http, self.device = http, next(model.parameters()).device
        pinned = self.device.type == "cuda"
        with torch.no_grad():
            self.staged = [{name: torch.empty(shape, dtype=dtype, pin_memory=pinned)
                            for name, shape in weight_shapes(model)} for _ in range(slots)]
        self.bytes_per_push = sum(t.numel() * t.element_size() for t in self.staged[0].values())
        self.source = StagedWeights(self.staged, self.device)
        world = (http.get("/get_world_size") or {}).get("world_size")
        if not isinstance(world, int) or world < 1:
            raise UserError(f"sampler.server.url = {http.base}: /get_world_size answered {world!r}; start the server "
                            f"with `grpo serve` (it sets VLLM_SERVER_DEV_MODE=1, which vLLM's RL routes need).")
        host = server.nccl_host or route_address(http.base)
        port = server.nccl_port or free_port()
        info = init_info_class(master_address=host, master_port=port, world_size=1 + world, rank=0)

        def join() -> Any:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)  # vLLM binds the communicator to this thread's device
            return engine_class.trainer_init(info, client=WeightSyncClient(http), source=self.source)

        self.engine = _within(INIT_S, join,
                              f"the NCCL rendezvous with the server's {world} worker(s) at {host}:{port} did not "
                              f"complete; the server must reach this address (set sampler.server.nccl_host / "
                              f"nccl_port to one it can reach), and must have been started with NCCL weight "
                              f"transfer (`grpo serve` on a GPU machine, without sampler.server.transfer=file)")

    def stage(self, weights: Iterator[tuple[str, torch.Tensor]], slot: int) -> None:
        with torch.no_grad():
            for name, tensor in weights:
                self.staged[slot][name].copy_(tensor)

    def send(self, slot: int, version: int) -> None:
        self.source.slot = slot
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # this runs on the dispatcher thread
        self.engine.send_weights()
        self.http.post("/update_weight_version", {"new_version": str(version)})
        self.http.post("/reset_prefix_cache")  # cached KV blocks were computed by the old weights

    def close(self) -> None:
        self.engine.shutdown()
        self.http.post("/shutdown_weight_transfer_engine")


def _vllm_nccl_engine() -> tuple[Any, Any]:
    try:
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo, NCCLTrainerWeightTransferEngine
    except ImportError as exc:
        raise UserError(f"sampler.server.transfer=nccl needs vLLM's weight-transfer API in the trainer's environment "
                        f"(vllm >= 0.30; {exc}). Install vllm beside grpo, or set sampler.server.transfer=file for "
                        f"a server on this machine.") from None
    return NCCLTrainerWeightTransferEngine, NCCLTrainerInitInfo


def _within(seconds: float, work: Any, what: str) -> Any:
    """work() on a helper thread, given up after `seconds` (a rendezvous that never completes must not hang)."""
    done: dict[str, Any] = {}

    def run() -> None:
        try:
            done["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            done["error"] = exc

    thread = threading.Thread(target=run, name="grpo-nccl-init", daemon=True)
    thread.start()
    thread.join(seconds)
    if "error" in done:
        raise UserError(f"sampler.server.transfer=nccl: {what} ({done['error']}).") from None
    if "value" not in done:
        raise UserError(f"sampler.server.transfer=nccl: {what} (no answer in {seconds:g} s).")
    return done["value"]


def route_address(url: str) -> str:
    """This machine's address on the route to the server (what its workers dial for the rendezvous)."""
    parsed = urlparse(url)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((parsed.hostname or "127.0.0.1", parsed.port or 80))  # UDP: no packet is sent
        return probe.getsockname()[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]
