import torch

from specdiff import DecodingConfig, DiffusionDrafter, Verifier, autoregressive_generate, speculative_generate
from specdiff.calibrate.evaluate import ReplayStats, TrajectoryVerifier, replay
from specdiff.drafters.standalone.from_causal_lm import diffusion_lm_from_causal_lm


def test_replay_matches_the_real_speculative_run(tiny_causal_lm):
    verifier = Verifier(tiny_causal_lm("llama", seed=0, logit_scale=30.0))
    drafter = DiffusionDrafter(diffusion_lm_from_causal_lm(tiny_causal_lm("qwen2", seed=1, logit_scale=30.0)))
    prompt = [1, 2, 3, 4, 5]
    config = DecodingConfig(gamma=4, max_new_tokens=40)
    trajectory = autoregressive_generate(torch.tensor([prompt]), verifier, config).tokens
    real = speculative_generate(torch.tensor([prompt]), verifier, drafter, config)
    stats = ReplayStats(gamma=4)
    replay(drafter, TrajectoryVerifier(prompt, trajectory, 32), 4, stats)
    assert stats.steps == real.verifier_calls
    assert stats.tau == real.tau
    real_accepted = [sum(step.accepted > j for step in real.steps if step.drafted > j) for j in range(4)]
    assert stats.accepted == real_accepted
