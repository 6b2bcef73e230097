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

from grpo.config import DistributedConfig, TrainConfig
from grpo.parallel import close_world, init_world, launched_world
from grpo.sampling.base import Completion
from grpo.train.rollouts import Rollout
from grpo.train.sharding import full_model_state, wrap
from grpo.train.update import policy_update

CASES = [  # (name, strategy, aggregation, beta, mu)
    *[(f"{s}-{agg}-beta{beta}-mu{mu}", s, agg, beta, mu)
      for s in ("ddp", "fsdp") for agg in ("token_mean", "sequence_mean", "constant")
      for beta, mu in ((0.0, 1), (0.1, 1), (0.0, 2))],
    ("fsdp-token_mean-beta0.1-mu2", "fsdp", "token_mean", 0.1, 2),
]


def global_batch(tok) -> list[Rollout]:
    """8 completions of 4 prompts, of different lengths, with fixed advantages and sampler log-probs."""
    gen = torch.Generator().manual_seed(0)
    rollouts = []
    for p in range(4):
        prompt = tok(f"{p} + {p} =").input_ids
        for g in range(2):
            ids = tok(f" {2 * p + g}" + "!" * (p + 2 * g), add_special_tokens=False).input_ids
            lp = (-torch.rand(len(ids), generator=gen) * 2).tolist()
            rollouts.append(Rollout("", prompt, Completion(ids, lp, "", "stop"), {}, advantage=1.0 if g else -0.5))
    return rollouts


def main(model_dir: str, out_dir: str) -> None:
    world = launched_world()
    device = torch.device("cpu")
    init_world(world, device, timeout_s=120)
    tok = AutoTokenizer.from_pretrained(model_dir)
    batch = global_batch(tok)
    share = len(batch) // world.size
    mine = batch[world.rank * share:(world.rank + 1) * share]
    for name, strategy, aggregation, beta, mu in CASES:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        reference = copy.deepcopy(model).eval() if beta > 0 else None
        strategy = strategy if world.distributed else "none"
        model = wrap(model, strategy, DistributedConfig(), device)
        if reference is not None:
            reference = wrap(reference, strategy, DistributedConfig(), device, trainable=False)
        # SGD: the weight change is the gradient itself (Adam would divide tiny float differences by tiny
        # second moments and amplify them), so this compares the gradients sharply.
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        train = TrainConfig(clip_low=0.2, clip_high=0.28, beta=beta, mu=mu, micro_batch_size=2,
                            loss_aggregation=aggregation, max_grad_norm=0.5)
        stats = policy_update(model, reference, optimizer, mine, train, temperature=0.9, loss_constant=12,
                              pad_id=tok.pad_token_id, device=device, world=world)
        weights = full_model_state(model)
        if world.is_main:
            torch.save({"weights": weights, "loss": stats.loss, "grad_norm": stats.grad_norm, "kl": stats.kl,
                        "tokens": stats.tokens}, Path(out_dir) / f"{name}.pt")
    close_world(world)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
