"""Answer grading: extraction, gold normalisation, equivalence in killable worker processes."""

from autocode_jax.grading.extract import extract_answer, last_boxed, normalize_gold
from autocode_jax.grading.grader import default_pool, grade, grade_batch
from autocode_jax.grading.pool import GraderPool
