#!/usr/bin/env python3
"""Reference forward pass of the llama architecture in numpy (float32), for the engine's tests.

Weights are dequantized with the `gguf` package; prompts are tokenized by the tokenizer that
`transformers` builds from the GGUF file. For each prompt this writes tests/reference/forward/<name>.bin
(prompt ids, 64-token greedy continuation, logits of a few prompt positions) and a human-readable
tests/reference/forward/summary.txt. Formats: tests/reference/README.md.

    python3 tests/reference/forward_ref.py [model.gguf]     (default: $SPECD_MODEL or the default model)

The model, written out (llama.cpp semantics):
    x = token_embd[tok]
    per layer:  h = rmsnorm(x) * attn_norm
                q, k, v = Wq h, Wk h, Wv h            (H=9 query heads, Hkv=3 key/value heads, Dh=64)
                rope(q), rope(k): pairs (2i, 2i+1) of each head rotated by pos * base^(-2i/Dh)
                attention, causal, scale 1/sqrt(Dh), query head j reads key/value head j / (H/Hkv)
                x += Wo attn
                h = rmsnorm(x) * ffn_norm
                x += Wdown (silu(Wgate h) * Wup h)
    logits = token_embd (rmsnorm(x) * output_norm)          (tied output)
rmsnorm(x) = x / sqrt(mean(x^2) + eps), eps = llama.attention.layer_norm_rms_epsilon.
The Q/K weights in GGUF are already permuted by the converter for this pairwise rope.
"""
import hashlib
import importlib.metadata
import os
import struct
import sys
import types

import numpy as np
import gguf
from gguf import GGUFReader
from gguf.quants import dequantize

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "forward")
DEFAULT_MODEL = os.path.expanduser("~/.cache/specd/models/SmolLM2-135M-Instruct.Q4_1.gguf")
N_GEN = 64
MAGIC = b"SDFR"
VERSION = 1

CHAT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nExplain in a few sentences why the sky is blue.<|im_end|>\n"
        "<|im_start|>assistant\n")
PROMPTS = [
    ("plain", "Photosynthesis is the process by which green plants"),
    ("code", "# Python program to sort a list of numbers with bubble sort\ndef bubble_sort(arr):\n"),
    ("chat", CHAT),
]


def load_tokenizer(model_path):
    """The tokenizer transformers builds from the GGUF's tokenizer.ggml.* metadata.

    transformers' GGUF metadata reader imports torch at module level but uses it only for dtypes
    of tensors; when torch is not installed, a stand-in module is registered so the tokenizer
    path (which touches no torch code) can run. AutoTokenizer also builds a model config, which
    needs real torch, so the tokenizer class is used directly."""
    import transformers  # first: it probes for torch itself, and must find none rather than the stub

    try:
        import torch  # noqa: F401
    except ImportError:
        stub = types.ModuleType("torch")

        class _Any:
            def __init__(self, *a, **k):
                pass

            def __call__(self, *a, **k):
                return _Any()

            def __getattr__(self, name):
                return _Any()

        stub.__getattr__ = lambda name: _Any()
        sys.modules["torch"] = stub
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(os.path.dirname(model_path),
                                                   gguf_file=os.path.basename(model_path))


def field(reader, key):
    return reader.fields[key].contents()


class Model:
    def __init__(self, path):
        r = GGUFReader(path)
        arch = field(r, "general.architecture")
        if arch != "llama":
            raise ValueError(f"{path}: architecture {arch}, expected llama")
        self.n_layer = int(field(r, "llama.block_count"))
        self.d = int(field(r, "llama.embedding_length"))
        self.n_head = int(field(r, "llama.attention.head_count"))
        self.n_kv = int(field(r, "llama.attention.head_count_kv"))
        self.dh = self.d // self.n_head
        self.eps = np.float32(field(r, "llama.attention.layer_norm_rms_epsilon"))
        self.base = float(field(r, "llama.rope.freq_base"))
        w = {}
        for t in r.tensors:
            a = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
            # ggml ne = [in, out]; numpy rows are ne[1]: W[out, in], y = W @ x
            w[t.name] = np.ascontiguousarray(a.reshape([int(v) for v in reversed(t.shape)]))
        self.w = w
        self.emb = w["token_embd.weight"]  # [V, D]
        self.out = w.get("output.weight", self.emb)  # tied when absent
        self.n_vocab = self.emb.shape[0]
        i = np.arange(self.dh // 2, dtype=np.float64)
        self.inv_freq = self.base ** (-2.0 * i / self.dh)  # [Dh/2]

    def rmsnorm(self, x, wt):
        ms = np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32)
        return (x * (np.float32(1.0) / np.sqrt(ms + self.eps))) * wt

    def rope(self, x, pos):
        """x [T, heads, Dh], pos [T]: rotate pairs (2i, 2i+1) by pos * inv_freq[i]."""
        ang = pos.astype(np.float64)[:, None] * self.inv_freq[None, :]  # [T, Dh/2]
        c = np.cos(ang).astype(np.float32)[:, None, :]
        s = np.sin(ang).astype(np.float32)[:, None, :]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        y = np.empty_like(x)
        y[..., 0::2] = x0 * c - x1 * s
        y[..., 1::2] = x0 * s + x1 * c
        return y

    def new_cache(self, n_ctx):
        return [(np.zeros((n_ctx, self.n_kv, self.dh), np.float32),
                 np.zeros((n_ctx, self.n_kv, self.dh), np.float32)) for _ in range(self.n_layer)]

    def forward(self, toks, start, cache):
        """Tokens toks at positions start.. (cache holds positions < start); returns logits [T, V]."""
        T = len(toks)
        pos = np.arange(start, start + T)
        x = self.emb[np.asarray(toks)]  # [T, D]
        rep = self.n_head // self.n_kv
        scale = np.float32(1.0 / np.sqrt(self.dh))
        n = start + T
        mask = np.where(np.arange(n)[None, :] <= pos[:, None], np.float32(0), np.float32(-np.inf))
        for l in range(self.n_layer):
            p = f"blk.{l}."
            w = self.w
            h = self.rmsnorm(x, w[p + "attn_norm.weight"])
            q = (h @ w[p + "attn_q.weight"].T).reshape(T, self.n_head, self.dh)
            k = (h @ w[p + "attn_k.weight"].T).reshape(T, self.n_kv, self.dh)
            v = (h @ w[p + "attn_v.weight"].T).reshape(T, self.n_kv, self.dh)
            q, k = self.rope(q, pos), self.rope(k, pos)
            kc, vc = cache[l]
            kc[start:n], vc[start:n] = k, v
            att = np.empty((T, self.n_head, self.dh), np.float32)
            for hd in range(self.n_head):
                g = hd // rep
                s = (q[:, hd, :] @ kc[:n, g, :].T) * scale + mask  # [T, n]
                s = s - s.max(axis=-1, keepdims=True)
                e = np.exp(s)
                pr = e / e.sum(axis=-1, keepdims=True)
                att[:, hd, :] = pr @ vc[:n, g, :]
            x = x + att.reshape(T, self.d) @ w[p + "attn_output.weight"].T
            h = self.rmsnorm(x, w[p + "ffn_norm.weight"])
            gt = h @ w[p + "ffn_gate.weight"].T
            up = h @ w[p + "ffn_up.weight"].T
            act = gt / (np.float32(1.0) + np.exp(-gt)) * up
            x = x + act @ w[p + "ffn_down.weight"].T
        x = self.rmsnorm(x, self.w["output_norm.weight"])
        return (x @ self.out.T).astype(np.float32)


def top2_margin(row):
    i = int(np.argmax(row))
    rest = np.delete(row, i)
    return i, float(row[i] - rest.max())


def run_prompt(m, ids):
    n_ctx = len(ids) + N_GEN
    cache = m.new_cache(n_ctx)
    logits = m.forward(ids, 0, cache)
    tok, margin = top2_margin(logits[-1])
    gen, margins, step_logits = [tok], [margin], []
    for j in range(1, N_GEN):
        row = m.forward([gen[-1]], len(ids) + j - 1, cache)[0]
        step_logits.append(row)
        tok, margin = top2_margin(row)
        gen.append(tok)
        margins.append(margin)
    # self-check: one uncached pass over prompt + continuation must agree with the cached steps
    full = m.forward(ids + gen[:-1], 0, m.new_cache(n_ctx))
    diff_prompt = float(np.max(np.abs(full[: len(ids)] - logits)))
    diff_steps = float(np.max(np.abs(full[len(ids):] - np.array(step_logits))))
    agree = all(int(np.argmax(full[len(ids) - 1 + j])) == gen[j] for j in range(N_GEN))
    return logits, gen, margins, diff_prompt, diff_steps, agree


def write_bin(path, n_vocab, ids, gen, margins, rows):
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<5I", VERSION, n_vocab, len(ids), len(gen), len(rows)))
        f.write(np.asarray(ids, dtype="<i4").tobytes())
        f.write(np.asarray(gen, dtype="<i4").tobytes())
        f.write(np.asarray(margins, dtype="<f4").tobytes())
        for pos, lg in rows:
            f.write(struct.pack("<I", pos))
            f.write(np.asarray(lg, dtype="<f4").tobytes())


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    model_path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SPECD_MODEL") or DEFAULT_MODEL
    os.makedirs(OUT_DIR, exist_ok=True)
    vers = {p: importlib.metadata.version(p) for p in ("numpy", "gguf", "transformers", "tokenizers")}
    tok = load_tokenizer(model_path)
    m = Model(model_path)
    digest = sha256(model_path)
    lines = [f"model {os.path.basename(model_path)} sha256 {digest}",
             "versions " + " ".join(f"{k} {v}" for k, v in vers.items()), ""]
    for name, text in PROMPTS:
        ids = tok.encode(text, add_special_tokens=False)
        logits, gen, margins, dp, ds, agree = run_prompt(m, ids)
        keep = sorted({0, len(ids) // 2, len(ids) - 1})
        path = os.path.join(OUT_DIR, f"{name}.bin")
        write_bin(path, m.n_vocab, ids, gen, margins, [(p, logits[p]) for p in keep])
        cont = tok.decode(gen)
        print(f"[{name}] {len(ids)} prompt tokens, positions {keep}; cached-vs-uncached max |dlogit| "
              f"prompt {dp:.2e} steps {ds:.2e}, argmax agree {agree}; min margin {min(margins):.4f}\n"
              f"  continuation: {cont!r}", file=sys.stderr)
        lines += [f"[{name}] file {name}.bin",
                  f"prompt {text!r}",
                  "prompt_ids " + " ".join(map(str, ids)),
                  f"logit_positions {' '.join(map(str, keep))}",
                  "gen_ids " + " ".join(map(str, gen)),
                  "gen_margins " + " ".join(f"{x:.4f}" for x in margins),
                  f"continuation {cont!r}",
                  ""]
    with open(os.path.join(OUT_DIR, "summary.txt"), "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
