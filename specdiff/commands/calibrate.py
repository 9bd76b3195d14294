"""``specdiff calibrate``: teacher data, drafter training, evaluation."""

from __future__ import annotations

import json
from pathlib import Path

from specdiff.bench.datasets import load_prompts
from specdiff.calibrate.dflash_train import DFlashTrainConfig, train_dflash
from specdiff.calibrate.evaluate import replay_eval, trajectory_file, verifier_trajectories
from specdiff.calibrate.teacher import TeacherConfig, generate_teacher_data, read_shards
from specdiff.calibrate.train import TrainConfig, train
from specdiff.config_args import add_dataclass_args, dataclass_from_args
from specdiff.drafters.conditioned.files import is_dflash_folder
from specdiff.drafters.conditioned.shipped import write_shipped
from specdiff.drafters.loading import DrafterConfig, load_drafter
from specdiff.drafters.registry import resolve
from specdiff.models.loading import load_causal_lm, load_tokenizer
from specdiff.models.registry import DEFAULT_VERIFIER
from specdiff.serving.environment import restart_with_vllm_environment
from specdiff.verifiers.backends import AUTO, BACKENDS, choose_backend


def cmd_data(args) -> int:
    config = dataclass_from_args(TeacherConfig, args)
    if config.engine == "vllm":
        restart_with_vllm_environment()
    out = generate_teacher_data(config, args.out)
    records = read_shards(out)
    print(f"{len(records)} completions, {sum(len(r['completion_ids']) for r in records)} tokens in {out}")
    return 0


def cmd_train(args) -> int:
    final = train(dataclass_from_args(TrainConfig, args), args.out, args.stop_after)
    print(f"drafter saved in {final}" if final else f"stopped early; run again to resume from {args.out}")
    return 0


def register(commands) -> None:
    calibrate = commands.add_parser("calibrate", help="build and align a diffusion drafter")
    sub = calibrate.add_subparsers(dest="calibrate_command", required=True)
    data = sub.add_parser("data", help="teacher completions from the verifier (resumable)")
    data.add_argument("--out", required=True, help="output folder for token-id shards")
    add_dataclass_args(data, TeacherConfig)
    data.set_defaults(run=cmd_data)

    train = sub.add_parser("train", help="adapt, then align a diffusion drafter (resumable; torchrun for DDP)")
    train.add_argument("--out", required=True, help="run folder: checkpoints, logs, final drafter")
    train.add_argument("--stop-after", type=int, default=None, help="stop after this many steps (resume later)")
    add_dataclass_args(train, TrainConfig)
    train.set_defaults(run=cmd_train)
    register_train_dflash(sub)
    register_ship_dflash(sub)
    register_eval(sub)


def cmd_train_dflash(args) -> int:
    final = train_dflash(dataclass_from_args(DFlashTrainConfig, args), args.out, args.stop_after)
    print(f"drafter saved in {final}" if final else f"stopped early; run again to resume from {args.out}")
    return 0


def register_train_dflash(sub) -> None:
    train = sub.add_parser("train-dflash", help="train a DFlash-layout drafter on the verifier's hidden states (resumable)")
    train.add_argument("--out", required=True, help="run folder: checkpoints, logs, final drafter")
    train.add_argument("--stop-after", type=int, default=None, help="stop after this many steps (resume later)")
    add_dataclass_args(train, DFlashTrainConfig)
    train.set_defaults(run=cmd_train_dflash)


SHIP_LIMIT_MB = 25  # what a drafter may add to the repository


def cmd_ship_dflash(args) -> int:
    drafter, out = Path(args.drafter), Path(args.out)
    if not is_dflash_folder(drafter):
        raise ValueError(f"--drafter {drafter} is not a DFlash folder (a run's final/ or checkpoint-N/)")
    if args.rank < 1 or not args.max_mb > 0:
        raise ValueError(f"--rank must be >= 1 and --max-mb > 0, got {args.rank} and {args.max_mb}")
    card = {}
    if args.card:
        try:
            card = json.loads(Path(args.card).read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"--card {args.card}: not a readable JSON file ({str(error).splitlines()[0]})") from None
        if not isinstance(card, dict):
            raise ValueError(f"--card {args.card}: holds {type(card).__name__}, not a JSON object of facts")
    try:
        source_layers = [int(x) for x in args.source_layers.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--source-layers takes comma-separated layer ids, got {args.source_layers!r}") from None
    size = write_shipped(out, drafter, args.verifier, source_layers, args.rank, card, args.max_mb * 1e6)
    print(f"{out}: {size / 1e6:.1f} MB")
    return 0


def register_ship_dflash(sub) -> None:
    ship = sub.add_parser("ship-dflash", help="compress a trained DFlash drafter into the small form the package ships")
    ship.add_argument("--drafter", required=True, help="a DFlash folder (final/ or checkpoint-N/ of a run)")
    ship.add_argument("--out", required=True, help="e.g. specdiff/artifacts/specdiff_dflash_qwen2.5_coder_1.5b")
    ship.add_argument("--verifier", default=DEFAULT_VERIFIER, help="the verifier it was trained for")
    ship.add_argument("--source-layers", default="",
                      help="verifier layer each draft layer started from (--init verifier: its last layers); "
                           "empty for --init random")
    ship.add_argument("--rank", type=int, default=64, help="rank of the deltas over source layers")
    ship.add_argument("--card", default="", help="JSON file of model-card facts to store with it")
    ship.add_argument("--max-mb", type=float, default=SHIP_LIMIT_MB)
    ship.set_defaults(run=cmd_ship_dflash)


def cmd_eval(args) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: give a folder for the evaluation's results")
    prompts = load_prompts(args.dataset, args.data_path, None, args.limit)
    out.mkdir(parents=True, exist_ok=True)
    backend = choose_backend(args.verifier, args.backend)  # DFlash drafters read the torch model's hidden states
    trajectories = verifier_trajectories(prompts, args.verifier, args.max_new_tokens, trajectory_file(out, backend),
                                         backend)
    plain_tps = sum(len(r["trajectory"]) for r in trajectories.values()) / sum(r["seconds"] for r in trajectories.values())
    results = {}
    verifier_model = None  # DFlash drafters read its hidden states (one teacher-forced pass per trajectory)
    drafter_config = dataclass_from_args(DrafterConfig, args, prefix="drafter_")
    verifier_tokenizer = load_tokenizer(args.verifier)  # Dream-architecture drafters are checked against it
    if drafter_config.kind == "dflash" or any(resolve(spec).conditioned for spec in args.drafters):
        verifier_model, _ = load_causal_lm(args.verifier)
    for spec in args.drafters:
        drafter, _ = load_drafter(spec, drafter_config, verifier_model=verifier_model,
                                  verifier_tokenizer=verifier_tokenizer)
        for num_drafts in args.num_drafts:
            stats = replay_eval(drafter, trajectories, args.gamma, num_drafts, args.draft_temperature, args.seed,
                                verifier_model, args.draft_top_k)
            results[f"{spec} K={num_drafts}"] = stats.to_dict()
            acc = stats.acceptance_by_position
            print(f"{spec} K={num_drafts}: tau {stats.tau:.3f}, acceptance slot1..4 "
                  f"{' '.join(f'{a:.2f}' for a in acc[:4])}, slot>=8 mean {sum(acc[7:]) / max(1, len(acc[7:])):.3f}, "
                  f"draft {stats.draft_seconds / max(1, stats.steps) * 1000:.0f} ms/step", flush=True)
    (out / "replay.json").write_text(json.dumps({"backend": backend, "plain_tokens_per_s": plain_tps, "gamma": args.gamma,
                                                 "prompts": len(trajectories), "results": results}, indent=2))
    return 0


def register_eval(sub) -> None:
    evaluate = sub.add_parser("eval", help="tau and per-position acceptance along the verifier's greedy trajectories")
    evaluate.add_argument("--drafters", nargs="+", required=True)

    add_dataclass_args(evaluate, DrafterConfig, prefix="drafter_")
    evaluate.add_argument("--verifier", default=DEFAULT_VERIFIER)
    evaluate.add_argument("--backend", default=AUTO, choices=BACKENDS,
                          help="where the verifier's greedy trajectories come from (see generate --backend); a "
                               "drafter reading hidden states takes them from the transformers model either way")
    evaluate.add_argument("--dataset", default="humaneval")
    evaluate.add_argument("--data-path", default=None)
    evaluate.add_argument("--limit", type=int, default=20, help="prompts per category")
    evaluate.add_argument("--gamma", type=int, default=16)
    evaluate.add_argument("--max-new-tokens", type=int, default=128)
    evaluate.add_argument("--num-drafts", type=int, nargs="+", default=[1])
    evaluate.add_argument("--draft-temperature", type=float, default=0.0)
    evaluate.add_argument("--draft-top-k", type=int, default=0,
                          help="sampled drafts from each slot's k most likely tokens (0 = all; reference: 64)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--out", required=True)
    evaluate.set_defaults(run=cmd_eval)
