"""Writes one random VGG16 state dict with torchvision's parameter names in the three
formats caption-train reads (zip .pth, legacy .pth, safetensors), with real PyTorch, for
the manual check that all three give identical features:

    python scripts/golden/vgg16_formats.py /tmp/vgg16
    for f in zip.pth legacy.pth weights.safetensors; do
      caption-train extract --data fixtures/flickr8k --encoder vgg16 --weights /tmp/vgg16/$f \
        --out /tmp/vgg16/features-$f.safetensors --limit 16
    done
"""
import os
import sys

import torch
from safetensors.torch import save_file

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
sd, cin, i = {}, 3, 0
for v in cfg:
    if v == "M":
        i += 1
        continue
    sd[f"features.{i}.weight"] = torch.randn(v, cin, 3, 3) * (2.0 / (cin * 9)) ** 0.5
    sd[f"features.{i}.bias"] = torch.randn(v) * 0.01
    cin, i = v, i + 2
for name, (o, n) in {"classifier.0": (4096, 25088), "classifier.3": (4096, 4096), "classifier.6": (1000, 4096)}.items():
    sd[f"{name}.weight"] = torch.randn(o, n) * (2.0 / n) ** 0.5
    sd[f"{name}.bias"] = torch.randn(o) * 0.01
torch.save(sd, os.path.join(out, "zip.pth"))
torch.save(sd, os.path.join(out, "legacy.pth"), _use_new_zipfile_serialization=False)
save_file(sd, os.path.join(out, "weights.safetensors"))
