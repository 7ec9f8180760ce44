"""Writes small checkpoints with real PyTorch (2.11) in both checkpoint formats, plus the
same tensors as safetensors, for the weight-reader tests:

    python scripts/golden/torch_checkpoints.py weights/tests/data/checkpoints

The state dict comes from a real nn.Module (OrderedDict with `_metadata`, BatchNorm's int64
`num_batches_tracked`), plus a transposed (non-contiguous) view, two views sharing one
storage, and float16/float64 tensors.
"""
import os
import sys

import torch
from safetensors.torch import save_file

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
torch.manual_seed(7)
model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(5, 2))
sd = model.state_dict()
sd["1.running_mean"].uniform_(-1, 1)
sd["1.running_var"].uniform_(0.5, 2)
base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
sd["extra.transposed"] = base.t()
sd["extra.row1"] = base[1]
sd["extra.half"] = torch.tensor([0.5, -1.25, 3.0], dtype=torch.float16)
sd["extra.double"] = torch.tensor([[1.0 / 3.0, 2.0]], dtype=torch.float64)
torch.save(sd, os.path.join(out, "small-zip.pth"))
torch.save(sd, os.path.join(out, "small-legacy.pth"), _use_new_zipfile_serialization=False)
expected = {k: v.detach().to(torch.float32).contiguous() for k, v in sd.items()}
save_file(expected, os.path.join(out, "small-expected.safetensors"))
