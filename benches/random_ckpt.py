# Random-weight checkpoint with the exact tensor shapes of a published model, for benches/scale.sh:
#   python benches/random_ckpt.py {llama-3.2-1b|llama-3.1-8b} OUT_DIR [NUM_LAYERS] [TOKENIZER_DIR]
# bf16 tensors (the published dtype), N(0, 0.02) weights and unit norms, seed 0; config.json with
# the published values (num_hidden_layers replaced if NUM_LAYERS is given); tokenizer files copied
# from TOKENIZER_DIR (default: the shared SmolLM2 tokenizer, whose ids fit either vocabulary).
# Random weights of the real shapes cost the same compute and memory as the real ones.
import json, os, shutil, sys
import torch
from safetensors.torch import save_file

CONFIGS = {
    # From the models' published config.json (meta-llama on the Hugging Face Hub).
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True,
                         rope_theta=500000.0, max_position_embeddings=131072,
                         rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                       "original_max_position_embeddings": 8192, "rope_type": "llama3"}),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False,
                         rope_theta=500000.0, max_position_embeddings=131072,
                         rope_scaling={"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                       "original_max_position_embeddings": 8192, "rope_type": "llama3"}),
}

name, out = sys.argv[1], sys.argv[2]
cfg = dict(CONFIGS[name])
full_layers = cfg["num_hidden_layers"]
if len(sys.argv) > 3:
    cfg["num_hidden_layers"] = int(sys.argv[3])
tok_dir = sys.argv[4] if len(sys.argv) > 4 else os.path.join(os.path.dirname(__file__), "../../shared/models/smollm2-135m-instruct")
cfg.update(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", rms_norm_eps=1e-5,
           attention_bias=False, mlp_bias=False, torch_dtype="bfloat16", bos_token_id=1, eos_token_id=2)
d, inter, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
qd, kd, v = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd, cfg["vocab_size"]
g = torch.Generator().manual_seed(0)
def rnd(*shape):
    return (torch.randn(*shape, generator=g, dtype=torch.float32) * 0.02).to(torch.bfloat16)
t = {"model.embed_tokens.weight": rnd(v, d), "model.norm.weight": torch.ones(d, dtype=torch.bfloat16)}
if not cfg["tie_word_embeddings"]:
    t["lm_head.weight"] = rnd(v, d)
for i in range(cfg["num_hidden_layers"]):
    p = f"model.layers.{i}."
    t[p + "input_layernorm.weight"] = torch.ones(d, dtype=torch.bfloat16)
    t[p + "post_attention_layernorm.weight"] = torch.ones(d, dtype=torch.bfloat16)
    for n, shape in [("self_attn.q_proj", (qd, d)), ("self_attn.k_proj", (kd, d)), ("self_attn.v_proj", (kd, d)),
                     ("self_attn.o_proj", (d, qd)), ("mlp.gate_proj", (inter, d)), ("mlp.up_proj", (inter, d)),
                     ("mlp.down_proj", (d, inter))]:
        t[p + n + ".weight"] = rnd(*shape)
os.makedirs(out, exist_ok=True)
save_file(t, os.path.join(out, "model.safetensors.tmp"), metadata={"format": "pt"})
os.replace(os.path.join(out, "model.safetensors.tmp"), os.path.join(out, "model.safetensors"))
with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(cfg, f, indent=1)
for fn in ["tokenizer.json", "tokenizer_config.json"]:
    shutil.copy(os.path.join(tok_dir, fn), os.path.join(out, fn))
layer = sum(x.numel() for k, x in t.items() if k.startswith("model.layers.0.")) * 2
emb = sum(x.numel() for k, x in t.items() if not k.startswith("model.layers.")) * 2
print(json.dumps({"model": name, "layers": cfg["num_hidden_layers"], "full_layers": full_layers,
                  "layer_bf16_bytes": layer, "embed_lm_head_bytes": emb}))
