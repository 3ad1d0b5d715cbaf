"""python -m model [--preset NAME | --checkpoint DIR]: the layer layout and parameter counts of a config."""
import argparse
import sys

from .config import PRESETS, NemotronHConfig


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m model", description=__doc__)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", choices=sorted(PRESETS))
    src.add_argument("--checkpoint", help="directory (or config.json) of a Hugging Face NemotronH checkpoint")
    args = p.parse_args(argv)
    names = [args.preset] if args.preset else [] if args.checkpoint else sorted(PRESETS)
    configs = [(n, NemotronHConfig.from_preset(n)) for n in names]
    if args.checkpoint:
        configs.append((args.checkpoint, NemotronHConfig.from_hf_config(args.checkpoint)))
    for name, c in configs:
        kinds = ", ".join(f"{c.pattern.count(ch)} {kind}" for ch, kind in
                          (("M", "Mamba-2"), ("*", "attention"), ("E", "MoE"), ("-", "MLP")) if ch in c.pattern)
        print(f"{name}: {c.num_layers} layers ({kinds}), hidden {c.hidden_size}, vocab {c.vocab_size}\n"
              f"  pattern {c.pattern}\n"
              f"  parameters {c.num_params():,} total, {c.num_params(active=True, include_embedding=False):,} "
              f"active per token (excl. input embedding)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
