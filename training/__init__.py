"""Training loops for NemotronH: data, optimizer and schedule, load balancing, pretraining, SFT, checkpoints.

Modules (one job each):
  data.py        stdlib corpus, byte-level BPE tokenizer, uint32 memory-mapped shards, packed batches + cu_seqlens
  chat.py        SFT data: chat JSONL, chat template, assistant-only loss mask, reasoning on/off, packing
  optim.py       AdamW parameter groups (weight decay on matrices only) and the Warmup-Stable-Decay schedule
  balance.py     aux-loss-free expert-bias balancing, sequence-level aux loss, expert-load statistics
  loss.py        chunked fp32 cross-entropy (the vocab-wide logits never materialise whole)
  parallel.py    torch.distributed: FSDP2 (fully_shard) for dense weights, expert parallelism (all-to-all)
  checkpoint.py  atomic checkpoints: the model in the Hugging Face layout + the whole loop state
  monitor.py     metrics JSONL, progress bar (loss, tokens/s, MFU), PNG plots
  trainer.py     the training loop shared by pretraining and SFT
  presets.py     named run presets (model preset + batch, length, schedule)
  pretrain.py    `python -m training.pretrain --preset tiny`
  sft.py         `python -m training.sft --data FILE --init CKPT`
"""
