"""Write a tiny, deterministic, random-weight llama GGUF that a real llama.cpp server can serve.

The model is nonsense by design: tests must assert shapes, finish reasons and token counts, never words.
It is built so that its output is *not degenerate*:

* it has its own ``output.weight`` (tying it to the embedding makes a random model echo its last token);
* hidden dimension 0 carries a large constant through the residual stream (nothing writes into it), so
  after the final RMS norm it acts as a per-token logit bias. That bias makes printable ASCII tokens
  likely and the special tokens (EOS/EOT) and non-ASCII bytes practically impossible: generation runs
  to ``max_tokens`` (finish_reason "length") unless a stop sequence matches, and the text is valid UTF-8.

Usage: ``python -m tests.support.tiny_model OUT.gguf``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import gguf
import numpy as np
import numpy.typing as npt

ARCH = "llama"
N_LAYER = 2
N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 4
N_FF = 128
N_CTX_TRAIN = 512
ROPE_FREQ_BASE = 10000.0
RMS_EPS = 1e-5
SEED = 20240611

BOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (BOS_TOKEN, IM_START, IM_END)

# A handful of GPT-2 style merges; each result is added to the vocab (order = merge rank).
MERGES: tuple[tuple[str, str], ...] = (
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġ", "a"),
    ("i", "n"),
    ("Ġt", "he"),
    ("e", "r"),
    ("o", "n"),
    ("Ġ", "s"),
    ("r", "e"),
    ("a", "t"),
    ("e", "n"),
    ("o", "r"),
    ("Ġ", "w"),
    ("Ġ", "o"),
    ("i", "s"),
    ("e", "s"),
    ("Ġ", "c"),
    ("a", "n"),
    ("l", "l"),
    ("Ġ", "b"),
)

# ChatML; `add_generation_prompt` opens the assistant turn that the model then fills.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Logit bias (in logits) carried by hidden dim 0, see the module docstring.
_BIAS_LIKELY = 0.0
_BIAS_UNLIKELY = -30.0
# Size of the constant in hidden dim 0 relative to the N(0, 1) other dims.
_DIM0_CONST = 8.0

F32 = npt.NDArray[np.float32]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character mapping."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + n)
            n += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def build_vocab() -> tuple[list[str], list[int], list[str], list[bool]]:
    """Return (tokens, token types, merges, likely-to-be-sampled flags), ids in list order."""
    byte_map = bytes_to_unicode()
    tokens: list[str] = [byte_map[b] for b in range(256)]
    # Printable ASCII, space and newline are the "likely" bytes: valid UTF-8 whatever the order.
    likely: list[bool] = [b == 0x0A or 0x20 <= b < 0x7F for b in range(256)]
    for left, right in MERGES:
        tokens.append(left + right)
        likely.append(True)
    for special in SPECIAL_TOKENS:
        tokens.append(special)
        likely.append(False)
    types = [gguf.TokenType.NORMAL.value] * (len(tokens) - len(SPECIAL_TOKENS))
    types += [gguf.TokenType.CONTROL.value] * len(SPECIAL_TOKENS)
    merges = [f"{left} {right}" for left, right in MERGES]
    assert len(set(tokens)) == len(tokens), "duplicate token in synthesized vocab"
    return tokens, types, merges, likely


def _normal(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> F32:
    return (rng.standard_normal(shape) * std).astype(np.float32)


def _f16(a: F32) -> npt.NDArray[np.float16]:
    return a.astype(np.float16)


def write_tiny_model(path: Path) -> Path:
    """Write the tiny model to ``path`` (parents created) and return ``path``. Byte-for-byte deterministic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    tokens, types, merges, likely = build_vocab()
    n_vocab = len(tokens)
    head_dim = N_EMBD // N_HEAD

    writer = gguf.GGUFWriter(str(path), ARCH)
    writer.add_name("llmtune-companion tiny test llama")
    writer.add_block_count(N_LAYER)
    writer.add_context_length(N_CTX_TRAIN)
    writer.add_embedding_length(N_EMBD)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(ROPE_FREQ_BASE)
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index(BOS_TOKEN))
    writer.add_eos_token_id(tokens.index(IM_END))
    writer.add_eot_token_id(tokens.index(IM_END))
    writer.add_pad_token_id(tokens.index(BOS_TOKEN))
    writer.add_add_bos_token(False)  # GPT-2 style: ChatML prompts carry their own markers
    writer.add_chat_template(CHAT_TEMPLATE)

    # Embedding: random in dims 1.., a constant in dim 0 (the bias carrier).
    embd = _normal(rng, (n_vocab, N_EMBD), 1.0)
    embd[:, 0] = _DIM0_CONST
    writer.add_tensor("token_embd.weight", _f16(embd))

    for i in range(N_LAYER):
        blk = f"blk.{i}"
        writer.add_tensor(f"{blk}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"{blk}.attn_q.weight", _f16(_normal(rng, (N_EMBD, N_EMBD), 0.3)))
        writer.add_tensor(f"{blk}.attn_k.weight", _f16(_normal(rng, (N_EMBD, N_EMBD), 0.3)))
        writer.add_tensor(f"{blk}.attn_v.weight", _f16(_normal(rng, (N_EMBD, N_EMBD), 0.3)))
        attn_out = _normal(rng, (N_EMBD, N_EMBD), 0.1)
        attn_out[0, :] = 0.0  # keep dim 0 constant through the residual stream
        writer.add_tensor(f"{blk}.attn_output.weight", _f16(attn_out))
        writer.add_tensor(f"{blk}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"{blk}.ffn_gate.weight", _f16(_normal(rng, (N_FF, N_EMBD), 0.3)))
        writer.add_tensor(f"{blk}.ffn_up.weight", _f16(_normal(rng, (N_FF, N_EMBD), 0.3)))
        ffn_down = _normal(rng, (N_EMBD, N_FF), 0.1)
        ffn_down[0, :] = 0.0
        writer.add_tensor(f"{blk}.ffn_down.weight", _f16(ffn_down))

    writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    # After RMS norm dim 0 is ~ _DIM0_CONST / rms(h) ~= _DIM0_CONST / sqrt(1 + _DIM0_CONST**2 / N_EMBD).
    dim0 = _DIM0_CONST / float(np.sqrt(1.0 + _DIM0_CONST**2 / N_EMBD))
    output = _normal(rng, (n_vocab, N_EMBD), 0.3)
    output[:, 0] = np.where(likely, _BIAS_LIKELY, _BIAS_UNLIKELY) / dim0
    writer.add_tensor("output.weight", _f16(output))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the tiny random llama GGUF used by the tests.")
    parser.add_argument("out", type=Path, help="output .gguf path")
    args = parser.parse_args(argv)
    out = write_tiny_model(args.out)
    print(f"{out} {out.stat().st_size} bytes sha256={sha256_of(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
