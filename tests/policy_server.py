"""A stand-in for `grpo serve` in a thread of the test process: the routes sampler.backend=vllm_server calls
(/v1/models, /v1/completions with token ids and log-probs, /collective_rpc with grpo's weight loader,
/reset_prefix_cache), served by the transformers sampler on a copy of the policy. It records every call in order,
so tests can check what the trainer asked and when. The real server (vLLM's) is tests/test_server_vllm.py under
`make vllm-test`; this one is for CI, where vLLM is not installed."""

from __future__ import annotations

import copy
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from grpo.sampling.base import SamplingSettings
from grpo.sampling.hf import HFSampler


class PolicyServer:
    def __init__(self, model: torch.nn.Module, tokenizer, served: str = "grpo-policy", rpc: bool = True,
                 delay_s: float = 0.0):
        self.model = copy.deepcopy(model).eval()
        self.sampler = HFSampler(self.model, tokenizer, generation_batch_size=64)
        self.served, self.rpc, self.delay_s = served, rpc, delay_s
        self.calls: list[tuple[str, dict]] = []  # (route, body), in arrival order
        self.version = "-1"
        self.lock = threading.Lock()  # one model: requests take turns (vLLM batches them; order is all we check)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                server._record(self.path, {})
                if self.path == "/v1/models":
                    return self._send(200, {"data": [{"id": server.served}]})
                self._send(404, {"detail": "Not Found"})

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                server._record(self.path, body)
                time.sleep(server.delay_s)
                if self.path == "/v1/completions":
                    return self._send(200, server.complete(body))
                if self.path == "/collective_rpc" and server.rpc:
                    return self._send(200, {"results": [server.collective_rpc(body)]})
                if self.path == "/reset_prefix_cache" and server.rpc:
                    return self._send(200, {})
                self._send(404, {"detail": "Not Found"})

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def _record(self, route: str, body: dict) -> None:
        with self.lock:
            self.calls.append((route, body))

    def routes(self) -> list[str]:
        return [route for route, _ in self.calls]

    def complete(self, body: dict) -> dict:
        settings = SamplingSettings(n=body["n"], temperature=body["temperature"], top_p=body["top_p"],
                                    max_new_tokens=body["max_tokens"], seed=body["seed"])
        with self.lock:
            group = self.sampler.generate([body["prompt"]], settings)[0]
        return {"choices": [{"index": i, "text": c.text, "token_ids": c.token_ids, "finish_reason": c.finish_reason,
                             "logprobs": {"token_logprobs": c.logprobs}} for i, c in enumerate(group.completions)]}

    def collective_rpc(self, body: dict) -> str:
        from safetensors.torch import load_file

        if body["method"] == "grpo_load_weights":
            path, version = body["args"]
            weights = load_file(path)
            with self.lock, torch.no_grad():
                state = self.model.state_dict()
                for name, tensor in weights.items():
                    state[name].copy_(tensor)
                self.version = version
        return self.version

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
