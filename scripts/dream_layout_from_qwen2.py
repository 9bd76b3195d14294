"""Write a Qwen2 causal LM folder in the Dream layout (a measurement aid, not a trained drafter).

Dream and DiffuCoder are Qwen2 weights with ``model_type`` "Dream" and a ``mask_token_id``;
this writes exactly that around a Qwen2 model's own weights (linked, not copied), with Dream's
mask id 151666 (an unused embedding row of Qwen2.5's 151,936), so the Dream loader, both prefix
modes and their costs can be measured on a machine without a published Dream checkpoint. The
weights were trained causally, never on masks: acceptance measured with it says nothing about
a real Dream drafter's.

    python scripts/dream_layout_from_qwen2.py ~/.cache/specdiff/models/qwen2.5-coder-0.5b-instruct runs/dream-0.5b
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

DREAM_MASK_TOKEN_ID = 151666


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a Qwen2 model folder (config.json, model.safetensors, tokenizer.json)")
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    config = json.loads((args.source / "config.json").read_text())
    if config.get("model_type") != "qwen2":
        raise SystemExit(f"{args.source} is not a Qwen2 model (model_type {config.get('model_type')!r})")
    args.out.mkdir(parents=True, exist_ok=True)
    config.update(model_type="Dream", architectures=["DreamModel"], mask_token_id=DREAM_MASK_TOKEN_ID,
                  rope_theta=config.get("rope_theta") or config.get("rope_parameters", {}).get("rope_theta", 10000.0))
    config.pop("rope_parameters", None)
    (args.out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    weights = args.out / "model.safetensors"
    weights.unlink(missing_ok=True)
    weights.symlink_to((args.source / "model.safetensors").resolve())
    shutil.copy(args.source / "tokenizer.json", args.out / "tokenizer.json")
    print(f"wrote {args.out} (Dream layout, mask id {DREAM_MASK_TOKEN_ID})")


if __name__ == "__main__":
    main()
