"""sampler.backend=vllm_server on CPU without vLLM: the trainer's side (grpo/sampling/server.py,
server_transfer.py) against tests/policy_server.py, a stand-in serving the same routes with the transformers
sampler, and vLLM's NCCL trainer engine replaced by a recording stand-in (the GPU transfer cannot run here). The
real server is tests/test_server_vllm.py under `make vllm-test`."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import ROOT, grpo, recipe_config, write_recipe
from grpo.config import ServerConfig
from grpo.rules import recipe_rules, world_rules
from grpo.sampling.base import SamplingSettings
from grpo.sampling.hf import HFSampler
from grpo.sampling.server import SamplerServerGone, ServerReplyError, ServerSampler, completions_of
from grpo.sampling.vllm import prompt_seed
from grpo.sampling.server_transfer import NcclTransfer, build_transfer, named_weights
from policy_server import PolicyServer


def load(path):
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def tokens_of(groups):
    return [[c.token_ids for c in g.completions] for g in groups]


@pytest.fixture
def served(tiny_model_dir):
    model, tok = load(tiny_model_dir)
    server = PolicyServer(model, tok)
    yield model, tok, server
    server.close()


def nudge(model, scale=0.5, seed=0):
    # its own generator: the stand-in server samples on a thread of this process from torch's global one
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)


# ------------------------------------------------------------------------------------------------ the sampler

def test_pushes_and_requests_reach_the_server_in_the_order_sent_each_reply_naming_its_version(served):
    model, tok, server = served
    sampler = ServerSampler(model, ServerConfig(url=server.url, timeout_s=60), eos_ids={tok.eos_token_id},
                            dtype=torch.float32, first_version=3, slots=2)
    try:
        sampler.sync_weights(model)  # version 3: the set-up push of a run resumed at step 3
        prompts = [tok("1+1=").input_ids, tok("2+3=").input_ids]
        settings = SamplingSettings(n=3, max_new_tokens=8, seed=5)
        sampler.submit("a", prompts, settings)
        before = [t.clone() for t in model.state_dict().values()]
        nudge(model)
        sampler.sync_weights(model)  # version 4, staged now; sent after "a" is served
        sampler.submit("b", prompts, settings)
        nudge(model, seed=1)  # the next step changes the policy again: the staged copy is what version 4 is
        a, b = sampler.take("a"), sampler.take("b")
        assert (a.version, b.version) == (3, 4)
        assert sampler.bytes_per_push == sum(t.numel() * 4 for _, t in named_weights(model))
        routes = [r for r in server.routes() if r != "/reset_prefix_cache"]
        assert routes == ["/v1/models", "/collective_rpc",  # the set-up probe
                          "/collective_rpc", "/v1/completions", "/v1/completions",  # push 3, then request a
                          "/collective_rpc", "/v1/completions", "/v1/completions"]  # push 4, then request b
        assert server.version == "4"
        # the server sampled "a" with version 3's weights: the trainer's log-probs of its tokens agree
        with torch.no_grad():
            for tensor, old in zip(model.state_dict().values(), before):
                tensor.copy_(old)
        here = [HFSampler(model, tok).generate([ids], dataclasses.replace(settings, seed=prompt_seed(5, i)))[0]
                for i, ids in enumerate(prompts)]  # the stand-in draws each request with the seed it carries
        assert tokens_of(a.groups) == tokens_of(here)
        assert tokens_of(b.groups) != tokens_of(a.groups)
        sent = [json.loads(json.dumps(body)) for route, body in server.calls if route == "/v1/completions"]
        assert {b["seed"] for b in sent[:2]} != {sent[0]["seed"]}  # a seed per prompt
        assert all(b["logprobs"] == 0 and b["return_token_ids"] and b["stop_token_ids"] == [tok.eos_token_id]
                   for b in sent)
    finally:
        sampler.close()


def test_a_dead_server_stops_the_wait_at_once_naming_the_url(served):
    model, tok, server = served
    sampler = ServerSampler(model, ServerConfig(url=server.url, timeout_s=60), eos_ids=set(), dtype=torch.float32)
    server.close()
    started = time.monotonic()
    with pytest.raises(SamplerServerGone, match=rf"vLLM server at {server.url} failed .*/v1/completions"):
        sampler.generate([tok("1+1=").input_ids], SamplingSettings(n=2, max_new_tokens=4))
    assert time.monotonic() - started < 30
    with pytest.raises(SamplerServerGone):  # and it stays failed: nothing is queued behind a broken server
        sampler.submit("x", [[1]], SamplingSettings())
    sampler.close()


def test_a_hung_server_times_out_with_the_setting_named(served):
    model, tok, server = served
    sampler = ServerSampler(model, ServerConfig(url=server.url, timeout_s=2), eos_ids=set(), dtype=torch.float32)
    server.delay_s = 10  # every later call hangs
    with pytest.raises(SamplerServerGone, match=r"no reply within 2 s \(sampler.server.timeout_s\)"):
        sampler.generate([tok("1+1=").input_ids], SamplingSettings(n=2, max_new_tokens=4))
    sampler.close()


def test_setup_names_the_fix_for_a_wrong_url_model_name_or_plain_vllm_server(tiny_model_dir):
    model, tok = load(tiny_model_dir)
    with pytest.raises(SamplerServerGone, match=r"no vLLM server answers there .*grpo serve"):
        ServerSampler(model, ServerConfig(url="http://127.0.0.1:9", timeout_s=5), eos_ids=set(), dtype=torch.float32)
    wrong = PolicyServer(model, tok, served="other")
    plain = PolicyServer(model, tok, rpc=False)  # a `vllm serve` without dev mode and grpo's extension
    try:
        with pytest.raises(SamplerServerGone, match=r"serves \['other'\], not sampler.server.model = 'grpo-policy'"):
            ServerSampler(model, ServerConfig(url=wrong.url), eos_ids=set(), dtype=torch.float32)
        with pytest.raises(SamplerServerGone, match=r"cannot take weight pushes .*HTTP 404.*with `grpo serve`"):
            ServerSampler(model, ServerConfig(url=plain.url), eos_ids=set(), dtype=torch.float32)
    finally:
        wrong.close()
        plain.close()


@pytest.mark.parametrize("body, message", [
    ({"choices": []}, "expected 2 choices, got 0"),
    ({"choices": [{"index": 0, "token_ids": [1], "finish_reason": "stop"}] * 2}, "log-probs missing"),
    ({"choices": [{"index": 0, "token_ids": [1, 2], "logprobs": {"token_logprobs": [-1.0]},
                   "finish_reason": "stop"}] * 2}, "2 tokens but log-probs 1"),
    ({"choices": [{"index": 0, "token_ids": [1], "logprobs": {"token_logprobs": [float("nan")]},
                   "finish_reason": "stop"}] * 2}, "log-probs 1"),
    ({"choices": [{"index": 0, "text": "x", "finish_reason": "stop"}] * 2}, "no token_ids"),
    ({"choices": [{"index": 0, "token_ids": [1], "logprobs": {"token_logprobs": [-1.0]},
                   "finish_reason": "abort"}] * 2}, "finish_reason 'abort'"),
    ("not json", "expected 2 choices"),
])
def test_a_reply_without_what_the_loss_needs_is_refused_by_name(body, message):
    with pytest.raises(ServerReplyError, match=message):
        completions_of(body, 2)


def test_a_good_reply_keeps_the_server_s_order_of_choices():
    body = {"choices": [{"index": 1, "text": "b", "token_ids": [7], "logprobs": {"token_logprobs": [-0.5]},
                         "finish_reason": "length"},
                        {"index": 0, "text": "a", "token_ids": [5, 6], "logprobs": {"token_logprobs": [-1, -2]},
                         "finish_reason": "stop"}]}
    out = completions_of(body, 2)
    assert [(c.text, c.token_ids, c.logprobs, c.finish_reason) for c in out] == [
        ("a", [5, 6], [-1.0, -2.0], "stop"), ("b", [7], [-0.5], "length")]


# ------------------------------------------------------------------------------------------------ NCCL (recorded)

class RecordingEngine:
    """vLLM's NCCLTrainerWeightTransferEngine as far as the trainer sees it: trainer_init joins the group (here:
    records), send_weights drives the client as vLLM's does (start, update with the metadata while the tensors are
    read from the source, finish) and records what it read."""

    log: list = []

    @classmethod
    def trainer_init(cls, info, *, client, source):
        cls.log.append(("trainer_init", info))
        client.init_weight_transfer_engine({"master_address": info.master_address, "rank_offset": 1})
        engine = cls()
        engine.client, engine.source = client, source
        return engine

    def send_weights(self):
        meta = self.source.metadata()
        self.client.start_weight_update()
        self.client.update_weights({"names": [m.name for m in meta]})
        sent = {name: tensor.clone() for name, tensor in self.source}
        assert [m.name for m in meta] == list(sent) and all(
            tuple(sent[m.name].shape) == m.shape and sent[m.name].dtype == m.dtype for m in meta)
        self.client.finish_weight_update()
        self.log.append(("send_weights", sent))

    def shutdown(self):
        self.log.append(("shutdown",))


class Info:
    def __init__(self, **fields):
        self.__dict__.update(fields)


class RecordingHttp:
    base = "http://10.1.2.3:8000"

    def __init__(self):
        self.calls = []

    def get(self, route, timeout_s=None):
        self.calls.append(("GET", route))
        return {"world_size": 4}

    def post(self, route, body=None, timeout_s=None):
        self.calls.append(("POST", route, body))
        return {}


def test_nccl_transfer_call_order_and_what_each_push_carries(tiny_model_dir):
    model, _ = load(tiny_model_dir)
    http, RecordingEngine.log = RecordingHttp(), []
    server = ServerConfig(url=http.base, transfer="nccl", nccl_host="10.1.2.9", nccl_port=29600)
    transfer = NcclTransfer(http, model, 2, torch.bfloat16, server, engine_class=RecordingEngine,
                            init_info_class=Info)
    (_, info), = RecordingEngine.log
    assert (info.master_address, info.master_port, info.world_size, info.rank) == ("10.1.2.9", 29600, 5, 0)
    first = {name: t.to(torch.bfloat16).clone() for name, t in named_weights(model)}
    transfer.stage(named_weights(model), 0)
    nudge(model)
    transfer.stage(named_weights(model), 1)
    transfer.send(0, 7)  # slot 0 holds the weights as they were when staged, whatever the policy did since
    transfer.send(1, 8)
    transfer.close()
    kinds = [entry[0] for entry in RecordingEngine.log]
    assert kinds == ["trainer_init", "send_weights", "send_weights", "shutdown"]
    sent0, sent1 = RecordingEngine.log[1][1], RecordingEngine.log[2][1]
    assert all(torch.equal(sent0[n], first[n]) for n in first) and sent0.keys() == first.keys()
    assert all(t.dtype == torch.bfloat16 for t in sent1.values())
    assert not all(torch.equal(sent1[n], first[n]) for n in first)
    assert transfer.bytes_per_push == sum(t.numel() * 2 for t in first.values())
    routes = [c[1] for c in http.calls]
    assert routes == ["/get_world_size", "/init_weight_transfer_engine",
                      "/start_weight_update", "/update_weights", "/finish_weight_update", "/update_weight_version",
                      "/reset_prefix_cache",
                      "/start_weight_update", "/update_weights", "/finish_weight_update", "/update_weight_version",
                      "/reset_prefix_cache", "/shutdown_weight_transfer_engine"]
    versions = [c[2] for c in http.calls if c[1] == "/update_weight_version"]
    assert versions == [{"new_version": "7"}, {"new_version": "8"}]


def test_auto_transfer_is_a_file_on_cpu(tiny_model_dir, tmp_path):
    model, _ = load(tiny_model_dir)
    transfer = build_transfer(ServerConfig(), RecordingHttp(), model, 1, torch.float32)
    try:
        assert type(transfer).__name__ == "FileTransfer" and str(transfer.dir).startswith("/dev/shm")
        transfer.stage(named_weights(model), 0)
        from safetensors.torch import load_file

        saved = load_file(str(transfer.paths[0]))
        assert saved.keys() == dict(named_weights(model)).keys()
    finally:
        transfer.close()
    assert not transfer.dir.exists()


# ------------------------------------------------------------------------------------------------ rules and serve

@pytest.mark.parametrize("changes, key", [
    ({"sampler.backend": "vllm_server"}, "sampler.server.url: sampler.backend=vllm_server needs"),
    ({"sampler.server.url": "127.0.0.1:8000"}, "sampler.server.url: expected http://HOST:PORT"),
    ({"sampler.server.url": "http://h:8000/v1"}, "sampler.server.url: expected http://HOST:PORT"),
    ({"sampler.server.timeout_s": 0}, "sampler.server.timeout_s"),
    ({"sampler.server.concurrency": 0}, "sampler.server.concurrency"),
    ({"sampler.server.nccl_port": 70000}, "sampler.server.nccl_port"),
])
def test_server_settings_are_checked_by_name(changes, key):
    cfg = recipe_config({"data.path": "x.jsonl", **changes})
    assert any(key in problem for problem in recipe_rules(cfg)), recipe_rules(cfg)


def test_generating_ahead_with_the_server_is_allowed_under_torchrun_without_what_needs_lockstep_calls():
    cfg = recipe_config({"data.path": "x.jsonl", "sampler.backend": "vllm_server",
                         "sampler.server.url": "http://127.0.0.1:8000", "train.max_staleness": 1})
    assert not [p for p in recipe_rules(cfg) if "server" in p or "staleness" in p]
    # the other ranks wait in a collective while rank 0 waits on the server: its deadline must be the shorter
    assert any(p.startswith("distributed.timeout_s: 600 s") and "sampler.server.timeout_s = 900" in p
               for p in world_rules(cfg, 2))
    cfg.distributed.timeout_s = 1800
    assert not [p for p in world_rules(cfg, 2) if "server" in p or "staleness" in p]
    cfg = recipe_config({"data.path": "x.jsonl", "sampler.backend": "vllm_server", "eval.every": 5,
                         "sampler.server.url": "http://127.0.0.1:8000"})
    assert any(p.startswith("eval.every: with sampler.backend=vllm_server under torchrun") for p in world_rules(cfg, 2))
    cfg = recipe_config({"data.path": "x.jsonl", "sampler.backend": "hf_worker", "train.max_staleness": 1})
    assert any("sampler.backend: hf_worker runs one trainer process" in p for p in world_rules(cfg, 2))


def test_serve_dry_run_prints_vllm_s_server_with_the_recipe_s_settings(tmp_path, tiny_model_dir, sums_file):
    recipe = write_recipe(tmp_path, tiny_model_dir, sums_file, "math")
    out = grpo("serve", recipe, "sampler.vllm.kv_cache_memory_bytes=1000000", "--port", "8123", "--dry-run",
               check=True)
    line = out.stdout.splitlines()[0]
    for part in ("VLLM_SERVER_DEV_MODE=1", "-m vllm.entrypoints.openai.api_server", f"--model {tiny_model_dir}",
                 "--served-model-name grpo-policy", "--port 8123", "--host 127.0.0.1", "--dtype float32",
                 "--logprobs-mode processed_logprobs", "--generation-config vllm",
                 "--worker-extension-cls grpo.sampling.server_extension.WeightLoader",
                 "--kv-cache-memory-bytes 1000000", "--no-enable-chunked-prefill"):
        assert part in line, part
    assert "--weight-transfer-config" not in line  # no GPU here: the file transfer needs nothing of vLLM's
    assert "sampler.server.url=http://127.0.0.1:8123" in out.stdout


def test_serve_without_vllm_says_how_to_install_it(tmp_path, tiny_model_dir, sums_file):
    pytest.importorskip("transformers")
    try:
        import vllm  # noqa: F401

        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    recipe = write_recipe(tmp_path, tiny_model_dir, sums_file, "math")
    out = grpo("serve", recipe)
    assert out.returncode == 2 and "vllm is not installed" in out.stderr and "--dry-run" in out.stderr


# ------------------------------------------------------------------------------------------------ whole runs

def metrics_of(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def server_recipe(tmp_path, model_dir, data, url, steps, checkpoint="{every: 0, keep_last: 1}"):
    extra = (f"sampler: {{backend: vllm_server, group_size: 4, max_new_tokens: 6, "
             f"server: {{url: '{url}', timeout_s: 120}}}}\n")
    return write_recipe(tmp_path, model_dir, data, "math", steps=steps, extra=extra, checkpoint=checkpoint)


def test_a_run_on_the_server_trains_ahead_and_checks_the_gap_across_processes(tmp_path, tiny_model_dir, sums_file):
    model, tok = load(tiny_model_dir)
    server = PolicyServer(model, tok)
    try:
        recipe = server_recipe(tmp_path, tiny_model_dir, sums_file, server.url, steps=4)
        grpo("train", recipe, "train.max_staleness=1", check=True, timeout=600)
    finally:
        server.close()
    m = metrics_of(tmp_path / "run")
    assert [r["async/staleness_max"] for r in m] == [0, 1, 1, 1]
    assert m[0]["sampler/logprob_gap"] < 1e-4  # step 1 was sampled by the pushed weights, read in the server
    assert all(r["sync/bytes"] > 0 and r["async/dropped_stale"] == 0 for r in m)
    loads = [body["args"][1] for route, body in server.calls
             if route == "/collective_rpc" and body.get("method") == "grpo_load_weights"]
    assert loads == ["0", "1", "2", "3", "4"]  # the set-up push, then one after every step


def test_a_server_killed_mid_run_stops_the_trainer_with_the_checkpoint_to_resume(tmp_path, tiny_model_dir,
                                                                                 sums_file):
    model, tok = load(tiny_model_dir)
    server = PolicyServer(model, tok)
    calls_before_kill = 1 + 1 + 2 * 2 + 1 + 2  # probe, push 0, 2 steps x (2 prompts + push), then step 3's prompts

    def kill_when_step_3_is_requested():
        while len([r for r in server.routes() if r in ("/v1/completions", "/collective_rpc")]) < calls_before_kill:
            time.sleep(0.05)
        server.close()

    killer = threading.Thread(target=kill_when_step_3_is_requested, daemon=True)
    killer.start()
    recipe = server_recipe(tmp_path, tiny_model_dir, sums_file, server.url, steps=6,
                           checkpoint="{every: 1, keep_last: 2}")
    out = grpo("train", recipe, timeout=600)
    killer.join(timeout=5)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"the vLLM server at {server.url} failed" in out.stderr
    assert "The same command resumes from" in out.stderr and "checkpoints/step-" in out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_share_one_server_through_rank_0_and_train_ahead(tmp_path, tiny_model_dir, sums_file, strategy):
    """torchrun, 2 ranks (gloo): rank 0 relays both ranks' prompts in one request a step and pushes the (FSDP:
    gathered) policy; each rank trains its own groups, sampled one version back from step 2 on."""
    model, tok = load(tiny_model_dir)
    server = PolicyServer(model, tok)
    try:
        recipe = server_recipe(tmp_path, tiny_model_dir, sums_file, server.url, steps=3)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "grpo",
               "train", str(recipe), "train.max_staleness=1", f"distributed.strategy={strategy}"]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
        assert done.returncode == 0, done.stderr[-4000:]
    finally:
        server.close()
    m = metrics_of(tmp_path / "run")
    assert [r["async/staleness_max"] for r in m] == [0, 1, 1] and [r["groups/trained"] for r in m] == [2, 2, 2]
    assert m[0]["sampler/logprob_gap"] < 1e-4  # rank 0's push reached the server before either rank's request
    prompts = [body["prompt"] for route, body in server.calls if route == "/v1/completions"]
    assert len(prompts) == 3 * 2  # each step: both ranks' prompts (1 each), one completions call per prompt
    assert len({tuple(p) for p in prompts[:2]}) == 2  # each rank its own slice of the step's prompts
    loads = [body["args"][1] for route, body in server.calls
             if route == "/collective_rpc" and body.get("method") == "grpo_load_weights"]
    assert loads == ["0", "1", "2", "3"]  # pushed by rank 0 only
