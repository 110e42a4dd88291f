"""The generated task of the embedded CPU default: problem families where plain reasoning or code
wins, their solutions, its tokenizer and warm-start corpus. It is the dataset `synthetic` of the
registry (data.datasets.DATASETS): queries and SFT corpus made by code, nothing read from disk.
The demo that trains on it is autocode_jax/demo."""

from autocode_jax.data.synthetic.corpus import corpus, tokenizer_texts, warm_start_examples
from autocode_jax.data.synthetic.task import (EVAL, FAMILIES, SOURCE, TRAIN, WINNER, Problem,
                                              generate, queries, split_problems)
