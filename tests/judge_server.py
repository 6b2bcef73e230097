"""An OpenAI-compatible endpoint in a thread of the test process, whose answers a test scripts: the network side of
the judge's HTTP client (retries, statuses, keys, concurrency, garbage). The real server (`vllm serve`) is tested
in tests/test_judge_vllm.py under `make vllm-test`."""

from __future__ import annotations

import json
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

# A reply function gets the request's JSON body and its headers and returns (status, body bytes, extra headers).
Reply = Callable[[dict, dict], tuple[int, bytes, dict]]


def chat(text: str) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()


def completion(text: str) -> bytes:
    return json.dumps({"choices": [{"text": text}]}).encode()


class JudgeServer:
    """Serves POST /v1/chat/completions and /v1/completions with `reply`; counts requests and the most in flight."""

    def __init__(self, reply: Reply, delay_s: float = 0.0, models: tuple[str, ...] = ("judge-model",)):
        self.reply, self.delay_s = reply, delay_s
        self.requests: list[tuple[str, dict, dict]] = []  # (path, body, headers)
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server name
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                headers = {k.lower(): v for k, v in self.headers.items()}
                with server.lock:
                    server.requests.append((self.path, body, headers))
                    server.in_flight += 1
                    server.most_in_flight = max(server.most_in_flight, server.in_flight)
                try:
                    time.sleep(server.delay_s)
                    status, data, extra = server.reply(body, headers)
                finally:
                    with server.lock:
                        server.in_flight -= 1
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802 - the OpenAI listing of served models
                data = json.dumps({"object": "list", "data": [{"id": m, "object": "model"} for m in models]}).encode()
                self.send_response(200 if self.path == "/v1/models" else 404)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "JudgeServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def judge_run_recipe(folder: Path, rewards: str, steps: int, max_new_tokens: int = 16) -> Path:
    """folder/judge.yaml: the tiny demo model on the demo problems, 2 prompts x 4 completions a step, `rewards` (YAML
    list items, indented by 2) as its rewards, output_dir folder/run."""
    from conftest import ROOT

    recipe = folder / "judge.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: served-judge
        output_dir: {folder / 'run'}
        seed: 0
        model: {{path: demo:tiny-arith}}
        data: {{path: {ROOT / 'data/arith/train.jsonl'}, prompt_template: "Question: {{question}}\\nAnswer:",
               answer_column: answer}}
        sampler: {{group_size: 4, max_new_tokens: {max_new_tokens}}}
        rewards:
    """) + textwrap.indent(textwrap.dedent(rewards).strip("\n"), "  ") + textwrap.dedent(f"""
        train: {{steps: {steps}, prompts_per_step: 2, micro_batch_size: 8, lr: 1.0e-4}}
        checkpoint: {{every: 0}}
        logging: {{progress_bar: false}}
    """))
    return recipe
