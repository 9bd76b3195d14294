"""The settings of tree drafting (CLI: ``--sources``, ``--datastore`` and ``--tree-<field>``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from specdiff.config_args import add_dataclass_args, dataclass_from_args

SOURCES = ("lookup", "suffix", "diffusion")


@dataclass(frozen=True)
class TreeConfig:
    sources: str = field(default="lookup,suffix,diffusion", metadata={
        "aliases": ("--sources",),
        "help": "comma-separated draft sources verified in one tree: lookup (suffix matches in the prompt and the "
                "text so far), suffix (earlier outputs of this process and --datastore), diffusion (the drafter); "
                "'diffusion' alone is plain SpecDiff-2 drafting without a tree policy"})
    datastore: str | None = field(default=None, metadata={
        "aliases": ("--datastore",),
        "help": "files, a folder of them or JSONL (a 'text' field per line) whose token text the suffix source "
                "searches"})
    max_depth: int = field(default=16, metadata={"help": "longest branch a lookup source proposes"})
    max_nodes: int = field(default=24, metadata={"help": "most draft tokens in one verification pass"})
    min_ngram: int = field(default=1, metadata={"help": "shortest suffix match a lookup source uses"})
    max_ngram: int = field(default=4, metadata={"help": "longest suffix match a lookup source tries"})
    max_branches: int = field(default=4, metadata={"help": "branches per lookup source (distinct continuations)"})

    def __post_init__(self) -> None:
        names = self.source_names
        unknown = [name for name in names if name not in SOURCES]
        if unknown or not names:
            raise ValueError(f"--sources takes a comma-separated list of {', '.join(SOURCES)}, got {self.sources!r}")
        if self.datastore and "suffix" not in names:
            raise ValueError("--datastore is searched by the suffix source: add 'suffix' to --sources")
        for name in ("max_depth", "max_nodes", "min_ngram", "max_branches"):
            if getattr(self, name) < 1:
                raise ValueError(f"--tree-{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_ngram < self.min_ngram:
            raise ValueError(f"--tree-max-ngram ({self.max_ngram}) must be >= --tree-min-ngram ({self.min_ngram})")

    @property
    def source_names(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.sources.split(",") if name.strip())

    @property
    def uses_tree(self) -> bool:
        """False for 'diffusion' alone: the drafter drafts by itself, as before trees."""
        return self.source_names != ("diffusion",)


def add_tree_args(parser) -> None:
    add_dataclass_args(parser, TreeConfig, prefix="tree_")


def tree_config_from_args(args) -> TreeConfig:
    return dataclass_from_args(TreeConfig, args, prefix="tree_")
