"""Greedy generation with plain transformers on the tiny model: the reference the swarm must match.

Run with the Petals venv's python: `python reference.py <model_dir>`. Reads one JSON request a line on stdin,
`{"prompt": str, "max_new_tokens": int}`, and answers one JSON line on stdout: the generated token ids (an
end-of-sequence token included, as the node counts it), the text of every token, and the prompt's length in
tokens. Text is decoded the way petals-node decodes: special tokens kept, no clean-up of spaces.
"""

from __future__ import annotations

import json
import os
import sys


def main(model_dir: str) -> None:
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # library chatter goes to stderr; stdout carries answers only

    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    answers.write(json.dumps({"ready": True}) + "\n")
    answers.flush()
    for line in sys.stdin:
        request = json.loads(line)
        prompt = tokenizer(request["prompt"], add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            output = model.generate(prompt, max_new_tokens=request["max_new_tokens"], do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id)
        ids = output[0, prompt.shape[1]:].tolist()
        text_ids = ids[:-1] if ids and ids[-1] == tokenizer.eos_token_id else ids
        pieces = [tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False)
                  for i in text_ids]
        answers.write(json.dumps({"ids": ids, "pieces": pieces, "prompt_tokens": prompt.shape[1]}) + "\n")
        answers.flush()


if __name__ == "__main__":
    main(sys.argv[1])
