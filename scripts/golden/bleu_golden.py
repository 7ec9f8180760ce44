"""Writes BLEU test corpora built from real Flickr8k captions and their golden scores.

usage: bleu_golden.py <flickr8k dir> <out dir>
Scores come from NLTK 3.9.1 `corpus_bleu` (no smoothing) and pycocoevalcap's `Bleu(4)`.
Tokens are the whitespace-split captions as written to the TSV files.
"""
import contextlib
import io
import json
import os
import string
import sys

from nltk.translate.bleu_score import corpus_bleu
from pycocoevalcap.bleu.bleu import Bleu

WEIGHTS = {
    "1": (1.0,),
    "1,0,0,0": (1.0, 0, 0, 0),
    ".5,.5,0,0": (0.5, 0.5, 0, 0),
    ".3,.3,.3,0": (0.3, 0.3, 0.3, 0),
    ".25,.25,.25,.25": (0.25, 0.25, 0.25, 0.25),
    ".1,.2,.3,.4": (0.1, 0.2, 0.3, 0.4),
    ".2,.2,.2,.2,.2": (0.2, 0.2, 0.2, 0.2, 0.2),
}
PUNCT = str.maketrans("", "", string.punctuation)


def clean(caption, rules):
    words = [w.lower().translate(PUNCT) for w in caption.split()]
    if rules == "original":
        return [w for w in words if len(w) > 1 and w.isalpha()]
    return [w for w in words if w]


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


def score(refs, hyps):
    """refs: {id: [str]}, hyps: [(id, str)] in file order."""
    list_refs = [[r.split() for r in refs[i]] for i, _ in hyps]
    list_hyps = [h.split() for _, h in hyps]
    out = {"nltk": {k: corpus_bleu(list_refs, list_hyps, weights=w) for k, w in WEIGHTS.items()}}
    gts = {n: refs[i] for n, (i, _) in enumerate(hyps)}
    res = {n: [h] for n, (_, h) in enumerate(hyps)}
    with contextlib.redirect_stdout(io.StringIO()):
        coco, _ = Bleu(4).compute_score(gts, res)
    out["coco"] = coco
    return out


def main(root, out):
    os.makedirs(out, exist_ok=True)
    captions = load(root)
    ids = [i for i in captions if i != "2258277193_586949ec62"]
    corpora = {}

    # Original protocol: startseq/endseq kept, hypotheses are other images' captions.
    refs = {i: ["startseq " + " ".join(clean(c, "original")) + " endseq" for c in captions[i]] for i in ids}
    hyps = [(i, refs[ids[(n + 1) % len(ids)]][0]) for n, i in enumerate(ids)]
    corpora["original-wrong-image"] = (refs, hyps)

    # Standard text, mixed hard cases; the hypothesis' own caption 0 is held out of the refs.
    refs = {i: [" ".join(clean(c, "standard")) for c in captions[i][1:]] for i in ids}
    hyps = []
    for n, i in enumerate(ids):
        own = clean(captions[i][0], "standard")
        kind = n % 6
        if kind == 0:
            text = []  # empty hypothesis
        elif kind == 1:
            text = own[:2]  # shorter than 4 tokens
        elif kind == 2:
            text = [w for w in own[:4] for _ in range(3)]  # repeated words
        elif kind == 3:
            text = clean(captions[ids[(n + 7) % len(ids)]][0], "standard")
        elif kind == 4:
            text = own
        else:
            text = own[::-1]
        hyps.append((i, " ".join(text)))
    corpora["standard-mixed"] = (refs, hyps)

    # No 4-gram match anywhere: reversed three-word fragments.
    hyps = [(i, " ".join(clean(captions[i][0], "standard")[:3][::-1])) for i in ids]
    corpora["no-4gram"] = (refs, hyps)

    # No unigram match: BLEU is exactly 0.
    hyps = [(i, "zzz qqq" if n % 2 else "") for n, i in enumerate(ids[:10])]
    corpora["no-match"] = (refs, hyps)

    golden = {}
    for name, (refs, hyps) in corpora.items():
        write_tsv(os.path.join(out, f"{name}.refs.tsv"), [(i, r) for i in refs for r in refs[i]])
        write_tsv(os.path.join(out, f"{name}.hyps.tsv"), hyps)
        golden[name] = score(refs, hyps)
    with open(os.path.join(out, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
