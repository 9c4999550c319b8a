"""`RetrofitConfig`: every option of `agentrt retrofit`, validated; the CR schedule; YAML loading."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from agentrt.dms.config import DMSConfig
from agentrt.errors import ConfigError

FLAVOURS = ("adapter", "qneuron")
OBJECTIVES = ("kl", "layer_local")
ALPHA_PER = ("head", "layer")
DTYPES = ("auto", "float32", "bfloat16")
REQUIRED = ("model", "data", "out")
# Keys that may differ between a run and its `--resume` (they do not change the math).
RESUMABLE_CHANGES = frozenset(
    {
        "steps",
        "save_every",
        "save_every_minutes",
        "max_minutes",
        "resume",
        "resume_from",
        "init_adapters",
        "device",
        "threads",
        "max_eval_blocks",
        "eval_seq_len",
        "heldout_data",
        "gradient_checkpointing",
        "save_model",
    }
)
# Paths that may move between sessions when continuing from a checkpoint folder elsewhere
# (`resume_from`): the corpus is rebuilt and the model re-resolved; the training blocks'
# fingerprint is checked instead.
RELOCATABLE = frozenset({"model", "data"})
_INT_KEYS = frozenset(
    {
        "window",
        "steps",
        "ramp_steps",
        "batch_size",
        "grad_accum",
        "seq_len",
        "seed",
        "save_every",
        "max_eval_blocks",
        "eval_seq_len",
        "threads",
        "lora_rank",
    }
)
_FLOAT_KEYS = frozenset(
    {
        "target_cr",
        "initial_cr",
        "lr",
        "tau",
        "eval_fraction",
        "save_every_minutes",
        "max_minutes",
        "lora_alpha",
        "lora_lr",
    }
)
_BOOL_KEYS = frozenset({"resume", "gradient_checkpointing", "save_model"})


@dataclass(frozen=True)
class RetrofitConfig:
    """Options of one retrofit run (flags and YAML keys share these names).

    The compression-ratio target rises linearly from `initial_cr` at step 0 to `target_cr`
    at `ramp_steps` and stays there; the eviction target is 1 − 1/CR(step).
    """

    model: str  # local HF folder or hub id of the starting model
    data: tuple[str, ...]  # text / JSONL files or folders of them
    out: str  # output folder (HF model folder + report + log + checkpoints/)
    flavour: str = "adapter"  # adapter: only dms_proj_alpha* train; qneuron: all weights
    window: int = 512  # DMS window w
    target_cr: float = 8.0  # final compression ratio of the schedule
    initial_cr: float = 1.0  # compression ratio at step 0
    steps: int = 300  # optimizer updates
    ramp_steps: int = 250  # updates over which CR rises from initial_cr to target_cr
    lr: float = 3e-5  # AdamW learning rate (constant)
    batch_size: int = 1  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per update
    seq_len: int = 4096  # tokens per packed training sequence
    tau: float = 0.1  # Gumbel-sigmoid temperature
    alpha_per: str = "head"  # one decision per KV head or per layer
    seed: int = 42  # data order, held-out split and Gumbel noise
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    dtype: str = "auto"  # autocast: auto (bf16 on CUDA, off on CPU), float32, bfloat16
    save_every: int = 100  # checkpoint every N updates (0: only at the end)
    resume: bool = False  # continue from the newest checkpoint in out/checkpoints
    eval_fraction: float = 0.05  # share of packed blocks held out (at least one)
    max_eval_blocks: int = 16  # held-out blocks served for the report
    gradient_checkpointing: bool = False  # recompute MLP activations in the backward
    objective: str = "kl"  # kl: end-to-end KL to the dense model; layer_local: per-layer MSE
    heldout_data: tuple[str, ...] = ()  # held-out files (then every `data` block trains)
    eval_seq_len: int = 0  # held-out block length for the report (0: seq_len)
    save_every_minutes: float = 0.0  # also checkpoint after an update once this much time passed
    max_minutes: float = 0.0  # stop (with a checkpoint) after this much training time (0: off)
    resume_from: str = ""  # continue from this checkpoint folder (e.g. a committed state)
    init_adapters: str = ""  # start a fresh schedule from the adapters in this folder
    threads: int = 0  # torch intra-op threads (0: torch's default)
    save_model: bool = False  # adapter flavour: also write a whole model folder into out
    lora_rank: int = 0  # > 0: also train a rank-r LoRA on q/k/v/o beside the adapters
    lora_alpha: float = 16.0  # the LoRA delta is (lora_alpha / lora_rank) · B A
    lora_lr: float = 2e-4  # AdamW learning rate of the LoRA (the adapters keep `lr`)

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(
                "invalid retrofit config: " + "; ".join(msg for _, msg in problems),
                hint="see docs/RETROFIT.md for every option and its range",
            )

    def problems(self) -> list[tuple[str, str]]:
        """Every (key, reason) this config is invalid for (empty when valid)."""
        return config_problems(asdict(self))

    # -- the schedule ------------------------------------------------------------------
    def cr_at(self, step: int) -> float:
        """Compression-ratio target of update `step` (0-based): linear ramp, then flat."""
        if self.ramp_steps == 0:
            return float(self.target_cr)
        frac = min(step / self.ramp_steps, 1.0)
        return self.initial_cr + (self.target_cr - self.initial_cr) * frac

    def target_fraction(self, step: int) -> float:
        """Eviction-fraction target 1 − 1/CR(step) of update `step`."""
        return 1.0 - 1.0 / self.cr_at(step)

    # -- derived -----------------------------------------------------------------------
    def dms_config(self) -> DMSConfig:
        """The DMSConfig the student is trained and saved with."""
        return DMSConfig(
            window_size=self.window,
            separate_alpha=self.flavour == "adapter",
            alpha_per=self.alpha_per,
            tau=float(self.tau),
        )

    @property
    def lora_scale(self) -> float:
        """The LoRA delta's factor lora_alpha / lora_rank (0 without a LoRA)."""
        return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

    @property
    def tokens_per_step(self) -> int:
        """Training tokens per optimizer update."""
        return self.batch_size * self.grad_accum * self.seq_len

    def to_dict(self) -> dict[str, Any]:
        """Plain values (path tuples as lists), for JSON/YAML."""
        values = asdict(self)
        values["data"] = list(self.data)
        values["heldout_data"] = list(self.heldout_data)
        return values

    def resume_mismatches(self, saved: dict[str, Any], relocated: bool = False) -> list[str]:
        """Keys whose value differs from a checkpoint's config in a way resuming cannot allow.

        relocated: the checkpoint comes from `resume_from`, so model and data paths may differ.
        Keys the checkpoint predates are compared with their defaults.
        """
        mine = self.to_dict()
        defaults = {f.name: f.default for f in fields(self)}
        allowed = RESUMABLE_CHANGES | ({"out"} | (RELOCATABLE if relocated else set()))
        return sorted(
            f"{k}: checkpoint {saved.get(k, defaults.get(k))!r}, now {mine[k]!r}"
            for k in mine
            if k not in allowed and _norm(saved.get(k, defaults.get(k))) != _norm(mine[k])
        )

    @classmethod
    def from_dict(
        cls,
        values: dict[str, Any],
        *,
        source: str | None = None,
        lines: dict[str, int] | None = None,
    ) -> RetrofitConfig:
        """Build from option values; errors name the key, its value and (for YAML) the line."""
        known = {f.name for f in fields(cls)}
        unknown = [k for k in values if k not in known]
        where = _locator(source, lines or {})
        if unknown:
            raise ConfigError(
                "; ".join(f"{where(k)}unknown key {k!r}" for k in unknown),
                hint=f"known keys: {', '.join(sorted(known))}",
            )
        kwargs = {k: _coerce(k, v) for k, v in values.items()}
        for key in REQUIRED:
            kwargs.setdefault(key, "" if key != "data" else ())
        defaults = {f.name: f.default for f in fields(cls) if f.name not in REQUIRED}
        problems = config_problems({**defaults, **kwargs})
        if problems:
            raise ConfigError(
                "; ".join(f"{where(key)}{msg}" for key, msg in problems),
                hint="see docs/RETROFIT.md for every option and its range",
            )
        return cls(**kwargs)


def config_problems(v: dict[str, Any]) -> list[tuple[str, str]]:
    """Every (key, reason) the option values `v` are invalid for (empty when valid)."""
    out: list[tuple[str, str]] = []

    def bad(key: str, rule: str) -> None:
        out.append((key, f"{key}={v[key]!r} {rule}"))

    missing = [
        (key, f"{key} is required (flag --{key} or YAML key `{key}`)")
        for key in REQUIRED
        if not v[key]
    ]
    for key in ("data", "heldout_data"):
        if not isinstance(v[key], tuple) or not all(isinstance(p, str) for p in v[key]):
            bad(key, "must be a list of paths")
    for key in (
        "model",
        "out",
        "flavour",
        "alpha_per",
        "dtype",
        "device",
        "objective",
        "resume_from",
        "init_adapters",
    ):
        if not isinstance(v[key], str):
            bad(key, "must be a string")
    for key in sorted(_INT_KEYS):
        if not isinstance(v[key], int) or isinstance(v[key], bool):
            bad(key, "must be an integer")
    for key in sorted(_FLOAT_KEYS):
        if not isinstance(v[key], int | float) or isinstance(v[key], bool):
            bad(key, "must be a number")
    for key in sorted(_BOOL_KEYS):
        if not isinstance(v[key], bool):
            bad(key, "must be true or false")
    if out:
        return missing + out  # the range checks below assume the types are right
    if v["flavour"] not in FLAVOURS:
        bad("flavour", f"must be one of {', '.join(FLAVOURS)}")
    if v["objective"] not in OBJECTIVES:
        bad("objective", f"must be one of {', '.join(OBJECTIVES)}")
    elif v["objective"] == "layer_local" and v["flavour"] != "adapter":
        bad("objective", "layer_local trains adapters only (flavour: adapter)")
    if v["init_adapters"] and v["flavour"] != "adapter":
        bad("init_adapters", "needs flavour: adapter")
    if v["lora_rank"] < 0:
        bad("lora_rank", "must be ≥ 0 (0: no LoRA)")
    elif v["lora_rank"] and v["flavour"] != "adapter":
        bad("lora_rank", "needs flavour: adapter (the qneuron flavour trains every weight)")
    elif v["lora_rank"] and v["save_model"]:
        bad("save_model", "is not available with a LoRA (serve out/adapters on the base model)")
    for key in ("lora_alpha", "lora_lr"):
        if not v[key] > 0:
            bad(key, "must be > 0")
    if v["init_adapters"] and v["resume_from"]:
        bad("init_adapters", "cannot be combined with resume_from (which brings its adapters)")
    for key in ("eval_seq_len", "threads"):
        if v[key] < 0:
            bad(key, "must be ≥ 0")
    if v["eval_seq_len"] and not v["heldout_data"]:
        bad("eval_seq_len", "needs heldout_data (held-out files packed at that length)")
    for key in ("save_every_minutes", "max_minutes"):
        if v[key] < 0:
            bad(key, "must be ≥ 0")
    if v["alpha_per"] not in ALPHA_PER:
        bad("alpha_per", f"must be one of {', '.join(ALPHA_PER)}")
    if v["dtype"] not in DTYPES:
        bad("dtype", f"must be one of {', '.join(DTYPES)}")
    dev = v["device"].lower()
    if dev not in ("auto", "cpu", "cuda") and not dev.startswith("cuda:"):
        bad("device", "must be auto, cpu, cuda or cuda:N")
    if not v["target_cr"] >= 1:
        bad("target_cr", "must be ≥ 1 (a compression ratio: 8 keeps about 1 token in 8)")
    if not v["initial_cr"] >= 1:
        bad("initial_cr", "must be ≥ 1")
    elif v["initial_cr"] > v["target_cr"]:
        bad("initial_cr", f"must be ≤ target_cr={v['target_cr']!r}")
    for key in ("steps", "batch_size", "grad_accum"):
        if v[key] < 1:
            bad(key, "must be ≥ 1")
    for key in ("ramp_steps", "save_every", "window", "max_eval_blocks"):
        if v[key] < 0:
            bad(key, "must be ≥ 0")
    if v["seq_len"] < 2:
        bad("seq_len", "must be ≥ 2")
    elif v["window"] >= v["seq_len"] - 1:
        bad("window", f"must be < seq_len − 1 = {v['seq_len'] - 1}, or nothing is ever evicted")
    if not v["lr"] > 0:
        bad("lr", "must be > 0")
    if not v["tau"] > 0:
        bad("tau", "must be > 0")
    if not 0 < v["eval_fraction"] < 1:
        bad("eval_fraction", "must be between 0 and 1 (exclusive)")
    return missing + out


def _norm(value: Any) -> Any:
    """Tuples as lists, so a saved JSON list equals the config's tuple."""
    return list(value) if isinstance(value, tuple) else value


def _locator(source: str | None, lines: dict[str, int]):
    """A function key → 'file line N: ' prefix for messages (empty when unknown)."""

    def where(key: str) -> str:
        if source and key in lines:
            return f"{source} line {lines[key]}: "
        return ""

    return where


def _coerce(key: str, value: Any) -> Any:
    """Gentle type fixes: data as a tuple of str, ints for float keys, paths as str."""
    if key in ("data", "heldout_data"):
        if isinstance(value, str | Path):
            return (str(value),)
        if isinstance(value, list | tuple):
            return tuple(str(v) if isinstance(v, Path) else v for v in value)
        return value
    if key in ("model", "out", "resume_from", "init_adapters") and isinstance(value, Path):
        return str(value)
    if key in _FLOAT_KEYS and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def read_yaml_options(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The mapping of a retrofit YAML file and the 1-based line of each key."""
    import yaml

    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {file}: {err}") from err
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{file}{at}: invalid YAML: {problem}") from err
    if node is None:
        return {}, {}
    if not isinstance(node, yaml.MappingNode) or not isinstance(values, dict):
        line = node.start_mark.line + 1
        raise ConfigError(f"{file} line {line}: the top level must be a mapping of option: value")
    lines = {str(k.value): k.start_mark.line + 1 for k, _ in node.value}
    return {str(k): v for k, v in values.items()}, lines


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> RetrofitConfig:
    """YAML options (if any) overridden by `overrides` (flags); errors name key and line."""
    values, lines = read_yaml_options(path) if path is not None else ({}, {})
    merged = {**values, **(overrides or {})}
    yaml_only = {k: n for k, n in lines.items() if k not in (overrides or {})}
    return RetrofitConfig.from_dict(
        merged, source=str(path) if path is not None else None, lines=yaml_only
    )
