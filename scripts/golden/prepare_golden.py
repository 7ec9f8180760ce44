"""The original tutorial's text preparation, verbatim, with Keras' real Tokenizer.

Prints a JSON object of the prepare figures (and the train word index) for both text rules.
"""
import json
import string
import sys

from keras_preprocessing.text import Tokenizer


def load_doc(filename):
    with open(filename, "r") as f:
        return f.read()


def load_descriptions(doc):
    mapping = dict()
    for line in doc.split("\n"):
        tokens = line.split()
        if len(line) < 2:
            continue
        image_id, image_desc = tokens[0], tokens[1:]
        image_id = image_id.split(".")[0]
        image_desc = " ".join(image_desc)
        if image_id not in mapping:
            mapping[image_id] = list()
        mapping[image_id].append(image_desc)
    return mapping


def clean_descriptions(descriptions, rules):
    table = str.maketrans("", "", string.punctuation)
    for key, desc_list in descriptions.items():
        for i in range(len(desc_list)):
            desc = desc_list[i].split()
            desc = [word.lower() for word in desc]
            desc = [w.translate(table) for w in desc]
            if rules == "original":
                desc = [word for word in desc if len(word) > 1]
                desc = [word for word in desc if word.isalpha()]
            else:
                desc = [word for word in desc if len(word) > 0]
            desc_list[i] = " ".join(desc)


def to_vocabulary(descriptions):
    all_desc = set()
    for key in descriptions.keys():
        [all_desc.update(d.split()) for d in descriptions[key]]
    return all_desc


def save_descriptions_text(descriptions):
    lines = list()
    for key, desc_list in descriptions.items():
        for desc in desc_list:
            lines.append(key + " " + desc)
    return "\n".join(lines)


def load_set(filename):
    doc = load_doc(filename)
    dataset = list()
    for line in doc.split("\n"):
        if len(line) < 1:
            continue
        identifier = line.split(".")[0]
        dataset.append(identifier)
    return set(dataset)


def load_clean_descriptions(doc, dataset):
    descriptions = dict()
    for line in doc.split("\n"):
        tokens = line.split()
        image_id, image_desc = tokens[0], tokens[1:]
        if image_id in dataset:
            if image_id not in descriptions:
                descriptions[image_id] = list()
            desc = "startseq " + " ".join(image_desc) + " endseq"
            descriptions[image_id].append(desc)
    return descriptions


def to_lines(descriptions):
    all_desc = list()
    for key in descriptions.keys():
        [all_desc.append(d) for d in descriptions[key]]
    return all_desc


def count_pairs(tokenizer, descriptions):
    pairs = 0
    for key, desc_list in descriptions.items():
        for desc in desc_list:
            seq = tokenizer.texts_to_sequences([desc])[0]
            pairs += len(range(1, len(seq)))
    return pairs


def figures(root, rules):
    t = root + "/Flickr8k_text/"
    descriptions = load_descriptions(load_doc(t + "Flickr8k.token.txt"))
    captions = sum(len(v) for v in descriptions.values())
    clean_descriptions(descriptions, rules)
    vocabulary = to_vocabulary(descriptions)
    doc = save_descriptions_text(descriptions)
    train = load_set(t + "Flickr_8k.trainImages.txt")
    dev = load_set(t + "Flickr_8k.devImages.txt")
    test = load_set(t + "Flickr_8k.testImages.txt")
    train_desc = load_clean_descriptions(doc, train)
    dev_desc = load_clean_descriptions(doc, dev)
    test_desc = load_clean_descriptions(doc, test)
    tokenizer = Tokenizer()
    tokenizer.fit_on_texts(to_lines(train_desc))
    words = sorted(tokenizer.word_index, key=tokenizer.word_index.get)
    return {
        "images": len(descriptions),
        "captions": captions,
        "vocabulary": len(vocabulary),
        "train_images": len(train_desc),
        "dev_images": len(dev_desc),
        "test_images": len(test_desc),
        "train_vocab_size": len(tokenizer.word_index) + 1,
        "max_length": max(len(d.split()) for d in to_lines(train_desc)),
        "train_pairs": count_pairs(tokenizer, train_desc),
        "dev_pairs": count_pairs(tokenizer, dev_desc),
        "train_words": words,
        "descriptions_txt": doc,
    }


if __name__ == "__main__":
    root = sys.argv[1]
    print(json.dumps({r: figures(root, r) for r in ("original", "standard")}, indent=1))
