#!/usr/bin/env python3
"""Make the repository's own architecture fixtures (tests/fixtures/arch/<variant>/).

Each is a tiny random-weight checkpoint whose config varies a key that real checkpoints carry
(rope scaling types and factors, windows, head counts, biases, q/k norms), with the fp32 logits
that HF transformers gives for 96 token ids (`reference.safetensors`: `token_ids` I64 [1,96],
`logits` F32 [1,96,512]). They complement ../shared/testdata/arch with other values of the same
keys. The vocabulary is stories260K's (512), so tests can score text with its tokenizer.json.

Run with transformers 5.24 and a CPU torch (both from PyPI):
    python3 -m venv /tmp/tf && /tmp/tf/bin/pip install torch transformers==5.24.0 safetensors
    /tmp/tf/bin/python scripts/make_arch_fixtures.py
"""
import json, os, sys
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "arch")
BASE = dict(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, hidden_act="silu", max_position_embeddings=4096, rms_norm_eps=1e-5,
            rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)

VARIANTS = {
    # Llama 3.2's rope (factor 32) on a short original context, in transformers 5's rope_parameters
    # form, with multi-query attention.
    "llama32-rope-mqa": dict(model_type="llama", num_key_value_heads=1, head_dim=16, tie_word_embeddings=True,
                             rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=32.0, low_freq_factor=1.0,
                                                  high_freq_factor=4.0, original_max_position_embeddings=48)),
    # Dynamic NTK beyond a 48-position limit (scored at 96 positions).
    "llama-rope-dynamic": dict(model_type="llama", max_position_embeddings=48, rope_scaling=dict(type="dynamic", factor=3.0)),
    # Linear interpolation given as rope_parameters.
    "llama-rope-linear-params": dict(model_type="llama", rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.5)),
    # YaRN with DeepSeek-style mscale, no truncation, other betas.
    "llama-yarn-mscale": dict(model_type="llama", head_dim=16, rope_scaling=dict(rope_type="yarn", factor=8.0, original_max_position_embeddings=16,
                              beta_fast=16.0, beta_slow=2.0, mscale=0.707, mscale_all_dim=1.0, truncate=False)),
    # Full multi-head attention with every bias: AWQ folds the o_proj scale into v_proj and its bias.
    "llama-bias-mha": dict(model_type="llama", num_key_value_heads=4, attention_bias=True, mlp_bias=True),
    # A small window on 3 layers, no GQA.
    "mistral-swa7-mha": dict(model_type="mistral", num_hidden_layers=3, num_key_value_heads=4, sliding_window=7),
    # qwen2 windows from layer max_window_layers on.
    "qwen2-swa-layers": dict(model_type="qwen2", num_hidden_layers=3, use_sliding_window=True, sliding_window=16, max_window_layers=1,
                             rope_theta=1000000.0, tie_word_embeddings=True),
    # qwen3 with attention biases, 8 query heads on 2 KV heads, explicit layer_types.
    "qwen3-bias-layertypes": dict(model_type="qwen3", num_attention_heads=8, head_dim=8, attention_bias=True, num_hidden_layers=3,
                                  use_sliding_window=True, sliding_window=20, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                                  rope_theta=1000000.0),
}


def randomize(model, g):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(1.5 * torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)


def main():
    only = set(sys.argv[1:])
    for i, (name, over) in enumerate(VARIANTS.items()):
        if only and name not in only:
            continue
        cfg = dict(BASE, **over)
        cfg["architectures"] = [{"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                                 "qwen3": "Qwen3ForCausalLM"}[cfg["model_type"]]]
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        config = AutoConfig.from_pretrained(d)
        config._attn_implementation = "eager"
        g = torch.Generator().manual_seed(1000 + i)
        model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32).eval()
        randomize(model, g)
        model.save_pretrained(d, safe_serialization=True)
        # save_pretrained rewrites config.json in its own form; keep the hub-style one we wrote.
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        for extra in ("generation_config.json",):
            p = os.path.join(d, extra)
            if os.path.exists(p):
                os.remove(p)
        ids = torch.randint(3, 512, (1, 96), generator=g)
        ids[0, 0] = 1
        with torch.no_grad():
            logits = model(ids).logits.float().contiguous()
        save_file({"token_ids": ids.to(torch.int64).contiguous(), "logits": logits}, os.path.join(d, "reference.safetensors"))
        print(name, "max |logit|", float(logits.abs().max()))


if __name__ == "__main__":
    main()
