"""Answer grading: extraction, gold normalisation, equivalence in killable worker processes."""

from autocode_jax.grading.extract import extract_answer, last_boxed, normalize_gold
from autocode_jax.grading.grader import (Grade, default_pool, failure_counts, grade, grade_batch,
                                         grade_results)
from autocode_jax.grading.pool import GraderPool
