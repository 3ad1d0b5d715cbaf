"""Pretraining CLI: `python -m training.pretrain --preset tiny` (CPU, minutes); `torchrun --nproc_per_node N -m
training.pretrain --preset 1b --ep-size N` for several GPUs (or CPU processes with gloo).

Data: the Python standard library of the running interpreter (no download), a byte-level BPE trained on it
(or --tokenizer), token shards cached under --data-dir. Output under --out: metrics.jsonl, loss_lr.png,
expert_load.png, checkpoints/ (HF layout + loop state; --resume continues a run exactly).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

import torch
import torch.distributed as dist

from model.checkpoint import CheckpointError
from model.nemotron_h import build_model

from .data import Corpus, PretrainBatches, prepare_pretraining_data, row_lengths_for
from .parallel import init_distributed
from .presets import PRESETS, replace_model, run_preset
from .trainer import TrainConfig, Trainer, TrainingHalted


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Options shared by pretraining and SFT (default None = the preset's value)."""
    p.add_argument("--preset", default="tiny", help=f"run preset: {', '.join(PRESETS)}")
    p.add_argument("--out", default=None, help="output directory (default runs/<command>-<preset>)")
    p.add_argument("--steps", type=int)
    p.add_argument("--stop-at-step", type=int, help="end this run after this step (the schedule spans --steps)")
    p.add_argument("--seq-len", type=int, help="tokens per row")
    p.add_argument("--batch-rows", type=int, help="rows per rank per micro-batch")
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--min-lr", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--decay-fraction", type=float, default=0.2, help="WSD: decay over this last fraction")
    p.add_argument("--decay-shape", default="cosine", choices=("cosine", "linear", "sqrt"))
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--no-balance", action="store_true", help="turn the aux-loss-free bias update off")
    p.add_argument("--bias-update-rate", type=float, default=1e-3)
    p.add_argument("--aux-loss-coeff", type=float, default=1e-4)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), help="compute dtype (bf16: FSDP2 mixed precision)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--backend", default="auto", choices=("auto", "reference", "kernels"), help="model ops")
    p.add_argument("--ep-size", type=int, default=1, help="expert-parallel ranks (torchrun)")
    p.add_argument("--activation-checkpointing", action="store_true", help="recompute blocks in backward")
    p.add_argument("--eval-every", type=int)
    p.add_argument("--eval-batches", type=int)
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: at the end only)")
    p.add_argument("--keep-last", type=int, default=2)
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from a checkpoint (default: the newest under --out)")
    p.add_argument("--max-bad-steps", type=int, default=3, help="stop after N non-finite steps in a row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--peak-tflops", type=float, help="per-device peak for the MFU (default: known GPUs)")
    p.add_argument("--log-every", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="torch.profiler over the last N steps of the run (after warm-up): profile.txt, "
                        "profile_summary.json (time per step by category, also printed), trace.json.gz under --out")


def train_config(args, preset, out: str, **extra) -> TrainConfig:
    pick = lambda v, d: d if v is None else v  # noqa: E731
    return TrainConfig(
        steps=pick(args.steps, preset.steps), lr=pick(args.lr, preset.lr), min_lr=pick(args.min_lr, preset.min_lr),
        warmup_steps=pick(args.warmup_steps, min(preset.warmup_steps, pick(args.steps, preset.steps) // 10)),
        decay_fraction=args.decay_fraction,
        decay_shape=args.decay_shape, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
        grad_accum=pick(args.grad_accum, preset.grad_accum), balance=not args.no_balance,
        bias_update_rate=args.bias_update_rate, aux_loss_coeff=args.aux_loss_coeff,
        dtype=pick(args.dtype, preset.dtype), ep_size=args.ep_size,
        activation_checkpointing=args.activation_checkpointing, out_dir=out, log_every=args.log_every,
        eval_every=pick(args.eval_every, preset.eval_every), save_every=args.save_every, keep_last=args.keep_last,
        resume=args.resume, stop_at_step=args.stop_at_step, max_bad_steps=args.max_bad_steps,
        progress=not args.no_progress, plots=not args.no_plots, peak_tflops=args.peak_tflops, profile=args.profile,
        **extra)


def skew_router(model, skew: float) -> None:
    """Deliberately imbalanced start: correction bias skew * (1 - e / (E - 1)) favours low-index experts."""
    with torch.no_grad():
        for block in model.layers:
            if block.kind == "E":
                b = block.mixer.gate.e_score_correction_bias
                b.copy_(skew * (1.0 - torch.arange(b.numel(), device=b.device, dtype=b.dtype) / max(1, b.numel() - 1)))


def _barrier(info) -> None:
    if info.world_size > 1 and dist.is_initialized():
        dist.barrier()


def build_trainer(argv=None) -> Trainer:
    """Parses the command line, prepares data and model, and returns the Trainer (run() trains)."""
    p = argparse.ArgumentParser(prog="python -m training.pretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--data-dir", default="runs/data", help="cache of tokenizers and token shards")
    p.add_argument("--corpus", help="directory of text files (default: the interpreter's stdlib)")
    p.add_argument("--suffixes", default=".py", help="comma-separated file suffixes of the corpus")
    p.add_argument("--max-files", type=int, help="use only the first N corpus files (quick runs)")
    p.add_argument("--tokenizer", help="tokenizer.json (or a checkpoint directory) instead of training a BPE")
    p.add_argument("--vocab-size", type=int, help="vocab of the trained BPE (default: the preset's)")
    p.add_argument("--long-seq-len", type=int, help="long-context mix: length of the long rows")
    p.add_argument("--long-fraction", type=float, default=0.0, help="long-context mix: share of tokens in long rows")
    p.add_argument("--router-skew", type=float, default=0.0, help="skew the initial router bias (balancing demo)")
    args = p.parse_args(argv)

    preset = run_preset(args.preset)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = init_distributed(args.device)
    log = (lambda msg: print(msg, flush=True)) if info.is_main else (lambda msg: None)
    out = args.out or f"runs/pretrain-{args.preset}"
    seq_len = args.seq_len if args.seq_len is not None else preset.seq_len
    batch_rows = args.batch_rows if args.batch_rows is not None else preset.batch_rows
    row_lengths = row_lengths_for(batch_rows * seq_len, seq_len, args.long_seq_len, args.long_fraction)
    cfg = train_config(args, preset, out)

    # data: rank 0 tokenises (cached), the others wait and read the cache
    corpus = Corpus.from_dir(args.corpus, suffixes=tuple(args.suffixes.split(",")), max_files=args.max_files)
    tok_args = ({"tokenizer": args.tokenizer} if args.tokenizer else
                {"vocab_size": args.vocab_size or preset.tokenizer_vocab})
    if info.is_main:
        data = prepare_pretraining_data(corpus, args.data_dir, log=log, **tok_args)
    _barrier(info)
    if not info.is_main:
        data = prepare_pretraining_data(corpus, args.data_dir, log=lambda m: None, **tok_args)
    data.tokenizer.check_fits(preset.model.vocab_size)
    train = PretrainBatches(data.train, row_lengths, rank=info.rank, world_size=info.world_size, seed=args.seed)
    val_iter = PretrainBatches(data.val, row_lengths, rank=info.rank, world_size=info.world_size, seed=args.seed + 1)
    val = [next(val_iter) for _ in range(args.eval_batches or preset.eval_batches)]

    preset = replace_model(preset, bos_token_id=data.tokenizer.bos_id, eos_token_id=data.tokenizer.eos_id,
                           pad_token_id=data.tokenizer.pad_id)
    model = build_model(preset.model, device=info.device, dtype=torch.float32, backend=args.backend, seed=args.seed)
    if args.router_skew:
        skew_router(model, args.router_skew)
    torch.manual_seed(args.seed)
    attn_len = sum(n * n for n in row_lengths) // sum(row_lengths)
    log(f"model: {preset.model.num_params() / 1e6:.2f}M parameters "
        f"({preset.model.num_params(active=True, include_embedding=False) / 1e6:.2f}M active), "
        f"{info.world_size} rank(s) on {info.device}, rows {row_lengths[:1]}x{len(row_lengths)} per rank")
    run_config = {"command": "pretrain", "argv": list(sys.argv[1:] if argv is None else argv),
                  "preset": args.preset, "model": dataclasses.asdict(preset.model), "row_lengths": row_lengths,
                  "data_dir": str(data.directory)}
    return Trainer(cfg, model, info, train, val, tokenizer_dir=str(data.directory), attn_len=attn_len,
                   unigram_entropy=data.train.unigram_entropy(data.tokenizer.vocab_size), run_config=run_config,
                   log=log)


def main(argv=None) -> dict:
    trainer = build_trainer(argv)
    summary = trainer.run()
    trainer.log(f"done: {summary['steps']} steps, validation loss {summary['val_loss']:.4f}; "
                f"outputs in {trainer.out_dir}")
    return summary


def cli(fn=main) -> None:
    """Runs fn; bad input and halted runs end with a one-line error and exit status 2, not a traceback."""
    try:
        fn()
    except (ValueError, CheckpointError, TrainingHalted) as e:
        print(f"error: {e}", file=sys.stderr)
        if dist.is_initialized():
            dist.destroy_process_group()
        raise SystemExit(2) from None
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    cli()
