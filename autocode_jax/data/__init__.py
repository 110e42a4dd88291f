"""Queries, dataset loaders, stratified sampling and prompts."""

from autocode_jax.data.datasets import (BENCHMARKS, DATASETS, TRAIN_SETS, DataError, load_dataset)
from autocode_jax.data.prompts import (CODE_PREFIX, MODES, PROBES, SYSTEM, Prompt, build_prompt)
from autocode_jax.data.records import Query
from autocode_jax.data.sampling import stratified_sample
