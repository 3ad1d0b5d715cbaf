"""The offline API: `LLM(checkpoint or preset).generate(prompts, SamplingParams)`, and model + tokenizer loading."""
from __future__ import annotations

import torch

from model.config import NemotronHConfig
from model.nemotron_h import NemotronH

from .engine import EngineConfig, LLMEngine, RequestOutput
from .sampling_params import SamplingParams
from .tokenizer import ServeTokenizer


class LLM:
    """Offline generation:

        llm = LLM("/path/to/checkpoint")                                   # or LLM(preset="tiny", random_weights=True)
        outs = llm.generate(["Hello", "The capital of"], SamplingParams(max_tokens=32, temperature=0))
    """

    def __init__(self, checkpoint: str | None = None, *, preset: str | None = None,
                 config: NemotronHConfig | None = None, random_weights: bool = False, model: NemotronH | None = None,
                 tokenizer: ServeTokenizer | None = None, device=None, dtype: torch.dtype | None = None,
                 backend: str = "auto", fp8: bool = False, seed: int = 0, engine_config: EngineConfig | None = None,
                 **engine_kw):
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, tokenizer = load_for_serving(checkpoint, preset=preset, config=config, random_weights=random_weights,
                                            model=model, tokenizer=tokenizer, device=device, dtype=dtype,
                                            backend=backend, fp8=fp8, seed=seed)
        if engine_config is None:
            engine_config = EngineConfig(**engine_kw)
        elif engine_kw:
            raise ValueError("pass engine settings either as engine_config or as keywords, not both")
        self.engine = LLMEngine(model, tokenizer, engine_config)

    @property
    def tokenizer(self) -> ServeTokenizer | None:
        return self.engine.tokenizer

    def generate(self, prompts, params: SamplingParams | list[SamplingParams] | None = None,
                 progress: bool = False) -> list[RequestOutput]:
        """prompts: a string, a list of strings, a list of token ids, or a list of token-id lists. params: one for
        all prompts or one per prompt. Returns the final RequestOutput of every completion: prompts in order, the
        n completions of a prompt in index order (one per prompt when n = 1)."""
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = params or SamplingParams()
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(params)} SamplingParams for {len(prompts)} prompts")
        engine = self.engine
        ids = [engine.add_request(p, sp) for p, sp in zip(prompts, params)]
        expected = sum(sp.n for sp in params)
        final: dict[tuple[str, int], RequestOutput] = {}
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=expected, desc="completions", unit="seq")
        try:
            while len(final) < expected:
                if not engine.has_unfinished():
                    raise RuntimeError("engine stopped with requests unfinished")
                for out in engine.step():
                    if out.finished:
                        final[out.request_id, out.index] = out
                        if bar is not None:
                            bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            for rid in ids:
                engine.abort(rid)      # no-op for finished requests; frees the rest after an error
        return [final[rid, i] for rid, sp in zip(ids, params) for i in range(sp.n)]


def load_for_serving(checkpoint: str | None = None, *, preset: str | None = None,
                     config: NemotronHConfig | None = None, random_weights: bool = False,
                     model: NemotronH | None = None, tokenizer: ServeTokenizer | None = None, device=None,
                     dtype: torch.dtype | None = None, backend: str = "auto", fp8: bool = False,
                     seed: int = 0) -> tuple[NemotronH, ServeTokenizer | None]:
    """(model, tokenizer) from a checkpoint directory (BF16, or ModelOpt-style FP8), a preset or a config (random
    weights), or a given model. fp8: quantise the experts and Mamba projections on load (spec §4.4).
    dtype default: bfloat16 on GPU, float32 on CPU (a BF16 checkpoint's own dtype when loading one)."""
    from model.checkpoint import load_model
    from model.nemotron_h import build_model

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sources = sum(x is not None for x in (checkpoint, preset, config, model))
    if sources != 1:
        raise ValueError("give exactly one of checkpoint, preset, config or model")
    if model is None and checkpoint is None and not random_weights:
        raise ValueError("a preset or config without a checkpoint needs random_weights=True")
    if model is None:
        if checkpoint is not None and not random_weights:
            from .fp8 import is_fp8_checkpoint, load_fp8_checkpoint
            if is_fp8_checkpoint(checkpoint):     # ModelOpt-style FP8: already quantised
                model = load_fp8_checkpoint(checkpoint, device=device, dtype=dtype or torch.bfloat16,
                                            backend=backend)
                fp8 = False
            else:
                model = load_model(checkpoint, device=device, dtype=dtype, backend=backend)
            if tokenizer is None:
                tokenizer = ServeTokenizer.from_checkpoint(checkpoint, model.config.eos_token_ids)
        else:
            if checkpoint is not None:
                config = NemotronHConfig.from_hf_config(checkpoint)
            elif preset is not None:
                config = NemotronHConfig.from_preset(preset)
            dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
            model = build_model(config, device=device, dtype=dtype, backend=backend, seed=seed)
    if tokenizer is None and model.config.vocab_size >= 259:
        tokenizer = ServeTokenizer.byte_level()
    if fp8:
        from .fp8 import quantize_model_fp8
        quantize_model_fp8(model)
    return model, tokenizer
