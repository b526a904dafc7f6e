#!/usr/bin/env python3
"""GGUF fixtures for model/tests/io_gguf.rs, written with the `gguf` package (llama.cpp's own
Python library) so that the Rust reader and dequantiser are checked against an independent
implementation.

Writes into model/tests/fixtures/io/gguf/:
  quant_types.gguf + quant_types_expected.safetensors
      one small tensor per supported ggml type (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K,
      Q6_K) and the f32 values `gguf.quants.dequantize` decodes them to; metadata of every value
      type, including nested arrays.
  tiny_llama.gguf
      the tiny Llama of fixtures/io/llama_f32 converted the way llama.cpp's convert_hf_to_gguf.py
      does it (q/k rows permuted per head, llama.* metadata), with a small byte-level BPE
      vocabulary (tokenizer.ggml.pre = smollm) and a chat template. The Rust import must give back
      the HF tensors exactly.
Run with /work/pyenv/bin/python after make_io_fixture.py.
"""
import os

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from safetensors.numpy import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "model", "tests", "fixtures", "io", "gguf")
rng = np.random.default_rng(0)


def quant_types():
    w = gguf.GGUFWriter(os.path.join(OUT, "quant_types.gguf"), arch="test")
    # Metadata of every value type (the reader must skip/parse all of them).
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -5)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -300)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -7)
    w.add_float32("t.f32", 0.25)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo")
    w.add_uint64("t.u64", 1 << 40)
    w.add_int64("t.i64", -(1 << 40))
    w.add_float64("t.f64", -1.5)
    w.add_array("t.arr_i32", [1, -2, 3])
    w.add_array("t.arr_str", ["a", "bc"])
    w.add_array("t.arr_nested", [[1, 2], [3]])
    expected = {}
    rows, cols = 3, 512  # cols is a multiple of 256 for the K-quants
    for name, qt in [("f32", T.F32), ("f16", T.F16), ("bf16", T.BF16), ("q4_0", T.Q4_0),
                     ("q4_1", T.Q4_1), ("q5_0", T.Q5_0), ("q5_1", T.Q5_1), ("q8_0", T.Q8_0)]:
        x = rng.standard_normal((rows, cols)).astype(np.float32)
        if qt == T.F32:
            data = x
        elif qt == T.F16:
            data = x.astype(np.float16)
        else:
            data = gguf.quants.quantize(x, qt)
        w.add_tensor(name, data, raw_dtype=qt)
        expected[name] = gguf.quants.dequantize(data, qt).astype(np.float32).reshape(rows, cols)
    # The K-quants: random blocks with sane f16 scales (quantising them needs llama.cpp itself).
    for name, qt in [("q4_k", T.Q4_K), ("q6_k", T.Q6_K)]:
        block_len, block_bytes = gguf.GGML_QUANT_SIZES[qt]
        n_blocks = rows * cols // block_len
        raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
        scales = (rng.random((n_blocks, 2)) * 0.01 + 0.001).astype(np.float16).view(np.uint8)
        if qt == T.Q4_K:
            raw[:, 0:4] = scales  # d, dmin
        else:
            raw[:, 208:210] = scales[:, :2]  # d
        data = raw.reshape(rows, cols // block_len * block_bytes)
        w.add_tensor(name, data, raw_dtype=qt)
        expected[name] = gguf.quants.dequantize(data, qt).astype(np.float32).reshape(rows, cols)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file(expected, os.path.join(OUT, "quant_types_expected.safetensors"))


# A tiny byte-level BPE vocabulary: 3 control tokens, single characters, then merges. "1 2" is
# a merge on purpose: the smollm pre-tokenizer splits digits first, so it must never apply.
MERGES = ["h e", "l l", "he ll", "hell o", "o r", "w or", "wor l", "worl d", "Ġ world", "1 2", "Ġ 1"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def tiny_vocab(n):
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789") + ["Ġ", "Ċ"]
    tokens = SPECIALS + chars + [m.replace(" ", "") for m in MERGES]
    extra = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in tokens]
    tokens += extra[: n - len(tokens)]
    assert len(tokens) == n, len(tokens)
    types = [3] * len(SPECIALS) + [1] * (n - len(SPECIALS))
    return tokens, types


def permute(w, n_head):
    # llama.cpp convert_hf_to_gguf.py LlamaModel.permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tiny_llama():
    import json
    src = os.path.join(HERE, "..", "model", "tests", "fixtures", "io", "llama_f32")
    cfg = json.load(open(os.path.join(src, "config.json")))
    st = load_file(os.path.join(src, "model.safetensors"))
    H, K = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    w = gguf.GGUFWriter(os.path.join(OUT, "tiny_llama.gguf"), arch="llama")
    w.add_name("tiny llama")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(H)
    w.add_head_count_kv(K)
    w.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_dimension_count(cfg["head_dim"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_vocab_size(cfg["vocab_size"])
    tokens, types = tiny_vocab(cfg["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
             "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for hf, x in st.items():
        if hf in names:
            g = names[hf]
        else:
            _, _, i, rest = hf.split(".", 3)
            mod = rest.rsplit(".", 1)[0]
            g = f"blk.{i}.{layer[mod]}.weight"
        if g.endswith("attn_q.weight"):
            x = permute(x, H)
        elif g.endswith("attn_k.weight"):
            x = permute(x, K)
        w.add_tensor(g, np.ascontiguousarray(x.astype(np.float32)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    quant_types()
    tiny_llama()
    for f in sorted(os.listdir(OUT)):
        print(f, os.path.getsize(os.path.join(OUT, f)))
