"""Copies the part of ../shared/reference/efficientnet-lite0 the tests need into
trainer/tests/data/lite0-reference.safetensors: the first 4 images' pixels, all 16 images'
features and logits (plain Python, no dependencies)."""
import json
import struct
import sys

src, dst, n_pix = sys.argv[1], sys.argv[2], 4
with open(src, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
    body = f.read()
ref = json.load(open(src.replace(".safetensors", ".json")))
out, blobs, offset = {}, [], 0
for name in ("pixels", "features", "logits"):
    h = header[name]
    a, b = h["data_offsets"]
    data, shape = body[a:b], list(h["shape"])
    if name == "pixels":
        per = len(data) // shape[0]
        data, shape[0] = data[: per * n_pix], n_pix
    out[name] = {"dtype": h["dtype"], "shape": shape, "data_offsets": [offset, offset + len(data)]}
    blobs.append(data)
    offset += len(data)
out["__metadata__"] = {"images": json.dumps(ref["images"]), "top5": json.dumps(ref["top5"])}
head = json.dumps(out).encode()
head += b" " * (-len(head) % 8)
with open(dst, "wb") as f:
    f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))
