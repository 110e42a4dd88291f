"""The generated task of the embedded CPU default: problem families where plain reasoning or code
wins, their solutions, and (to come) its tokenizer and warm-start corpus."""

from autocode_jax.synthetic.task import FAMILIES, WINNER, Problem, generate
