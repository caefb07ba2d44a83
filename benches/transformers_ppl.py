# Reference perplexity and throughput with HF transformers + torch (fp32), same "windows"
# convention as `lowbit eval`: python benches/transformers_ppl.py MODEL_DIR TEXT CTX [MAX_WINDOWS]
# Threads: $TORCH_THREADS (default 2). Prints wall tokens/s and tokens per process CPU second.
import os, sys, torch, math, time
from transformers import AutoTokenizer, AutoModelForCausalLM
model_dir, text_file, ctx = sys.argv[1], sys.argv[2], int(sys.argv[3])
maxw = int(sys.argv[4]) if len(sys.argv) > 4 else None
torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "2")))
torch.set_num_interop_threads(1)
tok = AutoTokenizer.from_pretrained(model_dir)
m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
text = open(text_file).read()
ids = tok(text, return_tensors="pt").input_ids[0]
print("tokens", len(ids), ids[:10].tolist())
n = len(ids) // ctx
if maxw: n = min(n, maxw)
nll, cnt = 0.0, 0
t0, c0 = time.time(), time.process_time()
with torch.no_grad():
    for w in range(n):
        x = ids[w*ctx:(w+1)*ctx].unsqueeze(0)
        out = m(x, labels=x)
        nll += out.loss.item() * (ctx - 1); cnt += ctx - 1
dt, dc = time.time() - t0, time.process_time() - c0
print(f"ppl {math.exp(nll/cnt):.4f} windows {n} tok/s {n*ctx/dt:.1f} cpu_tok/s {n*ctx/dc:.1f} threads {torch.get_num_threads()}")
