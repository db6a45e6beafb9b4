#!/usr/bin/env python3
"""PyTorch round trips through tools/torch_interop.py (ctest torch_roundtrip).

1. tapegrad -> PyTorch: tapegrad_interop trains a CNN with BatchNorm and a 2-layer LSTM in
   tapegrad and saves them; they load into the equivalent torch.nn modules with strict=True, and
   in eval mode give tapegrad's outputs (float32, 1e-5).
2. PyTorch -> tapegrad: torch-initialised weights (the CNN's BatchNorm statistics moved by a few
   training-mode batches) saved by torch_interop.save load into tapegrad, whose outputs
   tapegrad_interop compares with torch's.

usage: test_torch_roundtrip.py TAPEGRAD_INTEROP_EXE WORK_DIR
"""

import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
import torch_interop as ti  # noqa: E402


def cnn():
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Conv2d(4, 8, 3, stride=2, padding=1),
        torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(32, 5))


# name: (constructor, input shape, output of a call); tapegrad's LSTM call returns the output
# sequence, torch's (output, (h, c)).
MODELS = {
    "cnn": (cnn, (3, 1, 8, 8), lambda m, x: m(x)),
    "lstm": (lambda: torch.nn.LSTM(4, 6, num_layers=2), (5, 3, 4), lambda m, x: m(x)[0]),
}


def max_error(a, b):
    return ((a - b).abs() / b.abs().clamp(min=1)).max().item()


def main():
    exe, work = sys.argv[1], sys.argv[2]
    os.makedirs(work, exist_ok=True)
    subprocess.run([exe, "export", work], check=True)
    torch.manual_seed(0)
    failures = 0
    for name, (make, input_shape, call) in MODELS.items():
        # tapegrad -> PyTorch
        state, _ = ti.load(os.path.join(work, name + ".safetensors"))
        assert any(k.startswith("optimizer.") for k in state), "the checkpoint has optimizer state"
        model = make()
        model.load_state_dict(ti.model_state(state), strict=True)
        model.eval()
        io, _ = ti.load(os.path.join(work, name + "_io.safetensors"))
        with torch.no_grad():
            err = max_error(call(model, io["x"]), io["y"])
        print(f"{name}: tapegrad-trained weights, PyTorch vs tapegrad output: max error {err:.3g}")
        failures += err > 1e-5

        # PyTorch -> tapegrad
        model = make()
        if name == "cnn":  # move the running statistics away from 0 and 1
            model.train()
            with torch.no_grad():
                for _ in range(3):
                    call(model, torch.randn(input_shape) * 2 + 0.5)
        model.eval()
        x = torch.randn(input_shape)
        with torch.no_grad():
            y = call(model, x)
        ti.save(os.path.join(work, "torch_" + name + ".safetensors"), model.state_dict())
        ti.save(os.path.join(work, "torch_" + name + "_io.safetensors"), {"x": x, "y": y})
    failures += subprocess.run([exe, "check", work]).returncode != 0
    print("torch round trips:", "FAILED" if failures else "passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
