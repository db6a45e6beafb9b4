#!/usr/bin/env python3
"""Chapter 10: tapegrad <-> PyTorch round trips, run by ctest as guide_10_torch_python.

usage: 10_torch.py GUIDE_10_TORCH_EXE WORK_DIR
1. tapegrad -> PyTorch: the program trains a small CNN and saves it; the checkpoint loads into
   the same torch.nn layers with strict=True and gives tapegrad's output (float32, 1e-5).
2. PyTorch -> tapegrad: torch-initialised weights saved with torch_interop.save load into
   tapegrad, which checks that its output is PyTorch's.
"""
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
import torch_interop as ti  # noqa: E402


def make_model():
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                               torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 5))


exe, work = sys.argv[1], sys.argv[2]
os.makedirs(work, exist_ok=True)
os.chdir(work)
subprocess.run([exe], check=True, stdout=subprocess.DEVNULL)

# tapegrad -> PyTorch
state, metadata = ti.load("10_model.safetensors")
model = make_model()
model.load_state_dict(ti.model_state(state), strict=True)  # optimizer.* entries left out
model.eval()
io, _ = ti.load("10_io.safetensors")
with torch.no_grad():
    err = (model(io["x"]) - io["y"]).abs().max().item()
print(f"tapegrad's weights in PyTorch: largest difference from tapegrad's output {err:.2g}")

# PyTorch -> tapegrad: move BatchNorm's running statistics away from 0 and 1 first.
torch.manual_seed(0)
model = make_model()
with torch.no_grad():
    model.train()
    for _ in range(3):
        model(torch.randn(8, 1, 6, 6) * 2 + 0.5)
    model.eval()
    x = torch.randn(3, 1, 6, 6)
    y = model(x)
ti.save("10_torch_model.safetensors", model.state_dict())
ti.save("10_torch_io.safetensors", {"x": x, "y": y})
back = subprocess.run([exe, "check"]).returncode
sys.exit(0 if err < 1e-5 and back == 0 else 1)
