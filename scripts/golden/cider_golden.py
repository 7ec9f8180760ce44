"""Writes a CIDEr-D test corpus built from real Flickr8k captions (every image of the
token file, in its order) and its golden scores from pycocoevalcap 1.2's `Cider`
(CIDEr-D: sigma 6, clipping, x10).

usage: cider_golden.py <flickr8k dir> <out dir>
Captions are cleaned with the `standard` text rules (lowercase, punctuation stripped), and
tokens are the whitespace-split captions as written to the TSV files: the same tokens the
Rust scorer gets (as for the coco BLEU goldens).
"""
import contextlib
import io
import json
import os
import string
import sys

from pycocoevalcap.cider.cider import Cider

PUNCT = str.maketrans("", "", string.punctuation)


def clean(caption):
    return [w for w in (w.lower().translate(PUNCT) for w in caption.split()) if w]


def load(root):
    captions = {}
    with open(os.path.join(root, "Flickr8k_text", "Flickr8k.token.txt")) as f:
        for line in f:
            if len(line.strip()) < 2:
                continue
            name, caption = line.rstrip("\n").split("\t", 1)
            captions.setdefault(name.split(".")[0], []).append(caption)
    return captions


def write_tsv(path, rows):
    with open(path, "w") as f:
        for image_id, text in rows:
            f.write(f"{image_id}\t{text}\n")


def main(root, out):
    os.makedirs(out, exist_ok=True)
    captions = load(root)
    ids = [i for i in captions if len(captions[i]) == 5]
    # Caption 0 is the hypothesis' source; references are captions 1..4.
    refs = {i: [" ".join(clean(c)) for c in captions[i][1:]] for i in ids}
    hyps = []
    for n, i in enumerate(ids):
        own = clean(captions[i][0])
        kind = n % 6
        if kind == 0:
            text = own  # a human caption of the image
        elif kind == 1:
            text = clean(captions[ids[(n + 11) % len(ids)]][0])  # another image's
        elif kind == 2:
            text = own[:3]  # much shorter: the length penalty
        elif kind == 3:
            text = own + own  # much longer, repeated n-grams: clipping
        elif kind == 4:
            text = []  # empty
        else:
            text = own[::-1]  # same words, other order
        hyps.append((i, " ".join(text)))
    gts = {n: refs[i] for n, (i, _) in enumerate(hyps)}
    res = {n: [h] for n, (_, h) in enumerate(hyps)}
    with contextlib.redirect_stdout(io.StringIO()):
        corpus, per_image = Cider().compute_score(gts, res)
    write_tsv(os.path.join(out, "refs.tsv"), [(i, r) for i in ids for r in refs[i]])
    write_tsv(os.path.join(out, "hyps.tsv"), hyps)
    with open(os.path.join(out, "golden.json"), "w") as f:
        json.dump({"cider_d": float(corpus), "per_image": [float(s) for s in per_image]}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
