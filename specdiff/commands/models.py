"""``specdiff models``: list and prepare the named models shipped as PyPI packages."""

from __future__ import annotations

import json
import shutil
import time

from specdiff.drafters.conditioned.shipped import SHIPPED_DFLASH, dflash_drafter_folder, shipped_dflash_dir
from specdiff.drafters.standalone.files import DRAFTER_CONFIG, SHIPPED_DRAFTERS, shipped_drafter_dir
from specdiff.machine_cache import cache_root
from specdiff.models.prepare import ModelUnavailableError, is_installed, is_prepared, prepare, prepared_dir
from specdiff.models.registry import PACKAGED_MODELS


def cmd_models_list(args) -> int:
    print(f"{'name':32} {'size':>9}  {'installed':9}  {'prepared':8}  role")
    for model in PACKAGED_MODELS.values():
        print(f"{model.name:32} {model.size / 1e6:7.0f}MB  {'yes' if is_installed(model) else 'no':9}  "
              f"{'yes' if is_prepared(model) else 'no':8}  {model.description}")
    print(f"\ncache: {prepared_dir(next(iter(PACKAGED_MODELS.values()))).parent} (set SPECDIFF_CACHE to move it)")
    print("\nshipped drafters (pass the name as --drafter):")
    for name, kind in shipped_drafters():
        print(f"  {name:36} {kind}")
    return 0


def shipped_drafters() -> list[tuple[str, str]]:
    """(name, what it is) of every drafter in this installation's package data."""

    found = []
    for names, locate, kind in ((SHIPPED_DRAFTERS, shipped_drafter_dir, "standalone diffusion drafter"),
                                (SHIPPED_DFLASH, shipped_dflash_dir, "DFlash drafter (reads the verifier's hidden states)")):
        for name in names:
            try:
                locate(name)
                found.append((name, kind))
            except FileNotFoundError:
                continue
    return found


def cmd_models_prepare(args) -> int:
    """A named model, or a shipped drafter: its base model, and for a DFlash drafter its full
    folder built in the cache (what its first use would do)."""

    started = time.perf_counter()
    standalone = shipped_drafter_dir(args.name)
    if standalone is not None:
        base = json.loads((standalone / DRAFTER_CONFIG).read_text())["base"]
        prepare(base, force=args.force)
        folder = standalone
    elif shipped_dflash_dir(args.name) is not None:
        if args.force:
            shutil.rmtree(cache_root() / "drafters" / args.name, ignore_errors=True)
        folder = dflash_drafter_folder(args.name)
    elif args.name in PACKAGED_MODELS:
        folder = prepare(args.name, force=args.force)
    else:
        known = ", ".join([*PACKAGED_MODELS, *(name for name, _ in shipped_drafters())])
        raise ModelUnavailableError(f"unknown model {args.name!r}; known: {known}")
    print(f"{args.name} ready in {folder} ({time.perf_counter() - started:.1f} s)")
    return 0


def register(commands) -> None:
    models = commands.add_parser("models", help="named models shipped as PyPI packages")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    model_commands.add_parser("list", help="list named models").set_defaults(run=cmd_models_list)
    prepare = model_commands.add_parser("prepare", help="verify and convert a named model once (or what a shipped "
                                                      "drafter needs: its base model; a DFlash drafter's folder)")
    prepare.add_argument("name")
    prepare.add_argument("--force", action="store_true", help="rebuild the cache entry (e.g. after it was damaged)")
    prepare.set_defaults(run=cmd_models_prepare)
