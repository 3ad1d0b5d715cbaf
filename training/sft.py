"""Supervised fine-tuning CLI: `python -m training.sft --data FILE --init CKPT`.

--init: a model checkpoint in the HF layout (e.g. a pretraining checkpoint directory, or a downloaded Nemotron
checkpoint) holding config.json, the weights and tokenizer.json (+ tokenizer_config.json with the chat template).
Paper defaults (spec §5.2): LR 5e-5 with warmup, sequence-level MoE balance loss 1e-4, packing, reasoning off for
10% of the samples. Outputs under --out as for pretraining.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import torch

from model.checkpoint import load_model

from .chat import SFTBatches, load_chat_jsonl, tokenize_conversations
from .data import load_tokenizer
from .parallel import init_distributed
from .presets import run_preset
from .pretrain import add_common_args, cli, train_config
from .trainer import Trainer


def build_trainer(argv=None) -> Trainer:
    """Parses the command line, prepares chat data and the model, and returns the Trainer (run() trains)."""
    p = argparse.ArgumentParser(prog="python -m training.sft", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--data", required=True, help="chat JSONL file (one {\"messages\": [...]} per line)")
    p.add_argument("--init", required=True, help="model checkpoint directory to fine-tune (HF layout)")
    p.add_argument("--val-data", help="validation chat JSONL (default: --val-fraction of --data)")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--tokenizer", help="tokenizer.json or directory (default: the --init checkpoint's)")
    p.add_argument("--on-error", default="fail", choices=("fail", "skip"), help="malformed JSONL lines")
    p.add_argument("--overlong", default="truncate", choices=("truncate", "drop"),
                   help="conversations longer than a row")
    p.add_argument("--reasoning-off-fraction", type=float, default=0.1,
                   help="share of samples whose <think> traces are emptied (reasoning off)")
    p.set_defaults(preset="tiny")
    args = p.parse_args(argv)

    preset = run_preset(args.preset)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = init_distributed(args.device)
    log = (lambda msg: print(msg, flush=True)) if info.is_main else (lambda msg: None)
    out = args.out or f"runs/sft-{Path(args.data).stem}"
    steps = args.steps if args.steps is not None else 200
    sft_defaults = {"lr": 5e-5, "min_lr": 5e-7, "warmup_steps": max(1, math.ceil(0.06 * steps)), "steps": steps}
    for key, value in sft_defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    seq_len = args.seq_len if args.seq_len is not None else preset.seq_len
    batch_rows = args.batch_rows if args.batch_rows is not None else preset.batch_rows
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 (a row needs a token and its successor), got {seq_len}")

    tok = load_tokenizer(args.tokenizer or args.init)
    conversations = load_chat_jsonl(args.data, on_error=args.on_error, log=log)
    if args.val_data:
        val_convs = load_chat_jsonl(args.val_data, on_error=args.on_error, log=log)
    else:
        n_val = max(1, round(args.val_fraction * len(conversations))) if len(conversations) > 1 else 0
        val_convs, conversations = conversations[:n_val], conversations[n_val:] or conversations
    samples = tokenize_conversations(conversations, tok, reasoning_off_fraction=args.reasoning_off_fraction,
                                     seed=args.seed)
    train = SFTBatches(samples, seq_len, batch_rows, tok.pad_id, rank=info.rank, world_size=info.world_size,
                       seed=args.seed, overlong=args.overlong, log=log)
    val = []
    if val_convs:
        val_samples = tokenize_conversations(val_convs, tok, seed=args.seed + 1)
        val_iter = SFTBatches(val_samples, seq_len, batch_rows, tok.pad_id, rank=info.rank,
                              world_size=info.world_size, seed=args.seed, overlong=args.overlong, log=log)
        n_batches = max(1, len(val_iter.samples) // (batch_rows * info.world_size))
        val = [next(val_iter) for _ in range(min(n_batches, args.eval_batches or preset.eval_batches))]

    model = load_model(args.init, device=info.device, dtype=torch.float32, backend=args.backend)
    tok.check_fits(model.config.vocab_size)
    torch.manual_seed(args.seed)
    cfg = train_config(args, preset, out)
    log(f"SFT of {args.init}: {len(train.samples)} conversations, {model.config.num_params() / 1e6:.2f}M parameters, "
        f"{info.world_size} rank(s) on {info.device}")
    run_config = {"command": "sft", "argv": list(sys.argv[1:] if argv is None else argv), "init": args.init,
                  "data": args.data, "model": dataclasses.asdict(model.config)}
    tokenizer_dir = str(Path(tok.path).parent)
    return Trainer(cfg, model, info, train, val, tokenizer_dir=tokenizer_dir, attn_len=seq_len,
                   run_config=run_config, log=log)


def main(argv=None) -> dict:
    trainer = build_trainer(argv)
    summary = trainer.run()
    trainer.log(f"done: {summary['steps']} steps; outputs in {trainer.out_dir}")
    return summary


if __name__ == "__main__":
    cli(main)
