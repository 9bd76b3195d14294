"""`specdiff bench-draft-cost`: what one DFlash draft call costs, against a one-token verifier pass.

Untrained (random) drafters are enough: cost does not depend on the weights. For every
(layers, gamma) a drafter is started on the same prompt's hidden states; then, round by
round, each configuration drafts once and the verifier runs one one-token pass, so machine
drift hits all alike. Reported: median seconds per call and the ratio to the verifier's
median one-token pass.
"""

from __future__ import annotations

import statistics
import time

import torch

from specdiff.drafters.loading import untrained_dflash
from specdiff.models.loading import load_causal_lm
from specdiff.prompting import encode_prompt
from specdiff.sampling import SamplingConfig
from specdiff.verifier import Verifier

CODE_PROMPT = (  # made up here (not from an evaluation set): cost does not depend on the text
    "Complete this Python function.\n\nfrom typing import List\n\n\ndef running_maximum(values: List[int]) "
    "-> List[int]:\n    \"\"\" Return a list whose i-th element is the largest of values[0..i].\n"
    "    >>> running_maximum([3, 1, 4, 1, 5])\n    [3, 3, 4, 4, 5]\n    \"\"\"\n"
)


def measure_draft_cost(verifier_spec: str, layers: list[int], gammas: list[int], repeats: int,
                       prompt: str = CODE_PROMPT) -> dict:

    model, tokenizer = load_causal_lm(verifier_spec)
    prompt_ids = encode_prompt(tokenizer, prompt)
    verifier = Verifier(model)
    drafters = {}
    for num_layers in layers:
        drafter = untrained_dflash(verifier_spec, model, num_layers, max(gammas) + 1)
        drafter.start(prompt_ids[0].tolist(), verifier.prefill(prompt_ids, drafter.feature_layers))
        drafters[num_layers] = drafter
    verifier.prefill(prompt_ids)
    greedy = SamplingConfig()
    draft_seconds: dict[tuple[int, int], list[float]] = {(n, g): [] for n in [0, *layers] for g in gammas}
    verify_seconds: list[float] = []
    head = model.get_output_embeddings()
    last = torch.tensor([[int(prompt_ids[0, -1])]])
    for _ in range(repeats + 1):  # the first round warms up and is dropped
        for (num_layers, gamma), times in draft_seconds.items():
            started = time.perf_counter()
            if num_layers == 0:  # the verifier's LM head alone over gamma slots, part of every draft call
                with torch.inference_mode():
                    head(torch.zeros(1, gamma, model.config.hidden_size))
            else:
                drafters[num_layers].draft(gamma, greedy)
            times.append(time.perf_counter() - started)
        started = time.perf_counter()
        verifier.commit(verifier.score(last), 0, 0)
        verify_seconds.append(time.perf_counter() - started)
    verify = statistics.median(verify_seconds[1:])
    rows = [{"layers": n, "gamma": g, "draft_s": statistics.median(t[1:]), "fraction_of_verify": statistics.median(t[1:]) / verify}
            for (n, g), t in draft_seconds.items()]
    return {"verifier": verifier_spec, "prompt_tokens": prompt_ids.shape[1], "repeats": repeats,
            "verify_one_token_s": verify, "rows": rows, "threads": torch.get_num_threads()}


def markdown(result: dict) -> str:
    gammas = sorted({r["gamma"] for r in result["rows"]})
    lines = [f"One-token verifier pass: {result['verify_one_token_s'] * 1000:.0f} ms "
             f"({result['verifier']}, {result['prompt_tokens']}-token prompt, median of {result['repeats']})", "",
             "| draft layers | " + " | ".join(f"gamma {g}" for g in gammas) + " |",
             "|---|" + "---|" * len(gammas)]
    for num_layers in sorted({r["layers"] for r in result["rows"]}):
        cells = [next(r for r in result["rows"] if r["layers"] == num_layers and r["gamma"] == g) for g in gammas]
        label = "LM head only" if num_layers == 0 else num_layers
        lines.append(f"| {label} | " + " | ".join(f"{c['draft_s'] * 1000:.0f} ms ({c['fraction_of_verify']:.2f}x)"
                                                     for c in cells) + " |")
    return "\n".join(lines) + "\n"
