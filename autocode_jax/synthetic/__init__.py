"""The generated task of the embedded CPU default: problem families where plain reasoning or code
wins, their solutions, and (to come) its tokenizer and warm-start corpus."""

from autocode_jax.synthetic.corpus import tokenizer_texts, warm_start_examples
from autocode_jax.synthetic.task import FAMILIES, SOURCE, WINNER, Problem, generate
