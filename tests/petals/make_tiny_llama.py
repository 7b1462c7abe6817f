"""Create a tiny random-weight Llama and its tokenizer in a folder (run with the Petals venv's python).

    python make_tiny_llama.py <dir>

No download: a byte-level BPE is trained on the sentences below and the weights come from a fixed seed, so
every run makes the same model. The alphabet holds only the characters of the training text (printable ASCII
and a newline): every token decodes to valid UTF-8, so greedy output compares exactly, byte for byte, with a
local transformers run.
"""

from __future__ import annotations

import string
import sys
from pathlib import Path

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello there! How are you today? I am fine, thank you.",
    "### USER:\nWrite a short poem about the sea.\n\n### ASSISTANT:\nThe sea is wide and blue.",
    "### SYSTEM:\nYou are a helpful assistant.\n",
    "Petals runs large language models at home, BitTorrent-style.",
    "Once upon a time, in a land far away, there lived a small robot.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000; lists, (parentheses) and [brackets].",
    string.printable.replace("\x0b", "").replace("\x0c", "").replace("\r", ""),
]


def main(target: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<s>", "</s>", "<unk>"], show_progress=False)
    raw.train_from_iterator(SENTENCES * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", pad_token="</s>")
    tokenizer.save_pretrained(target)

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=len(tokenizer), max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(target, safe_serialization=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
