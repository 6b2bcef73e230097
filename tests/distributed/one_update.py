"""One policy update on a fixed global batch, on however many ranks this is launched with (torchrun, or plain
python for one process); writes the updated weights per case, for tests/test_distributed.py to compare.

    python one_update.py MODEL_DIR OUT_DIR          # one process: the reference
    torchrun --nproc-per-node 2 one_update.py MODEL_DIR OUT_DIR
"""

import copy
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo import resolve
from grpo.config import DistributedConfig, TrainConfig
from grpo.parallel import close_world, init_world, launched_world
from grpo.sampling.base import Completion
from grpo.objectives.advantages import ADVANTAGES
from grpo.train.episodes import Episode, model_segment, token_batch
from grpo.train.rollouts import assign_advantages
from grpo.train.sharding import full_model_state, wrap
from grpo.train.layout import choose_layout
from grpo.train.packing import Layout, make_micro_batch
from grpo.train.update import build_objective, completion_logprobs, policy_update, training_pass

CASES = [  # (name, strategy, aggregation, beta, mu[, more TrainConfig keys])
    *[(f"{s}-{agg}-beta{beta}-mu{mu}", s, agg, beta, mu)
      for s in ("ddp", "fsdp") for agg in ("token_mean", "sequence_mean", "constant")
      for beta, mu in ((0.0, 1), (0.1, 1), (0.0, 2))],
    ("fsdp-token_mean-beta0.1-mu2", "fsdp", "token_mean", 0.1, 2),
    # The objectives menu. `advantage` recomputes the advantages from the rewards on each rank (REINFORCE++
    # normalises over the global batch); `near`: sampler log-probs within +-0.6 of the policy's, so that the
    # correction weights, and the ratios against the sampler, vary around 1 (truncated, masked, dual-clipped).
    ("fsdp-gspo-mu2-trainer", "fsdp", "sequence_mean", 0.0, 2,
     dict(loss="gspo", clip_low=3e-4, clip_high=4e-4, old_logprobs="trainer")),
    ("ddp-gspo_token-beta0.1", "ddp", "token_mean", 0.1, 1, dict(loss="gspo_token", clip_low=3e-4, clip_high=4e-4)),
    ("fsdp-cispo-mu2", "fsdp", "token_mean", 0.0, 2, dict(loss="cispo", clip_high=1.0)),
    ("ddp-dual_clip-mu2", "ddp", "constant", 0.0, 2, dict(clip_ratio_c=1.2, near=True)),
    ("fsdp-reinforce_pp", "fsdp", "token_mean", 0.0, 1, dict(advantage="reinforce_pp")),
    ("ddp-reinforce_pp_baseline-kl_reward", "ddp", "sequence_mean", 0.1, 1,
     dict(advantage="reinforce_pp_baseline", kl_in="reward", kl_estimator="k1")),
    ("fsdp-tis_sequence-entropy", "fsdp", "token_mean", 0.1, 1,
     dict(sampler_correction="tis", correction_level="sequence", correction_cap=2.0, entropy_coef=0.01,
          kl_estimator="k2", kl_clamp=1.0, near=True)),
    ("ddp-mis_token-mu2-trainer", "ddp", "token_mean", 0.0, 2,
     dict(sampler_correction="mis", correction_cap=1.5, old_logprobs="trainer", near=True)),
]


def global_batch(tok) -> list[Episode]:
    """8 completions of 4 prompts, of different lengths, with fixed advantages and sampler log-probs."""
    gen = torch.Generator().manual_seed(0)
    rollouts = []
    for p in range(4):
        prompt = tok(f"{p} + {p} =").input_ids
        for g in range(2):
            ids = tok(f" {2 * p + g}" + "!" * (p + 2 * g), add_special_tokens=False).input_ids
            lp = (-torch.rand(len(ids), generator=gen) * 2).tolist()
            rollouts.append(Episode.one_turn(prompt, Completion(ids, lp, "", "stop"), group_id=p,
                                             advantage=1.0 if g else -0.5, reward=float((3 * p + g) % 4) / 3))
    return rollouts


def near_sampler(model_dir: str, batch: list[Episode], pad_id: int) -> list[Episode]:
    """The global batch with sampler log-probs = the starting policy's + uniform noise in [-0.6, 0.6] on its model
    tokens (environment tokens have none)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    mb = make_micro_batch(batch, Layout("padded", len(batch), 0), pad_id, torch.device("cpu"))
    with torch.no_grad():
        logp = completion_logprobs(model, mb, 0.9)[0]  # the update's temperature
    gen = torch.Generator().manual_seed(1)
    out = copy.deepcopy(batch)
    for i, r in enumerate(out):
        noisy = (logp[i, :r.length] + (torch.rand(r.length, generator=gen) - 0.5) * 1.2).tolist()
        segments, col = [], 0
        for segment in r.segments:
            n = len(segment.token_ids)
            segments.append(model_segment(segment.token_ids, noisy[col:col + n]) if segment.trained else segment)
            col += n
        r.segments = segments
    return out


def update_once(model, reference, optimizer, episodes: list[Episode], train: TrainConfig, pad_id: int, world,
                layout: Layout | None = None):
    """One policy_update as the trainer makes it: objective and passes built once, the per-token batch from the
    episodes (layout None: padded rows)."""
    objective = build_objective(train, resolve.sampler_correction(train, "hf"), 12)
    passes = training_pass(train, layout, 0.9, torch.device("cpu"), world)
    return policy_update(model, reference, optimizer, token_batch(episodes, pad_id), objective, passes)


def main(model_dir: str, out_dir: str, cases: list = CASES, make_batch=global_batch) -> None:
    """Every case on `make_batch(tokenizer)`'s episodes, each rank taking its consecutive share (whole groups)."""
    world = launched_world()
    device = torch.device("cpu")
    init_world(world, device, timeout_s=120)
    tok = AutoTokenizer.from_pretrained(model_dir)
    batch = make_batch(tok)
    share = len(batch) // world.size
    mine = batch[world.rank * share:(world.rank + 1) * share]
    train_micro_batch = 2
    for name, strategy, aggregation, beta, mu, *more in cases:
        more = dict(more[0]) if more else {}
        advantage = more.pop("advantage", None)
        rollouts = copy.deepcopy(near_sampler(model_dir, batch, tok.pad_token_id)[world.rank * share:][:share]
                                 if more.pop("near", False) else mine)
        if advantage is not None:  # each rank holds whole groups of 2
            assign_advantages(rollouts, ADVANTAGES[advantage], 2, world)
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        packing = more.pop("packing", None)  # chosen for the model as the trainer does, before any wrapping
        layout = choose_layout(packing, train_micro_batch, 0, model, device) if packing else None
        reference = copy.deepcopy(model).eval() if beta > 0 else None
        strategy = strategy if world.distributed else "none"
        model = wrap(model, strategy, DistributedConfig(), device)
        if reference is not None:
            reference = wrap(reference, strategy, DistributedConfig(), device, trainable=False)
        # SGD: the weight change is the gradient itself (Adam would divide tiny float differences by tiny
        # second moments and amplify them), so this compares the gradients sharply.
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        train = TrainConfig(**{**dict(clip_low=0.2, clip_high=0.28, beta=beta, mu=mu,
                                      micro_batch_size=train_micro_batch, loss_aggregation=aggregation,
                                      max_grad_norm=0.5), **more})
        stats = update_once(model, reference, optimizer, rollouts, train, tok.pad_token_id, world, layout)
        weights = full_model_state(model)
        advantages = [a for part in world.gather([r.advantage for r in rollouts]) for a in part]
        if world.is_main:
            torch.save({"weights": weights, "loss": stats.loss, "grad_norm": stats.grad_norm, "kl": stats.kl,
                        "tokens": stats.tokens, "advantages": advantages,
                        "correction_weight_mean": stats.correction_weight_mean,
                        "clip_fraction": stats.clip_fraction}, Path(out_dir) / f"{name}.pt")
    close_world(world)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
