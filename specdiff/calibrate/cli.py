"""``specdiff calibrate``: teacher data, drafter training, evaluation."""

from __future__ import annotations

from specdiff.config_args import add_dataclass_args, dataclass_from_args


def cmd_data(args) -> int:
    from specdiff.calibrate.teacher import TeacherConfig, generate_teacher_data, read_shards

    out = generate_teacher_data(dataclass_from_args(TeacherConfig, args), args.out)
    records = read_shards(out)
    print(f"{len(records)} completions, {sum(len(r['completion_ids']) for r in records)} tokens in {out}")
    return 0


def cmd_train(args) -> int:
    from specdiff.calibrate.train import TrainConfig, train

    final = train(dataclass_from_args(TrainConfig, args), args.out, args.stop_after)
    print(f"drafter saved in {final}" if final else f"stopped early; run again to resume from {args.out}")
    return 0


def register(commands) -> None:
    from specdiff.calibrate.teacher import TeacherConfig

    calibrate = commands.add_parser("calibrate", help="build and align a diffusion drafter")
    sub = calibrate.add_subparsers(dest="calibrate_command", required=True)
    data = sub.add_parser("data", help="teacher completions from the verifier (resumable)")
    data.add_argument("--out", required=True, help="output folder for token-id shards")
    add_dataclass_args(data, TeacherConfig)
    data.set_defaults(run=cmd_data)

    from specdiff.calibrate.train import TrainConfig

    train = sub.add_parser("train", help="adapt, then align a diffusion drafter (resumable; torchrun for DDP)")
    train.add_argument("--out", required=True, help="run folder: checkpoints, logs, final drafter")
    train.add_argument("--stop-after", type=int, default=None, help="stop after this many steps (resume later)")
    add_dataclass_args(train, TrainConfig)
    train.set_defaults(run=cmd_train)
