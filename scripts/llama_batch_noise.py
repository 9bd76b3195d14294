"""How far llama.cpp's logits of a token move with the size of the pass that scores it.

Decodes a prompt plainly (one token per pass) on the backend, then scores the same tokens
again in chains of 2, 4, 8 and 16 and reports, per chain size, the mean and largest absolute
difference of a token's logits from its one-token pass, and how many argmaxes flipped (with
the one-token top-2 margin there), and the largest change of the top-2 margin itself: the
margin a speculative pass can flip, which ``LlamaCppVerifier.tie_margin`` must cover. The
chains are scored after a prefill, as speculative passes are, so the differences include
those of a cache built by larger passes.

    python scripts/llama_batch_noise.py --verifier qwen2.5-coder-1.5b-instruct --tokens 96
"""

from __future__ import annotations

import argparse
import json

import torch

from specdiff.prompting import encode_prompt
from specdiff.verifiers.llama_cpp import open_gguf

PROMPT = "Write a Python function that returns the n-th Fibonacci number, with a docstring and tests."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verifier", default="qwen2.5-coder-1.5b-instruct")
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--sizes", default="2,4,8,16")
    args = parser.parse_args()
    verifier, tokenizer = open_gguf(args.verifier)
    prompt = encode_prompt(tokenizer, PROMPT, chat=True)
    verifier.prefill(prompt)
    tokens, single = [int(prompt[0, -1])], []
    for _ in range(args.tokens):  # plain decoding: one token per pass
        scored = verifier.score(torch.tensor([[tokens[-1]]]))
        verifier.commit(scored, 0, 0)
        single.append(scored.logits[0, 0])
        tokens.append(int(scored.logits[0, 0].argmax()))
    single = torch.stack(single)  # [tokens, vocab]: logits after tokens[i]
    report = {"verifier": args.verifier, "threads": verifier.threads, "identity": verifier.cost_identity}
    for size in map(int, args.sizes.split(",")):
        differences, margin_changes, flips = [], [], []
        for start in range(0, args.tokens - size + 1, size):
            verifier.prefill(torch.cat([prompt[:, :-1], torch.tensor([tokens[:start + 1]])], dim=1))
            chain = verifier.score(torch.tensor([tokens[start:start + size]])).logits[0]  # [size, vocab]
            for offset in range(size):
                alone = single[start + offset]
                differences.append(float((chain[offset] - alone).abs().max()))
                first, second = alone.topk(2).indices.tolist()  # the one-token pass's top two tokens
                margin_changes.append(abs(float((chain[offset, first] - chain[offset, second])
                                                - (alone[first] - alone[second]))))
                if int(chain[offset].argmax()) != int(alone.argmax()):
                    top2 = alone.topk(2).values
                    flips.append({"token": start + offset, "margin": round(float(top2[0] - top2[1]), 4)})
        report[f"chain {size}"] = {"mean_max_abs_difference": round(sum(differences) / len(differences), 4),
                                   "largest_abs_difference": round(max(differences), 4),
                                   "largest_top2_margin_change": round(max(margin_changes), 4), "argmax_flips": flips}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
