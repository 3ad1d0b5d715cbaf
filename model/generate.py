"""Text generation with a NemotronH model: prefill + decode_step over a HybridCache, sampling on the device.

    python -m model.generate --checkpoint DIR --prompt "..." [--max-new-tokens 64 --temperature 0.8 --top-k 50
                             --top-p 0.95 --seed 0 --device cuda --dtype bfloat16 --backend auto]
    python -m model.generate --preset tiny --random-weights --prompt "..."     # demo, byte-level tokenizer

Greedy when temperature == 0. Sampling draws argmax(p / Exp(1)) (an exact categorical sample, no host sync)
from a seeded torch.Generator on the model's device.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from .cache import HybridCache


def sample(logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """logits [S, V] -> next token ids [S] int64. temperature 0: greedy. top_k 0 / top_p 1: no truncation."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature if logits.dtype != torch.float64 else logits / temperature
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]                      # [S, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)          # [S, V]
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs                                # mass of the better tokens
        sorted_logits = sorted_logits.masked_fill(before >= top_p, float("-inf"))  # keeps the best token
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    noise = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / noise).argmax(dim=-1)


@torch.no_grad()
def generate(model, prompts: list[list[int]], max_new_tokens: int, *, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, stop_ids: list[int] | None = None, seed: int = 0, block_size: int = 16,
             progress: bool = False) -> list[list[int]]:
    """Continues each prompt (a list of token ids) by up to max_new_tokens tokens; a sequence stops after
    emitting one of stop_ids (default: the config's eos ids; the stop token is included in its output).
    Returns the new tokens of each prompt."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate: needs at least one prompt, and every prompt needs at least one token")
    if max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be >= 0, got {max_new_tokens}")
    if max_new_tokens == 0:
        return [[] for _ in prompts]
    device, S = model.device, len(prompts)
    stop_ids = model.config.eos_token_ids if stop_ids is None else list(stop_ids)
    cache = HybridCache.for_model(model, S, max(len(p) for p in prompts) + max_new_tokens, block_size=block_size)
    generator = torch.Generator(device=device).manual_seed(seed)
    stop = torch.tensor(stop_ids or [-1], device=device)
    lengths = [len(p) for p in prompts]
    ids = torch.tensor([t for p in prompts for t in p], device=device)        # [T] packed prompts
    cu = torch.tensor([0] + lengths, device=device).cumsum(0).to(torch.int32)  # [S+1]
    logits = model.prefill(ids, cache, cu_seqlens=cu)                         # [S, V]
    out = torch.empty(S, max_new_tokens, dtype=torch.long, device=device)     # [S, max_new_tokens]
    done = torch.zeros(S, dtype=torch.bool, device=device)
    steps = range(max_new_tokens)
    if progress:
        from tqdm import tqdm
        steps = tqdm(steps, desc="generating", unit="tok", file=sys.stderr)
    n = 0
    for n in steps:
        token = sample(logits, temperature, top_k, top_p, generator)          # [S]
        out[:, n] = token
        done |= torch.isin(token, stop)
        if n + 1 == max_new_tokens or bool(done.all()):
            break
        logits = model.decode_step(token, cache)
    result = []
    for row in out[:, :n + 1].tolist():
        cut = next((j + 1 for j, t in enumerate(row) if t in stop_ids), len(row))
        result.append(row[:cut])
    return result


def byte_level_tokenizer():
    """A real byte-level tokenizer (tokenizers BPE with no merges): ids 0 <pad>, 1 <s>, 2 </s>, then byte b -> 3 + b.
    259 tokens; the `tiny` preset's vocabulary covers it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    # GPT-2 byte -> printable unicode map (the alphabet of the ByteLevel pre-tokenizer)
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    char_of = {b: chr(b) if b in printable else chr(next(extra)) for b in range(256)}
    specials = ["<pad>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials)} | {char_of[b]: len(specials) + b for b in range(256)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(specials)
    return tokenizer


def _parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m model.generate", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="HF-layout checkpoint directory (config.json, safetensors, tokenizer.json)")
    src.add_argument("--preset", help="config preset (with --random-weights), e.g. tiny")
    p.add_argument("--random-weights", action="store_true", help="random init instead of a checkpoint (demo)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "float64"], default=None,
                   help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--backend", choices=["auto", "reference", "kernels"], default="auto")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.preset is not None and not args.random_weights:
        p.error("--preset needs --random-weights (or use --checkpoint DIR)")
    return args


def main(argv=None) -> int:
    args = _parse_args(argv)
    from .checkpoint import load_model
    from .config import NemotronHConfig
    from .nemotron_h import build_model

    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device.startswith("cuda")
                                                          else torch.float32)
    if args.checkpoint:
        tok_path = os.path.join(args.checkpoint, "tokenizer.json")
        if not os.path.exists(tok_path):
            print(f"error: {tok_path} not found (the checkpoint needs its tokenizer)", file=sys.stderr)
            return 2
        from tokenizers import Tokenizer
        tokenizer = Tokenizer.from_file(tok_path)
        model = load_model(args.checkpoint, device=args.device, dtype=dtype, backend=args.backend)
        what = args.checkpoint
    else:
        config = NemotronHConfig.from_preset(args.preset)
        tokenizer = byte_level_tokenizer()
        if tokenizer.get_vocab_size() > config.vocab_size:
            print(f"error: preset {args.preset!r} has vocab_size {config.vocab_size} < the byte-level tokenizer's "
                  f"{tokenizer.get_vocab_size()}", file=sys.stderr)
            return 2
        model = build_model(config, device=args.device, dtype=dtype, backend=args.backend, seed=args.seed)
        what = f"preset {args.preset!r} with random weights"
    model.eval()
    print(f"[{what}: {sum(p.numel() for p in model.parameters()):,} parameters, {dtype}, {args.device}, "
          f"backend {args.backend}]", file=sys.stderr)
    prompt_ids = tokenizer.encode(args.prompt).ids
    new = generate(model, [prompt_ids], args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, seed=args.seed, progress=not args.no_progress)[0]
    print(args.prompt + tokenizer.decode(new, skip_special_tokens=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
