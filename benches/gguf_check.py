#!/usr/bin/env python3
"""Independent check of a GGUF file lowbit wrote, with llama.cpp's own Python reader (`pip install
gguf numpy`): every tensor dequantized by gguf.quants.dequantize must equal, bit for bit, the tensor
lowbit decodes (`lowbit import-gguf FILE --out DIR`, which also undoes the Q/K permutation; here the
permutation is re-applied as llama.cpp's converter does), and, with --reference, stay close to the
float model it was quantized from.

usage: gguf_check.py FILE.gguf IMPORTED_DIR [--reference FLOAT_DIR]
"""
import json, struct, sys
import numpy as np
import gguf

def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        data = f.read()
    out = {}
    dt = {"F32": np.float32, "F16": np.float16, "BF16": None}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        if v["dtype"] == "BF16":
            raw = np.frombuffer(data[a:b], dtype=np.uint16).astype(np.uint32) << 16
            arr = raw.view(np.float32)
        else:
            arr = np.frombuffer(data[a:b], dtype=dt[v["dtype"]]).astype(np.float32)
        out[k] = arr.reshape(v["shape"])
    return out

HF = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
BLK = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
       "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
       "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}

def hf_name(n):
    stem, suf = n.rsplit(".", 1)
    if stem in HF:
        return HF[stem] + "." + suf
    _, layer, part = stem.split(".", 2)
    return f"model.layers.{layer}.{BLK[part]}.{suf}"

def permute(w, n_head):  # llama.cpp convert_hf_to_gguf LlamaModel.permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

def main():
    path, imported = sys.argv[1], sys.argv[2]
    ref = sys.argv[sys.argv.index("--reference") + 1] if "--reference" in sys.argv else None
    r = gguf.GGUFReader(path)
    n_head = int(r.fields["llama.attention.head_count"].contents())
    n_kv = int(r.fields["llama.attention.head_count_kv"].contents())
    lb = read_safetensors(imported + "/model.safetensors")
    fp = read_safetensors(ref + "/model.safetensors") if ref else None
    types, worst = {}, 0.0
    for t in r.tensors:
        if t.name == "rope_freqs.weight":
            continue
        deq = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        hf = hf_name(t.name)
        mine = lb[hf]
        if ".attn_q." in t.name:
            mine = permute(mine, n_head)
        elif ".attn_k." in t.name:
            mine = permute(mine, n_kv)
        deq = deq.reshape(mine.shape)
        same = np.array_equal(deq.view(np.uint32), mine.view(np.uint32)) or np.array_equal(deq, mine)
        if not same:
            print(f"MISMATCH {t.name} {t.tensor_type.name}: max |diff| {np.abs(deq - mine).max()}")
            sys.exit(1)
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
        if fp is not None and hf in fp:
            w = fp[hf]
            if ".attn_q." in t.name:
                w = permute(w, n_head)
            elif ".attn_k." in t.name:
                w = permute(w, n_kv)
            rel = float(np.linalg.norm(deq - w) / max(np.linalg.norm(w), 1e-30))
            worst = max(worst, rel)
    print(f"{path}: {len(r.tensors)} tensors equal to lowbit's decode ({', '.join(f'{k}x{v}' for k, v in sorted(types.items()))})"
          + (f"; worst relative error vs the float model {worst:.4f}" if fp is not None else ""))

main()
