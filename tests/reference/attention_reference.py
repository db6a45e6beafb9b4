#!/usr/bin/python3
# Reference values for tests/test_nn_attention.cpp and tests/test_nn_transformer.cpp, computed with
# PyTorch 1.13 (Debian's python3-torch) in float64:  /usr/bin/python3 tests/reference/attention_reference.py
# Every parameter and input is filled by the closed formula fill(k) below (parameter k of
# named_parameters(), in PyTorch's order, which the tests check is also tapegrad's), so the C++
# tests rebuild the same numbers without reading any file.
import math

import torch

torch.set_default_dtype(torch.float64)


def fill(shape, salt, amp=0.5, offset=0.0):
    n = math.prod(shape)
    return torch.tensor([offset + amp * math.sin(0.37 * i + salt) for i in range(n)]).reshape(shape)


def fill_params(module):
    with torch.no_grad():
        for k, (name, p) in enumerate(module.named_parameters()):
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
                p.copy_(fill(p.shape, k, 0.1, 1.0))
            elif "bias" in name:
                p.copy_(fill(p.shape, k, 0.1))
            else:
                p.copy_(fill(p.shape, k, 0.5))


def show(name, t):
    vals = ", ".join(f"{v:.17g}" for v in t.detach().flatten().tolist())
    print(f"// {name} {list(t.shape)}\n{{{vals}}}\n")


L, S, N, E, H = 4, 5, 2, 6, 2

# MultiheadAttention, self-attention, time-major, no mask: output and head-averaged weights.
mha = torch.nn.MultiheadAttention(E, H)
fill_params(mha)
x = fill((L, N, E), 10.0)
out, w = mha(x, x, x)
show("mha self out", out)
show("mha self weights", w)

# The same with a boolean attn_mask (True = not allowed) and a key_padding_mask.
attn_mask = torch.tensor([[False, True, True, True], [False, False, True, True],
                          [True, False, False, True], [False, False, False, False]])
kpm = torch.tensor([[False, False, False, False], [False, False, True, False]])
out, w = mha(x, x, x, attn_mask=attn_mask, key_padding_mask=kpm)
show("mha masked out", out)
show("mha masked weights", w)

# Cross-attention, batch_first, float additive mask, per-head weights.
mha_bf = torch.nn.MultiheadAttention(E, H, batch_first=True)
fill_params(mha_bf)
q = fill((N, L, E), 20.0)
kv = fill((N, S, E), 30.0)
add_mask = fill((L, S), 40.0, 2.0)
out, w = mha_bf(q, kv, kv, attn_mask=add_mask, average_attn_weights=False)
show("mha cross out", out)
show("mha cross weights", w)

# Distinct key and value Vars.
v_in = fill((N, S, E), 50.0)
out, _ = mha_bf(q, kv, v_in)
show("mha kv out", out)

# TransformerEncoderLayer: post-LN ReLU and pre-LN GELU, dropout 0, key padding mask.
FF = 8
for norm_first, act in ((False, "relu"), (True, "gelu")):
    layer = torch.nn.TransformerEncoderLayer(E, H, dim_feedforward=FF, dropout=0.0,
                                             activation=act, norm_first=norm_first)
    fill_params(layer)
    layer.train()  # the reference (slow) path
    y = layer(x, src_key_padding_mask=kpm)
    show(f"encoder layer norm_first={norm_first} {act}", y)

# TransformerEncoder of 2 post-LN layers with a final norm, causal float mask.
layer = torch.nn.TransformerEncoderLayer(E, H, dim_feedforward=FF, dropout=0.0)
enc = torch.nn.TransformerEncoder(layer, 2, norm=torch.nn.LayerNorm(E))
fill_params(enc)
enc.train()
causal = torch.nn.Transformer.generate_square_subsequent_mask(L)
y = enc(x, mask=causal)
show("encoder 2 layers causal", y)

# The same encoder's state_dict, written as safetensors the way safetensors.torch.save_file lays
# it out (8-byte header size, JSON header, little-endian data), without needing that package:
# tests/test_nn_transformer.cpp loads it into a fresh tapegrad TransformerEncoder.
import json
import struct
import sys

header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
for name, t in enc.state_dict().items():
    data = t.detach().contiguous().numpy().astype("<f8").tobytes()
    header[name] = {"dtype": "F64", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
    blobs.append(data)
    offset += len(data)
raw = json.dumps(header, separators=(",", ":")).encode()
raw += b" " * (-len(raw) % 8)
path = sys.argv[1] if len(sys.argv) > 1 else "tests/reference/encoder_2_layers.safetensors"
with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))
