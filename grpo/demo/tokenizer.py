"""A character-level tokenizer (every printable ASCII character is one token), saved as a transformers fast
tokenizer so AutoTokenizer loads it like any other. Spaces and newlines are tokens of their own, so text
round-trips exactly through encode and decode."""

from __future__ import annotations

import string

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def build_char_tokenizer(model_max_length: int = 512) -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in string.printable:
        vocab.setdefault(ch, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one piece per character, whitespace included
    core.decoder = decoders.Fuse()  # join characters back with nothing in between
    # BOS first, as the RL sampler and the SFT warm start both encode prompts with the tokenizer's specials
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=model_max_length)
