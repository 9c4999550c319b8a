"""Export a (retrofitted) demo model for shipping: bf16 safetensors HF folder under a size cap.

`python -m agentrt.demo.export SRC DST [--max-mb 10]` loads SRC with `agentrt.dms.load_model`
(DMS config and adapters included), casts every weight to bfloat16, saves DST with the
tokenizer, reloads DST and refuses a folder whose files exceed the cap.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agentrt.errors import ConfigError


def folder_bytes(path: Path) -> int:
    """Total size of the files in a folder (recursively)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def export(src: Path, dst: Path, *, max_mb: float = 10.0) -> int:
    """Write the bf16 copy of src to dst; returns its size in bytes (ConfigError over the cap)."""
    import torch

    from agentrt.dms import load_model

    if dst.exists() and any(dst.iterdir()):
        raise ConfigError(f"{dst} is not empty", hint="export into a new folder")
    model = load_model(src, dtype=torch.bfloat16)
    model.save_pretrained(dst)
    for name in ("pretrain_report.json", "retrofit_report.json", "pretrain_config.json"):
        if (src / name).is_file():
            (dst / name).write_bytes((src / name).read_bytes())
    size = folder_bytes(dst)
    if size > max_mb * 1024 * 1024:
        raise ConfigError(
            f"{dst} holds {size / 2**20:.2f} MiB, over the {max_mb:g} MiB cap",
            hint="train a smaller model (fewer layers or a smaller intermediate size)",
        )
    back = load_model(dst)
    assert back.dms == model.dms, (back.dms, model.dms)
    return size


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src", type=Path, help="model folder to export")
    parser.add_argument("dst", type=Path, help="new folder for the bf16 copy")
    parser.add_argument("--max-mb", type=float, default=10.0, help="size cap in MiB")
    args = parser.parse_args(argv)
    size = export(args.src, args.dst, max_mb=args.max_mb)
    print(f"wrote {args.dst} ({size / 2**20:.2f} MiB, bfloat16)")


if __name__ == "__main__":
    main()
