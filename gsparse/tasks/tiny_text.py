"""A small text-classification problem that needs no download, and a tiny BERT built from a
config, for the Hugging Face examples and tests (``scripts/hf_tiny_bert.py``, tests/test_hf.py).

The sentences are generated from a fixed grammar: a subject, a verb, an optional negation and an
adjective from a positive or a negative list. The label is the sentence's sentiment (the
adjective's polarity, flipped by "not"), so a model has to combine two words; a bag of words
cannot separate "good" from "not good".
"""
from __future__ import annotations

import random

import torch

SUBJECTS = ["the movie", "this film", "the plot", "the acting", "the music", "the ending", "the cast", "the story",
            "the script", "the camera work", "the dialogue", "the soundtrack"]
VERBS = ["was", "is", "seemed", "felt", "looked", "sounded"]
INTENSIFIERS = ["", "really", "very", "quite", "truly", "rather"]
POSITIVE = ["good", "great", "brilliant", "charming", "moving", "superb", "delightful", "clever", "gripping", "lovely"]
NEGATIVE = ["bad", "dull", "awful", "boring", "clumsy", "weak", "tedious", "bland", "messy", "painful"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


def sentiment_corpus(size: int, seed: int = 0) -> list[tuple[str, int]]:
    """``size`` generated (sentence, label) pairs, label 1 positive / 0 negative, balanced."""
    rng = random.Random(seed)
    examples = []
    for index in range(size):
        positive_word = index % 2 == 0
        negated = rng.random() < 0.5
        adjective = rng.choice(POSITIVE if positive_word else NEGATIVE)
        words = [rng.choice(SUBJECTS), rng.choice(VERBS)] + (["not"] if negated else []) + \
            [w for w in [rng.choice(INTENSIFIERS)] if w] + [adjective]
        examples.append((" ".join(words), int(positive_word != negated)))
    rng.shuffle(examples)
    return examples


class WordTokenizer:
    """Whitespace word ids over the grammar's vocabulary, with [CLS] ... [SEP] and padding."""

    def __init__(self):
        words = sorted({w for phrase in SUBJECTS + VERBS + INTENSIFIERS + POSITIVE + NEGATIVE + ["not"]
                        for w in phrase.split()})
        self.vocab = {token: index for index, token in enumerate(SPECIAL + words)}

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, length: int) -> list[int]:
        ids = [self.vocab["[CLS]"]] + [self.vocab.get(w, self.vocab["[UNK]"]) for w in text.split()]
        ids = ids[:length - 1] + [self.vocab["[SEP]"]]
        return ids + [self.vocab["[PAD]"]] * (length - len(ids))


def encoded_dataset(examples: list[tuple[str, int]], tokenizer: WordTokenizer, length: int = 12) -> list[dict]:
    """Examples as the dicts a ``transformers`` model takes (``input_ids``, ``attention_mask``,
    ``labels``) plus their index ``idx``."""
    rows = []
    for index, (text, label) in enumerate(examples):
        ids = tokenizer.encode(text, length)
        rows.append({"input_ids": torch.tensor(ids), "attention_mask": torch.tensor([int(i != 0) for i in ids]),
                     "labels": torch.tensor(label), "idx": index})
    return rows


def tiny_bert(vocab_size: int, *, hidden_size: int = 32, layers: int = 2, heads: int = 2, intermediate_size: int = 64,
              max_length: int = 16, dropout: float = 0.0, seed: int = 0):
    """A ``BertForSequenceClassification`` built from a config (no download), seeded."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate_size,
                        max_position_embeddings=max_length, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout, num_labels=2)
    torch.manual_seed(seed)
    return BertForSequenceClassification(config)
