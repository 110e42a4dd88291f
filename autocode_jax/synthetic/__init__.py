"""The generated task of the embedded CPU default: problem families where plain reasoning or code
wins, their solutions, its tokenizer, warm-start corpus and the demo driver."""

from autocode_jax.synthetic.corpus import tokenizer_texts, warm_start_examples
from autocode_jax.synthetic.task import (EVAL, FAMILIES, SOURCE, TRAIN, WINNER, Problem, generate,
                                         split_problems)
