"""Scores a predictions file (`image_id<TAB>caption`, e.g. from `captiond evaluate
--predictions`) with pycocoevalcap 1.2's Cider and Bleu(4), against the split's
references cleaned with the `standard` text rules: the independent check of the CIDEr-D
and coco BLEU that `captiond evaluate` prints.

usage: cider_check.py <flickr8k dir> <predictions.tsv>
"""
import contextlib
import io
import json
import os
import string
import sys

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

PUNCT = str.maketrans("", "", string.punctuation)


def clean(caption):
    return " ".join(w for w in (w.lower().translate(PUNCT) for w in caption.split()) if w)


def main(root, predictions):
    refs = {}
    with open(os.path.join(root, "Flickr8k_text", "Flickr8k.token.txt")) as f:
        for line in f:
            if len(line.strip()) < 2:
                continue
            name, caption = line.rstrip("\n").split("\t", 1)
            refs.setdefault(name.split(".")[0], []).append(clean(caption))
    gts, res = {}, {}
    with open(predictions) as f:
        for n, line in enumerate(f):
            image_id, caption = line.rstrip("\n").split("\t", 1)
            gts[n] = refs[image_id]
            res[n] = [caption]
    with contextlib.redirect_stdout(io.StringIO()):
        cider, _ = Cider().compute_score(gts, res)
        bleu, _ = Bleu(4).compute_score(gts, res)
    print(json.dumps({"images": len(res), "cider_d": cider, "coco_bleu": bleu}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
