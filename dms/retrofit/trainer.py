"""The retrofit loop: distil a model into its DMS self along the compression-ratio schedule.

`Retrofitter(cfg)` loads data, student and teacher (or the newest checkpoint with
`resume`, or a checkpoint folder elsewhere with `resume_from`), `train()` runs the updates
with a progress bar, a JSONL log line per update and checkpoints, and `finish()` saves the
result and writes `retrofit_report.json`, measured by reloading what it saved and serving
the held-out blocks through the paged cache. The adapter flavour saves only its adapters
(`out/adapters/`, loaded onto the unchanged base); the q-neuron flavour a model folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from agentrt.dms.loader import load_model, resolve_model_dir
from agentrt.dms.lora import lora_disabled, lora_info
from agentrt.dms.projections import lm_logits
from agentrt.dms.retrofit import setup
from agentrt.dms.retrofit.adapter_files import (
    apply_adapter_folder,
    is_adapter_folder,
    save_adapter_folder,
)
from agentrt.dms.retrofit.checkpoint import (
    STATE_FILE,
    list_checkpoints,
    load_trainer_state,
    save_checkpoint,
    set_rng_state,
)
from agentrt.dms.retrofit.config import RetrofitConfig
from agentrt.dms.retrofit.data import BatchOrder, prepare_data
from agentrt.dms.retrofit.layer_local import dense_layer_cache, layer_local_step
from agentrt.dms.retrofit.loss import (
    compression_loss,
    eviction_fractions,
    hidden_kl,
    noise_seed,
    valid_positions,
)
from agentrt.dms.retrofit.recompute import recomputed_mlps
from agentrt.dms.retrofit.report import dense_teacher, evaluate_heldout, expected_compression_ratio
from agentrt.errors import BudgetError, ConfigError

log = logging.getLogger(__name__)

LOG_FILE = "retrofit_log.jsonl"
REPORT_FILE = "retrofit_report.json"
ADAPTERS_DIR = "adapters"


class Retrofitter:
    """One retrofit run: setup in the constructor, then `train()` and `finish()`."""

    def __init__(self, cfg: RetrofitConfig, *, progress: bool = True) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.progress = progress
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = setup.resolve_device(cfg.device)
        self.amp_dtype = setup.autocast_dtype(cfg.dtype, self.device)
        self.model_dir = resolve_model_dir(cfg.model)
        setup.check_model_config(self.model_dir, cfg)
        tokenizer = setup.load_tokenizer(self.model_dir)
        self.data = prepare_data(
            cfg.data,
            tokenizer,
            seq_len=cfg.seq_len,
            eval_fraction=cfg.eval_fraction,
            seed=cfg.seed,
            heldout=cfg.heldout_data,
            eval_seq_len=cfg.eval_seq_len,
        )
        self._fingerprint: str | None = None
        state, source = self._resume_point()
        self.step = int(state["step"]) if state else 0
        adapters_only = source is not None and is_adapter_folder(source)
        weights = self.model_dir if source is None or adapters_only else source
        self.model = setup.load_student(weights, cfg, self.device, tokenizer)
        if adapters_only:
            apply_adapter_folder(self.model, source)
        elif state is None and cfg.init_adapters:
            apply_adapter_folder(self.model, cfg.init_adapters)
        if state is not None:
            self._check_data(state.get("data") or {})
        self.teacher = None
        if cfg.flavour == "qneuron":
            fresh = self.model if state is None else None
            self.teacher = setup.frozen_teacher(fresh, self.model_dir, self.device)
        base, lora = setup.split_trainable(self.model.hf)
        self.trainable = base + lora
        self.optimizer = setup.make_optimizer(base, cfg.lr, lora, cfg.lora_lr)
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            set_rng_state(state["rng"])
        self.order = BatchOrder(self.data.train.shape[0], cfg.batch_size, cfg.grad_accum, cfg.seed)
        self.last: dict[str, Any] = {}
        self.wall_s = 0.0
        self.last_save = time.monotonic()
        self.tiled_attention = True  # False: the dense [T, T] soft mask (for comparisons)

    # -- setup helpers -----------------------------------------------------------------
    def _resume_point(self) -> tuple[dict[str, Any] | None, Path | None]:
        """(trainer state, checkpoint folder) to continue from, or (None, None) for a fresh run.

        Candidates: the newest checkpoint in `out` (with `resume` or `resume_from`) and the
        `resume_from` folder; the one with more updates wins (`out`'s own on a tie).
        """
        cfg = self.cfg
        found = list_checkpoints(self.out)
        busy = self.out.exists() and any(self.out.iterdir())
        if not (cfg.resume or cfg.resume_from):
            if busy:
                raise ConfigError(
                    f"the output folder {self.out} is not empty",
                    hint="pass --resume to continue the run in it, or choose another --out",
                )
            return None, None
        candidates: list[tuple[int, int, Path]] = []
        if found:
            candidates.append((found[-1][0], 1, found[-1][1]))
        if cfg.resume_from:
            path = Path(cfg.resume_from).expanduser()
            if not (path / STATE_FILE).is_file():
                raise ConfigError(
                    f"resume_from: {path} holds no {STATE_FILE}",
                    hint="pass a checkpoint folder (out/checkpoints/checkpoint-N or a copy of it)",
                )
            candidates.append((int(load_trainer_state(path)["step"]), 0, path))
        if not candidates:
            if busy:
                raise ConfigError(
                    f"--resume: {self.out} holds no checkpoint to resume from",
                    hint="choose an empty --out to start a new run",
                )
            return None, None
        step, own, path = max(candidates)
        state = load_trainer_state(path)
        problems = cfg.resume_mismatches(state["config"], relocated=not own)
        if problems:
            raise ConfigError(
                f"--resume: the options differ from the run in {path}: " + "; ".join(problems),
                hint="resume with the original options (only steps, save_every, device, "
                "threads, evaluation options and gradient_checkpointing may change)",
            )
        log.info("resuming from %s (%d updates done)", path, step)
        return state, path

    def _data_position(self) -> dict[str, Any]:
        """What a checkpoint records about the data: blocks, their fingerprint, samples used."""
        cfg = self.cfg
        if self._fingerprint is None:
            self._fingerprint = self.data.fingerprint()
        return {
            "blocks": int(self.data.train.shape[0]),
            "seq_len": cfg.seq_len,
            "fingerprint": self._fingerprint,
            "samples_consumed": self.step * cfg.grad_accum * cfg.batch_size,
        }

    def _check_data(self, saved: dict[str, Any]) -> None:
        """Warn when the training blocks differ from the checkpoint's (the position then shifts)."""
        mine = self._data_position()
        if saved and saved.get("fingerprint") != mine["fingerprint"]:
            log.warning(
                "the training blocks differ from the checkpoint's (%s blocks, fingerprint %s; "
                "now %s blocks, %s): the run continues at update %d on the new blocks",
                saved.get("blocks"),
                saved.get("fingerprint"),
                mine["blocks"],
                mine["fingerprint"],
                self.step,
            )

    def _teacher_hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """Teacher's last residual stream [B, T, hidden] for ids [B, T] (no grad)."""
        teacher = self.teacher or self.model
        with lora_disabled(teacher.hf):  # an attached LoRA is the student's, not the teacher's
            return teacher.forward_train(ids, noise_seed=None, teacher=True, head=False).logits

    def _heads(self) -> tuple[Any, Any]:
        """(student head, teacher head): final norm + LM head as functions of hidden rows."""
        teacher = self.teacher or self.model
        return (
            lambda rows: lm_logits(self.model.hf, rows),
            lambda rows: lm_logits(teacher.hf, rows),
        )

    def _autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on the run's device when `dtype` asks for it, else a no-op."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # -- one update --------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer update (grad_accum micro-batches); returns its logged numbers."""
        if self.cfg.objective == "layer_local":
            return self._layer_local_step(step)
        cfg = self.cfg
        target = cfg.target_fraction(step)
        self.optimizer.zero_grad(set_to_none=True)
        kl_sum = dms_sum = frac_sum = 0.0
        for micro in range(cfg.grad_accum):
            ids = self.data.train[self.order.indices(step, micro)].to(self.device)  # [B, T]
            valid = valid_positions(ids, self.data.eos_id)
            with torch.no_grad(), self._autocast():
                teacher = self._teacher_hidden(ids)
            with self._autocast(), recomputed_mlps(self.model.hf, cfg.gradient_checkpointing):
                out = self.model.forward_train(
                    ids,
                    noise_seed=noise_seed(cfg.seed, step, micro),
                    tiled=self.tiled_attention,
                    head=False,
                )
                kl = hidden_kl(*self._heads(), out.logits, teacher, valid)
            dms = compression_loss(out.decisions, target)
            ((kl + dms) / cfg.grad_accum).backward()
            kl_sum += kl.item()
            dms_sum += dms.item()
            frac_sum += eviction_fractions(out.decisions.detach()).mean().item()
            del out, teacher
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, setup.MAX_GRAD_NORM)
        self.optimizer.step()
        n = cfg.grad_accum
        return {
            "loss": (kl_sum + dms_sum) / n,
            "kl": kl_sum / n,
            "compression_loss": dms_sum / n,
            "eviction_fraction": frac_sum / n,
            "target_fraction": target,
            "cr_target": cfg.cr_at(step),
            "grad_norm": float(grad_norm),
        }

    def _layer_local_step(self, step: int) -> dict[str, float]:
        """One update of the layer-local objective (see `layer_local`)."""
        cfg = self.cfg
        target = cfg.target_fraction(step)
        self.optimizer.zero_grad(set_to_none=True)
        sums = {"layer_mse": 0.0, "compression_loss": 0.0, "eviction_fraction": 0.0}
        for micro in range(cfg.grad_accum):
            ids = self.data.train[self.order.indices(step, micro)].to(self.device)
            with self._autocast():
                cache = dense_layer_cache(self.model, ids)
                stats = layer_local_step(
                    self.model,
                    cache,
                    noise_seed(cfg.seed, step, micro),
                    target,
                    scale=1.0 / cfg.grad_accum,
                )
            del cache
            for key in sums:
                sums[key] += stats[key]
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, setup.MAX_GRAD_NORM)
        self.optimizer.step()
        n = cfg.grad_accum
        mean = {k: v / n for k, v in sums.items()}
        return {
            "loss": mean["layer_mse"] + mean["compression_loss"],
            "layer_mse": mean["layer_mse"],
            "compression_loss": mean["compression_loss"],
            "eviction_fraction": mean["eviction_fraction"],
            "target_fraction": target,
            "cr_target": cfg.cr_at(step),
            "grad_norm": float(grad_norm),
        }

    # -- the loop ----------------------------------------------------------------------
    def train(self) -> None:
        """Run the remaining updates; checkpoint every save_every updates and at the end."""
        from tqdm import tqdm

        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        self._truncate_log(self.step)
        bar = tqdm(
            total=cfg.steps,
            initial=min(self.step, cfg.steps),
            unit="step",
            desc="retrofit",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        try:
            with (self.out / LOG_FILE).open("a", encoding="utf-8") as logf:
                for step in range(self.step, cfg.steps):
                    line = self._timed_step(step)
                    logf.write(json.dumps(line) + "\n")
                    logf.flush()
                    fit = "kl" if "kl" in line else "layer_mse"
                    bar.set_postfix(
                        loss=f"{line['loss']:.4f}",
                        **{fit: f"{line[fit]:.4f}"},
                        evict=f"{line['eviction_fraction']:.3f}",
                        cr=f"{line['cr_target']:.2f}",
                        tok_s=f"{line['tokens_per_s']:.0f}",
                        refresh=False,
                    )
                    bar.update(1)
                    self.step = step + 1
                    minutes = (time.monotonic() - self.last_save) / 60
                    out_of_time = bool(cfg.max_minutes) and self.wall_s >= 60 * cfg.max_minutes
                    if (
                        self.step == cfg.steps
                        or out_of_time
                        or (cfg.save_every and self.step % cfg.save_every == 0)
                        or (cfg.save_every_minutes and minutes >= cfg.save_every_minutes)
                    ):
                        save_checkpoint(
                            self.out,
                            self.step,
                            self.model,
                            self.optimizer,
                            cfg.to_dict(),
                            self._data_position(),
                        )
                        self.last_save = time.monotonic()
                    if out_of_time:
                        log.info(
                            "max_minutes=%s reached after %d updates", cfg.max_minutes, self.step
                        )
                        break
        finally:
            bar.close()

    def _timed_step(self, step: int) -> dict[str, Any]:
        """`train_step` with timing, out-of-memory translation and the log line's extra fields."""
        cfg = self.cfg
        start = time.perf_counter()
        try:
            stats = self.train_step(step)
        except setup.out_of_memory_error() as err:
            raise self._oom(err, step) from err
        took = time.perf_counter() - start
        self.wall_s += took
        self.last = {
            "step": step,
            **stats,
            "lr": cfg.lr,
            "tokens": cfg.tokens_per_step,
            "tokens_per_s": cfg.tokens_per_step / max(took, 1e-9),
            "elapsed_s": self.wall_s,
        }
        return self.last

    def _oom(self, err: BaseException, step: int) -> BudgetError:
        """The BudgetError for running out of device memory at update `step`."""
        cfg = self.cfg
        return BudgetError(
            f"out of memory at update {step} on {self.device} (batch_size={cfg.batch_size}, "
            f"seq_len={cfg.seq_len}, grad_accum={cfg.grad_accum}): {str(err).splitlines()[0]}",
            hint="lower batch_size (raise grad_accum to keep the tokens per update) or seq_len, "
            "or turn on gradient_checkpointing",
        )

    def _truncate_log(self, step: int) -> None:
        """Drop log lines of updates ≥ step (written after the checkpoint being resumed)."""
        path = self.out / LOG_FILE
        if not path.exists():
            return
        keep = [
            line
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line)["step"] < step
        ]
        path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")

    # -- output ------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Save the model folder in `out`, serve the held-out blocks, write the report."""
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        adapters = self.out / ADAPTERS_DIR
        if cfg.flavour == "adapter":
            save_adapter_folder(adapters, self.model)
            if cfg.save_model:  # a self-contained folder too (base + adapters), e.g. to ship
                self.model.save_pretrained(self.out)
            served = load_model(self.model_dir, dms=cfg.dms_config(), device=self.device)
            apply_adapter_folder(served, adapters)
        else:
            self.model.save_pretrained(self.out)
            served = load_model(self.out, device=self.device)
        teacher = dense_teacher(self.teacher or served)
        blocks = self.data.heldout[: cfg.max_eval_blocks]
        try:
            heldout = evaluate_heldout(served, teacher, blocks, self.data.eos_id)
        except setup.out_of_memory_error() as err:
            raise self._oom(err, self.step) from err
        last_step = max(self.step - 1, 0)
        final_cr = cfg.cr_at(last_step)
        heldout["expected_compression_ratio"] = expected_compression_ratio(
            int(self.data.heldout.shape[1]), cfg.window, final_cr
        )
        report = {
            "model": cfg.model,
            "out": str(self.out),
            "flavour": cfg.flavour,
            "objective": cfg.objective,
            "trainable_parameters": sum(p.numel() for p in self.trainable),
            "lora": lora_info(self.model.hf),
            "steps": self.step,
            "schedule": {
                "initial_cr": cfg.initial_cr,
                "target_cr": cfg.target_cr,
                "ramp_steps": cfg.ramp_steps,
                "final_cr_target": final_cr,
                "final_target_fraction": cfg.target_fraction(last_step),
            },
            "heldout": heldout,
            "train": {
                "documents": self.data.documents,
                "tokens_read": self.data.tokens,
                "train_blocks": int(self.data.train.shape[0]),
                "heldout_blocks": int(self.data.heldout.shape[0]),
                "heldout_seq_len": int(self.data.heldout.shape[1]),
                "data_position": self._data_position(),
                "last_step": self.last,
                "wall_s_this_session": self.wall_s,
            },
            "device": str(self.device),
            "served_dtype": str(served.dtype).removeprefix("torch."),
            "config": cfg.to_dict(),
        }
        (self.out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        if cfg.flavour == "adapter":
            save_adapter_folder(
                adapters, self.model, measured_cr=heldout["compression_ratio"], report=report
            )
        return report


def retrofit(cfg: RetrofitConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run a whole retrofit (train, save, report); returns the report."""
    run = Retrofitter(cfg, progress=progress)
    run.train()
    return run.finish()
