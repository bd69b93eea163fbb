#!/usr/bin/env python3
"""Reference token ids for tests/test_tok_model.c, from the Hugging Face `tokenizers` library.

    python3 tests/reference/tokenizer_ref.py [model.gguf] [out_dir]

Which reference, and why. transformers can build a tokenizer from a GGUF
(AutoTokenizer.from_pretrained(dir, gguf_file=...)), but its GGUF reader needs torch, and its
conversion maps tokenizer.ggml.pre "smollm" to nothing: it falls back to GPT2Tokenizer's plain
ByteLevel pre-tokenizer and so keeps digit runs together ("12345678" -> one piece). SmolLM2's own
tokenizer.json -- the tokenizer the model was trained with -- uses
    Sequence[Digits(individual_digits=true), ByteLevel(add_prefix_space=false, use_regex=true)]
and llama.cpp's "smollm" pre-tokenizer ("\\p{N}" then the GPT-2 regex) matches that. So the
reference here is a `tokenizers.Tokenizer` assembled like that tokenizer.json: a BPE model with the
GGUF's vocabulary and merges (no unknown token, as GPT2Tokenizer builds it), that pre-tokenizer,
a ByteLevel decoder, and the CONTROL tokens as special added tokens. The script also runs
transformers' GGUF conversion (called directly, without its torch-based reader) on every text
and records in the header of ids.txt how many texts it tokenizes differently (digit runs).

Chat: rendered with transformers' render_jinja_template on the GGUF's tokenizer.chat_template.

Output (all strings hex-encoded UTF-8, so any byte survives):
    unicode.txt  how each pre-tokenizer (smollm, gpt2, llama3, qwen2) splits the template
              UNICODE_TEMPLATE around every code point: "sig <k> <4 signatures>" (piece byte
              lengths, '.'-joined) then runs "run <first hex> <last hex> <k>" of code points
              that split alike. tests/test_tok.c checks PCRE2 against it (Unicode versions and
              \\s differ between PCRE2 and Oniguruma/Rust).
    ids.txt   "case <S|-> <hex text>" then "ids <id> <id> ..."   (S: special tokens parsed)
    chat.txt  "chat <add_generation_prompt 0|1> <n_msgs>", n x "msg <hex role> <hex content>",
              "text <hex rendered>", "ids <ids of the rendered text, special tokens parsed>"
"""
import os
import random
import sys

import gguf
import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODEL = os.path.expanduser("~/.cache/specd/models/SmolLM2-135M-Instruct.Q4_1.gguf")

LONG = (
    "Speculative decoding lets a small draft model propose several tokens that a large target "
    "model then verifies in a single forward pass. When the draft is right, the target accepts "
    "a whole run of tokens at the cost of one step; when it is wrong, the target's own token "
    "replaces the first mistake, so the output is exactly what the target alone would have "
    "produced. In 2024, distributed variants overlapped the verification of successive drafts "
    "across several workers -- 3x to 5x faster in some settings, they reported."
)

TEXTS = [
    ("Hello, world!", True),
    ("The quick brown fox jumps over the lazy dog.", True),
    ("", True),
    (" leading space", True),
    ("trailing space ", True),
    ("multiple   spaces    between     words  ", True),
    ("   \n\t  ", True),
    ("tabs\tand\ttabs\t\t\tend\t", True),
    ("new\nlines\n\n\nand\r\nCRLF\r\n\r\n  indented\n", True),
    ("12345678", True),
    ("Pi is 3.14159265358979, e is 2.71828; 1,000,000 and 007 and -42.", True),
    ("x = 10 + 200 - 3000 * 40000 / 500000", True),
    ("abc123def4567ghi 89jk", True),
    ("I'm sure they'll say it's fine, don't you think? We've seen it. I'd go. You're right.", True),
    ("DON'T SHOUT, IT'S LOUD. WE'LL SEE. 's 't 're 've 'm 'll 'd 'S '' '", True),
    ("def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n", True),
    ('#include <stdio.h>\nint main(void) {\n\tprintf("%d\\n", 42);\n\treturn 0;\n}\n', True),
    ("fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n"
     '    println!("{:?}", v);\n}\n', True),
    ("const f = async (a, b) => { await fetch(`/api/${a}?b=${b}`); }; // done", True),
    ("SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%an%' ORDER BY name DESC;", True),
    ('<div class="x"><p>Hi &amp; bye</p><br/></div>', True),
    ('{"key": [1, 2.5, -3e10], "nested": {"a": null, "b": true}}', True),
    ("# Title\n\n- item 1\n- item 2\n\n```python\nprint('hi')\n```\n", True),
    ("https://example.com/path/to?q=1&r=two#frag user.name+tag@example.org", True),
    ("你好，世界！这是一个测试。", True),
    ("日本語のテキストとカタカナ、ひらがな。", True),
    ("한국어 텍스트입니다.", True),
    ("Привет, как дела? Всё хорошо.", True),
    ("مرحبا بالعالم، كيف حالك؟", True),
    ("שלום עולם", True),
    ("Γειά σου Κόσμε", True),
    ("สวัสดีครับ नमस्ते दुनिया", True),
    ("Emoji: 😀👍🏽🇺🇸 and ❤️ family 👨‍👩‍👧‍👦!", True),
    ("Café naïve résumé façade Ångström São Paulo Zürich", True),
    ("e\u0301 vs \u00e9; n\u0303 and a\u0308\u0304", True),
    ("∀x∈ℝ: x² ≥ 0, ∑_{i=1}^{n} i = n(n+1)/2, √2 ≈ 1.414, ∞ ≠ −∞", True),
    ("nbsp\u00a0here, em\u2003space, ideographic\u3000space, zero\u200bwidth, nel\u0085end", True),
    ("Arabic-Indic ٠١٢٣٤٥٦٧٨٩, fullwidth １２３, superscript ²³, roman Ⅻ, fraction ½", True),
    ("==========  aaaaaaaaaaaaaaaaaaaaaaaaaaaa  !!!!????....  ----", True),
    ("bell\x07 esc\x1b[31mred\x1b[0m del\x7f nul-free", True),
    ("dropped bytes \x04\x06\x13 here", True),
    ("Hello世界123мир", True),
    ("mongolian\n\n\n\u180evowel \u180e\u180e x\u1680y \u2028z", True),
    ("Unicode 16: \u1c89\u1c8a \U00011de0\U00011de1 \U00016ff4 \U000105c0x \U00010d40", True),
    ("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n", True),
    ("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n", False),
    ("<|endoftext|>end<|im_end|><|im_start|>  <repo_name>x<file_sep>", True),
    ("partial <|im_start special <|im_end|| <|im_end|>", True),
    (LONG, True),
]

CHATS = [
    ([("user", "Hello!")], True),
    ([("system", "You are terse."), ("user", "What is 2+2?")], True),
    ([("user", "Hi"), ("assistant", "Hello! How can I help?"), ("user", "Tell me a joke.")], True),
    ([("user", "Write code:\n```\nx = 1\n```")], False),
    ([("system", "S"), ("user", "  spaced  \n\n")], True),
    ([], True),
    ([("user", "你好 😀 12345")], True),
]


def read_gguf(path):
    r = gguf.GGUFReader(path)

    def field(k):
        return r.fields.get(k)

    def strs(k):
        f = field(k)
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    def scalar(k):
        f = field(k)
        return None if f is None else f.parts[-1][0]

    def text(k):
        f = field(k)
        return None if f is None else bytes(f.parts[-1]).decode("utf-8")

    tt = field("tokenizer.ggml.token_type")
    return {
        "tokens": strs("tokenizer.ggml.tokens"),
        "merges": strs("tokenizer.ggml.merges"),
        "token_type": [int(tt.parts[i][0]) for i in tt.data],
        "pre": text("tokenizer.ggml.pre"),
        "model": text("tokenizer.ggml.model"),
        "bos": scalar("tokenizer.ggml.bos_token_id"),
        "eos": scalar("tokenizer.ggml.eos_token_id"),
        "unk": scalar("tokenizer.ggml.unknown_token_id"),
        "pad": scalar("tokenizer.ggml.padding_token_id"),
        "chat_template": text("tokenizer.chat_template"),
    }


def reference_tokenizer(d):
    assert d["model"] == "gpt2" and d["pre"] == "smollm", (d["model"], d["pre"])
    vocab = {t: i for i, t in enumerate(d["tokens"])}
    merges = [tuple(m.split(" ")) for m in d["merges"]]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, ty in zip(d["tokens"], d["token_type"])
            if ty == 3
        ]
    )
    return tk


def transformers_gguf_tokenizer(d):
    """transformers' own GGUF conversion, fed the metadata directly (its reader needs torch)."""
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer
    except Exception as e:  # older/newer transformers: just skip the comparison
        print(f"transformers GGUF conversion unavailable: {e}", file=sys.stderr)
        return None
    td = {
        "tokenizer_type": d["model"],
        "pre_tokenizer_type": d["pre"],
        "tokens": d["tokens"],
        "token_type": d["token_type"],
        "merges": d["merges"],
        "bos_token_id": d["bos"],
        "eos_token_id": d["eos"],
        "unk_token_id": d["unk"],
        "pad_token_id": d["pad"],
        "add_prefix_space": False,
    }
    backend, _ = convert_gguf_tokenizer("llama", td)
    return backend


def random_texts(seed, n):
    """Strings drawn from a pool that crosses every regex class boundary."""
    rng = random.Random(seed)
    pool = (
        list("abcXYZ019 '\t\n\r.,!?-_/\\\"()<>|") + [" ", "  ", "\n\n", "'s", "'ll", "'D"]
        + list("éÅßñ") + ["\u0301", "\u00a0", "\u2003", "\u3000", "\u200b", "\u0085"]
        + list("你好世界カタ한국") + ["😀", "👍🏽", "🇺🇸", "❤️"]
        + list("٣１²Ⅻ½∑√≈") + ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_"]
        + ["hello", " the", " world", "12345", "ing", "tion"]
    )
    out = []
    for _ in range(n):
        k = rng.randint(1, 40)
        out.append("".join(rng.choice(pool) for _ in range(k)))
    return out


UNICODE_TEMPLATE = "a{c}1{c}!{c} {c}\n{c}{c}x{c}'s{c}\r\n{c}  "


def unicode_runs():
    """Runs of code points that every pre-tokenizer splits alike in UNICODE_TEMPLATE."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    def bl(use_regex):
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)

    def split(name):
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(GGUF_PRE_TOKENIZER_SPLITS[name]), behavior="isolated"),
             bl(False)]
        )

    pts = [
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), bl(True)]),
        bl(True),
        split("llama3"),
        split("qwen2"),
    ]
    runs = []
    for cp in range(1, 0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        s = UNICODE_TEMPLATE.format(c=chr(cp))
        sig = tuple(".".join(str(len(p)) for p, _ in pt.pre_tokenize_str(s)) for pt in pts)
        if runs and runs[-1][2] == sig and (runs[-1][1] == cp - 1 or (cp, runs[-1][1]) == (0xE000, 0xD7FF)):
            runs[-1][1] = cp
        else:
            runs.append([cp, cp, sig])
    return runs


def hexs(s):
    return s.encode("utf-8").hex()


def main():
    model = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_MODEL
    out_dir = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "tokenizer")
    os.makedirs(out_dir, exist_ok=True)
    d = read_gguf(model)
    ref = reference_tokenizer(d)
    tf = transformers_gguf_tokenizer(d)

    cases = list(TEXTS) + [(t, True) for t in random_texts(20240601, 60)]
    lines, differ = [], []
    for text, special in cases:
        ref.encode_special_tokens = not special
        ids = ref.encode(text, add_special_tokens=False).ids
        if tf is not None:
            tf.encode_special_tokens = not special
            if tf.encode(text, add_special_tokens=False).ids != ids:
                differ.append(text)
        lines.append(f"case {'S' if special else '-'} {hexs(text)}")
        lines.append("ids " + " ".join(map(str, ids)))
    ref.encode_special_tokens = False

    head = [
        "# token ids for tests/test_tok_model.c -- generated by tests/reference/tokenizer_ref.py",
        f"# model: {os.path.basename(model)}",
        f"# reference: tokenizers {tokenizers.__version__}: BPE(GGUF vocab + merges) with SmolLM2's "
        "tokenizer.json pre-tokenizer Sequence[Digits(individual), ByteLevel]",
        f"# transformers' GGUF conversion differs on {len(differ)} of {len(cases)} texts "
        "(it keeps digit runs together)" if tf is not None else "# transformers not compared",
        f"# cases: {len(cases)}",
    ]
    with open(os.path.join(out_dir, "ids.txt"), "w") as f:
        f.write("\n".join(head + lines) + "\n")

    from transformers.utils.chat_template_utils import render_jinja_template

    cl = [
        "# chat renders for tests/test_tok_model.c -- generated by tests/reference/tokenizer_ref.py",
        f"# model: {os.path.basename(model)}; rendered by transformers' render_jinja_template",
    ]
    for msgs, gen in CHATS:
        conv = [{"role": r, "content": c} for r, c in msgs]
        rendered = render_jinja_template(
            conversations=[conv], chat_template=d["chat_template"], add_generation_prompt=gen
        )[0][0]
        ids = ref.encode(rendered, add_special_tokens=False).ids
        cl.append(f"chat {int(gen)} {len(msgs)}")
        cl += [f"msg {hexs(r)} {hexs(c)}" for r, c in msgs]
        cl.append(f"text {hexs(rendered)}")
        cl.append("ids " + " ".join(map(str, ids)))
    with open(os.path.join(out_dir, "chat.txt"), "w") as f:
        f.write("\n".join(cl) + "\n")
    runs = unicode_runs()
    sigs = sorted(set(r[2] for r in runs))
    ul = [
        "# pre-tokenizer splits per code point for tests/test_tok.c -- generated by "
        "tests/reference/tokenizer_ref.py",
        f"# tokenizers {tokenizers.__version__}; template {UNICODE_TEMPLATE.encode().hex()} "
        "({c} = the code point); signatures: smollm gpt2 llama3 qwen2",
    ]
    ul += [f"sig {k} " + " ".join(sg) for k, sg in enumerate(sigs)]
    ul += [f"run {a:x} {b:x} {sigs.index(sg)}" for a, b, sg in runs]
    with open(os.path.join(out_dir, "unicode.txt"), "w") as f:
        f.write("\n".join(ul) + "\n")
    print(f"wrote {len(cases)} cases, {len(CHATS)} chats, {len(runs)} code point runs to {out_dir}; "
          f"transformers' GGUF conversion differs on {len(differ)}")
    for t in differ[:10]:
        print("  differs:", repr(t[:60]))


if __name__ == "__main__":
    main()
