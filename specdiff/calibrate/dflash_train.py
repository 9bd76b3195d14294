"""`specdiff calibrate train-dflash`: train a DFlash-layout drafter on the verifier's own outputs.

Each step draws one teacher sequence (prompt + the verifier's completion), runs the frozen
verifier over it ONCE to get its hidden states at the drafter's target layers, turns them
into every draft layer's context keys and values once, then trains ``anchors_per_step``
blocks [token at the anchor, MASK x gamma] at random anchors inside the completion in one
batch: each block sees the features strictly before its anchor and itself, never another
block (``make_anchor_blocks``). Losses on the gamma slots: ``ce_decay`` (DFlash's
cross-entropy, slot k weighted by exp(-(k-1)/7)) or ``streak`` (SpecDiff-2's expected
accepted streak), or the others in ``calibrate/losses.py``.

Initialisation ``verifier`` copies the verifier's last ``num_layers`` decoder layers into
the draft layers (with their q/k/v biases, so the config gets ``attention_bias``; o_proj's
bias starts at zero) and its final norm into ``norm``; ``fc`` starts by passing the deepest
target layer through. ``random`` is transformers' default initialisation (as DFlash's own
training starts; the verifier's final norm on random layers gives confidently wrong
logits: a loss near 30 at the start, measured).

With ``holdout_records`` the last teacher records are kept out of training and the
teacher-forced acceptance on them is logged at every checkpoint.

With ``feature_cache`` the verifier's hidden states of each sequence are kept on disk in
fp16 after their first use, so later epochs cost only the drafter's own pass.

Checkpoints hold the drafter in vLLM's layout plus optimizer, scheduler and step
(``trainer.pt``, loaded with ``weights_only``); data is a pure function of (seed, step),
so an interrupted run resumes exactly.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from specdiff.calibrate.checkpoints import check_run_folder, restore_checkpoint, save_checkpoint
from specdiff.calibrate.data import TeacherSequences, step_rng, window_starts
from specdiff.calibrate.loop import StepLog, adamw_with_warmup
from specdiff.calibrate.losses import window_loss
from specdiff.calibrate.teacher import read_shards
from specdiff.calibrate.windows import WindowBatch, make_anchor_blocks
from specdiff.drafters.conditioned.files import load_dflash, save_dflash
from specdiff.drafters.conditioned.network import DFlashNetwork, dflash_config
from specdiff.models.loading import load_causal_lm
from specdiff.models.registry import DEFAULT_VERIFIER
from specdiff.verifier import Verifier, decoder_layers

INITS = ("verifier", "random")


@dataclass(frozen=True)
class DFlashTrainConfig:
    verifier: str = DEFAULT_VERIFIER
    teacher: str = "runs/teacher"  # `specdiff calibrate data` output (use --temperature 0: greedy)
    num_layers: int = 1
    intermediate_size: int = 0  # MLP width of the draft layers; 0: the verifier's
    target_layers: str = ""  # comma-separated verifier layer ids; empty: DFlash's default
    gamma: int = 8  # draft slots per block (block size gamma + 1)
    init: str = "verifier"
    loss: str = "ce_decay"
    steps: int = 200
    anchors_per_step: int = 16
    lr: float = 3e-4
    warmup_steps: int = 10
    max_seq_len: int = 384
    checkpoint_every: int = 20
    seed: int = 0
    feature_cache: str = ""  # folder for the verifier's fp16 hidden states per sequence ("": recompute each time)
    holdout_records: int = 0  # the last N teacher records are not trained on; acceptance on them at each checkpoint
    train_vocab: int = 0  # training softmax over the N lowest token ids + every teacher token (0: all); drafting uses all

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"--init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.intermediate_size < 0:
            raise ValueError(f"--intermediate-size must be >= 0 (0: the verifier's), got {self.intermediate_size}")
        if min(self.num_layers, self.gamma, self.steps, self.anchors_per_step, self.checkpoint_every) < 1:
            raise ValueError("--num-layers, --gamma, --steps, --anchors-per-step and --checkpoint-every must be >= 1")
        for flag, value in (("--holdout-records", self.holdout_records), ("--train-vocab", self.train_vocab),
                            ("--warmup-steps", self.warmup_steps)):
            if value < 0:
                raise ValueError(f"{flag} must be >= 0 (0: off), got {value}")
        if self.max_seq_len < self.gamma + 2:
            raise ValueError(f"--max-seq-len must hold a prompt token and a block of --gamma + 1, got {self.max_seq_len}")


def build_dflash_network(cfg: DFlashTrainConfig, verifier_model, sample_ids: torch.Tensor | None = None) -> DFlashNetwork:
    """The untrained network; ``sample_ids`` [seq_len] (a training sequence) calibrates the
    q/k norm scales of a network initialised from the verifier."""
    layer_ids = [int(x) for x in cfg.target_layers.split(",") if x.strip()] or None
    from_verifier = cfg.init == "verifier"
    config = dflash_config(verifier_model.config, cfg.num_layers, cfg.gamma + 1, layer_ids,
                           attention_bias=from_verifier and bool(getattr(verifier_model.config, "attention_bias", True)),
                           intermediate_size=cfg.intermediate_size or None)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        network = DFlashNetwork(config)
    if from_verifier:
        init_from_verifier(network, verifier_model, sample_ids)
    return network


@torch.no_grad()
def init_from_verifier(network: DFlashNetwork, verifier_model, sample_ids: torch.Tensor | None = None) -> None:
    """Draft layers <- the verifier's last layers (matching parameter names); norm <- its
    final norm; hidden_norm <- the first copied layer's input norm, so the context enters
    the copied attention as that layer's input would; fc <- pass the deepest target
    layer's features through. The verifier has no per-head q/k norms: they start at the
    mean RMS of the copied layer's queries and keys over ``sample_ids``, so attention starts
    about as sharp as the verifier's (unit norms would make it nearly uniform)."""
    source_layers = decoder_layers(verifier_model)[-len(network.layers):]
    for draft_layer, source_layer in zip(network.layers, source_layers):
        source = dict(source_layer.named_parameters())
        for name, param in draft_layer.named_parameters():
            if name in source and source[name].shape == param.shape:
                param.copy_(source[name])
    network.norm.weight.copy_(verifier_model.model.norm.weight)
    network.hidden_norm.weight.copy_(source_layers[0].input_layernorm.weight)
    if sample_ids is not None:
        for draft_layer, (q_rms, k_rms) in zip(network.layers, _query_key_rms(verifier_model, source_layers, sample_ids)):
            draft_layer.self_attn.q_norm.weight.fill_(q_rms)
            draft_layer.self_attn.k_norm.weight.fill_(k_rms)
    hidden = network.config.hidden_size
    network.fc.weight.zero_()
    network.fc.weight[:, -hidden:] = torch.eye(hidden)


def _query_key_rms(verifier_model, layers, sample_ids: torch.Tensor) -> list[tuple[float, float]]:
    """Mean per-head RMS of each layer's q_proj and k_proj outputs over one sequence."""
    head_dim = verifier_model.config.hidden_size // verifier_model.config.num_attention_heads
    found: dict[tuple[int, str], float] = {}
    handles = []
    for index, layer in enumerate(layers):
        for name in ("q_proj", "k_proj"):
            def record(module, args, output, key=(index, name)):
                heads = output.reshape(-1, output.shape[-1] // head_dim, head_dim).float()
                found[key] = float(heads.pow(2).mean(-1).sqrt().mean())
            handles.append(getattr(layer.self_attn, name).register_forward_hook(record))
    try:
        with torch.inference_mode():
            verifier_model(input_ids=sample_ids[None])
    finally:
        for handle in handles:
            handle.remove()
    return [(found[(i, "q_proj")], found[(i, "k_proj")]) for i in range(len(layers))]


class FeatureCache:
    """The frozen verifier's hidden states of each training sequence, computed once and kept
    on disk in fp16 (``features/<key>.safetensors``): later epochs skip the verifier pass.
    Fresh features are rounded to fp16 too, so a run reads the same numbers whether or not
    a sequence was cached (exact resume)."""

    def __init__(self, folder: Path | None, verifier_model, layer_ids: list[int]):
        self.folder, self.layer_ids = folder, list(layer_ids)
        self.verifier = Verifier(verifier_model)
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def features(self, ids: torch.Tensor, key: str) -> torch.Tensor:
        """[seq_len - 1, F] float32 for ids [seq_len]: every token a block can see."""
        path = self.folder / f"{key}.safetensors" if self.folder is not None and key else None
        if path is not None and path.is_file():
            try:
                stored = load_file(str(path))
                if stored["ids"].equal(ids) and stored["layers"].tolist() == self.layer_ids:
                    return stored["features"].float()
            except (SafetensorError, OSError, KeyError, RuntimeError) as error:  # a cache: recompute what is damaged
                print(f"train-dflash: feature cache entry {path} is damaged ({type(error).__name__}); recomputing it",
                      file=sys.stderr)
        features = self.verifier.prefill(ids[None], self.layer_ids).to(torch.float16)
        if path is not None:
            partial = path.with_suffix(".partial")
            save_file({"features": features, "ids": ids, "layers": torch.tensor(self.layer_ids)}, str(partial))
            os.replace(partial, path)
        return features.float()


def training_vocabulary(vocab_size: int, size: int, records: list[dict]) -> torch.Tensor | None:
    """Token ids the training softmax runs over: the ``size`` lowest ids (byte-level BPE ids
    rise as merges get rarer, so these are the common tokens) and every token of the teacher
    data; None (the whole vocabulary) when ``size`` is 0 or covers it."""
    if size <= 0 or size >= vocab_size:
        return None
    seen = {t for r in records for t in r["prompt_ids"] + r["completion_ids"]}
    return torch.tensor(sorted(set(range(size)) | seen))


class BlockObjective(nn.Module):
    """Loss of one batch of anchor blocks over one sequence; the module DDP would wrap.

    With ``vocabulary`` (token ids) the training softmax runs over those rows of the LM head
    only: the head is most of a step's cost, and 33K rows instead of 152K make steps about
    2.5x faster. Drafting and ``full_vocabulary=True`` use the whole head."""

    def __init__(self, network: DFlashNetwork, verifier_model, cache_folder: Path | None = None,
                 vocabulary: torch.Tensor | None = None):
        super().__init__()
        self.network = network
        self._features = [FeatureCache(cache_folder, verifier_model, network.target_layer_ids)]  # not a submodule
        self.embedding = verifier_model.get_input_embeddings()
        self.lm_head = verifier_model.get_output_embeddings()
        self.vocabulary = vocabulary
        if vocabulary is not None:
            self.head_rows = self.lm_head.weight.detach()[vocabulary].clone()  # [V', hidden], frozen
            self.position_of = torch.full((self.lm_head.weight.shape[0],), -1, dtype=torch.long)
            self.position_of[vocabulary] = torch.arange(len(vocabulary))

    def forward(self, ids: torch.Tensor, blocks: WindowBatch, loss_name: str, key: str = "",
                full_vocabulary: bool = False):
        features = self._features[0].features(ids, key)  # [seq_len - 1, F]
        context = self.network.context_kv(features[None], torch.arange(len(features))[None])
        seq_len = ids.shape[0]  # the last token has no feature; no block can see it anyway
        mask = torch.cat([blocks.attn_mask[..., : len(features)], blocks.attn_mask[..., seq_len:]], dim=-1)[:, None]
        hidden = self.network(self.network.embed_block(blocks.block_ids, self.embedding), blocks.positions, context,
                              mask)
        targets = blocks.targets
        if self.vocabulary is None or full_vocabulary:
            logits = self.lm_head(hidden[:, 1:])
        else:
            logits = hidden[:, 1:] @ self.head_rows.T
            targets = self.position_of[targets]
            if bool(((targets < 0) & (blocks.valid > 0)).any()):
                raise ValueError("a training target is outside the training vocabulary")
            targets = targets.clamp_min(0)  # slots without a target
        log_probs = logits.float().log_softmax(-1)  # [W, gamma, vocab]
        log_q = log_probs.gather(-1, targets[..., None])[..., 0]
        greedy_hit = (log_probs.argmax(-1) == targets).float() * blocks.valid
        return window_loss(loss_name, log_q, blocks.valid), log_q.detach(), greedy_hit


@torch.no_grad()
def heldout_acceptance(objective: BlockObjective, held: TeacherSequences, gamma: int, anchors: int,
                       seed: int) -> dict:
    """Teacher-forced greedy acceptance on held-out sequences: ``accept[k]`` is the share of
    blocks (at fixed random anchors) whose first k + 1 argmax drafts all equal the
    verifier's tokens; ``tau`` = 1 + their sum, the tokens a step would commit."""
    streaks = []
    for index in range(len(held.records)):
        sequence = held.sequence(index)
        starts = window_starts(sequence, anchors, step_rng(seed, -2, index))
        blocks = make_anchor_blocks(sequence.ids, starts, gamma, objective.network.mask_token_id)
        _, _, greedy_hit = objective(sequence.ids, blocks, "ce_decay", sequence.key, full_vocabulary=True)
        streaks.append(greedy_hit.cumprod(-1))
    accept = torch.cat(streaks).mean(0)
    return {"heldout_accept": [round(float(a), 3) for a in accept], "heldout_tau": round(1 + float(accept.sum()), 3)}


def check_target_layers(target_layers: str, depth: int) -> None:
    wanted = [int(x) for x in target_layers.split(",") if x.strip()]
    if any(not 0 <= layer < depth for layer in wanted):
        raise ValueError(f"--target-layers {target_layers} names layers outside the verifier's 0..{depth - 1}")


def train_dflash(cfg: DFlashTrainConfig, out_dir: str | Path, stop_after: int | None = None) -> Path | None:
    """Run (or resume) training; the final drafter folder, or None when ``stop_after``
    steps of this invocation ended it early (run again to resume)."""
    out = Path(out_dir)
    check_run_folder(cfg, out, resumable_changes=("steps", "checkpoint_every", "feature_cache"))
    records = read_shards(cfg.teacher)
    verifier_model, _ = load_causal_lm(cfg.verifier)
    teacher = TeacherSequences(records, cfg.max_seq_len, verifier_model.config.vocab_size)
    if teacher.filtering:
        print(f"train-dflash: {teacher.filtering}", file=sys.stderr)
    sequences, held = teacher.split(cfg.holdout_records)
    verifier_model.requires_grad_(False)
    check_target_layers(cfg.target_layers, verifier_model.config.num_hidden_layers)  # before anything is written
    network = build_dflash_network(cfg, verifier_model, sequences.draw(step_rng(cfg.seed, -1, 0)).ids)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    objective = BlockObjective(network, verifier_model, Path(cfg.feature_cache) if cfg.feature_cache else None,
                               training_vocabulary(verifier_model.config.vocab_size, cfg.train_vocab,
                                                   sequences.records))
    optimizer, scheduler = adamw_with_warmup(network.parameters(), cfg.lr, cfg.warmup_steps)
    step = restore_checkpoint(out, lambda folder: network.load_state_dict(load_dflash(folder, verifier_model.config)
                                                                        .state_dict()), optimizer, scheduler)
    stop_at = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    log = StepLog(out, cfg.steps, step, "train-dflash")
    try:
        while step < stop_at:
            rng = step_rng(cfg.seed, step, 0)
            sequence = sequences.draw(rng)
            blocks = make_anchor_blocks(sequence.ids, window_starts(sequence, cfg.anchors_per_step, rng), cfg.gamma,
                                        network.mask_token_id)
            started = time.perf_counter()
            loss, log_q, greedy_hit = objective(sequence.ids, blocks, cfg.loss, sequence.key)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            log.write(step, loss.detach(), log_q, greedy_hit, blocks.valid, time.perf_counter() - started)
            if step % cfg.checkpoint_every == 0 or step == stop_at:
                save_checkpoint(out, step, lambda folder: save_dflash(network, folder), optimizer, scheduler)
                if held is not None:
                    log.note(step, **heldout_acceptance(objective, held, cfg.gamma, cfg.anchors_per_step, cfg.seed))
    finally:
        log.close()
    if step < cfg.steps:
        return None
    return save_dflash(network, out / "final")
