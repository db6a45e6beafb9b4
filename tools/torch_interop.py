#!/usr/bin/env python3
"""Moves models between tapegrad and PyTorch through tapegrad's safetensors checkpoints.

Plain Python: json, numpy and torch (Debian's python3-torch; Debian has no python3-safetensors).

    import torch_interop as ti
    state, meta = ti.load("ckpt.safetensors")          # tapegrad -> PyTorch
    model.load_state_dict(ti.model_state(state), strict=True)
    ti.save("init.safetensors", model.state_dict())     # PyTorch -> tapegrad
    # then in C++: io::load_checkpoint("init.safetensors", model);

A tapegrad checkpoint holds the model's parameters and buffers under PyTorch's state_dict names
("0.weight", "1.running_mean", "lstm.weight_ih_l0"), the optimizer's state under "optimizer.",
and each module's extra state (Dropout's random stream) in the metadata as
"<module>._extra_state". model_state() keeps the model part. tapegrad keeps BatchNorm's
num_batches_tracked in the model's float type: load_state_dict converts it to PyTorch's int64,
and save() converts PyTorch's int64 buffers to the float type tapegrad's model uses.

Command line: `torch_interop.py list FILE` prints every tensor (name, dtype, shape) and the
metadata.
"""

import json
import struct
import sys

import numpy as np
import torch

assert sys.byteorder == "little", "safetensors is little-endian, as tapegrad's hosts"
_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
_MAX_HEADER = 100_000_000  # tapegrad's and the reference implementation's limit


def load(path):
    """Reads a safetensors file: ({name: torch.Tensor}, {metadata key: value})."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for the 8-byte header length")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > _MAX_HEADER or n > len(raw) - 8:
        raise ValueError(f"{path}: header length {n} does not fit the file of {len(raw)} bytes")
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    data = memoryview(raw)[8 + n :]
    metadata = header.pop("__metadata__", {})
    tensors = {}
    for name, entry in header.items():
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {name!r}: dtype {entry['dtype']} not supported")
        begin, end = entry["data_offsets"]
        array = np.frombuffer(data[begin:end], dtype=dtype)
        tensors[name] = torch.from_numpy(array.reshape(entry["shape"]).copy())
    return tensors, metadata


def model_state(tensors):
    """The model's part of a checkpoint (without "optimizer." entries), for load_state_dict."""
    return {k: v for k, v in tensors.items() if not k.startswith("optimizer.")}


def save(path, state_dict, metadata=None, dtype=torch.float32):
    """Writes a state_dict as a safetensors file tapegrad loads into a model of `dtype`
    (float32 for tapegrad's Tensor<float> models, float64 for Tensor<double>): floating tensors
    and integer buffers (num_batches_tracked) are converted to it."""
    tensors = [(name, t.detach().to("cpu", dtype).contiguous().numpy())
               for name, t in state_dict.items()]
    header = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}} if metadata else {}
    offset, blobs = 0, []
    for name, array in tensors:  # one dtype: every tensor stays aligned to its element size
        blobs.append(array.tobytes())
        header[name] = {
            "dtype": _NAMES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(blobs[-1])],
        }
        offset += len(blobs[-1])
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def main(argv):
    if len(argv) != 3 or argv[1] != "list":
        print(__doc__.strip().splitlines()[0])
        print("usage: torch_interop.py list FILE")
        return 2
    tensors, metadata = load(argv[2])
    for name, t in tensors.items():
        print(f"{name:40s} {str(t.dtype):15s} {list(t.shape)}")
    for k, v in metadata.items():
        print(f"metadata {k} = {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
