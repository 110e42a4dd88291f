"""The synthetic task: deterministic under a seed, and its answers right by the grader and by
running the reference code in the sandbox; the trap families' code solutions are wrong."""

import collections
import dataclasses
import pathlib

import pytest

from autocode_jax.grading.grader import grade_batch
from autocode_jax.grading.pool import GraderPool
from autocode_jax.interpreter import Sandbox
from autocode_jax.data.synthetic import EVAL, FAMILIES, TRAIN, WINNER, generate, split_problems
from autocode_jax.rollout.tool_loop import code_cells


@pytest.fixture(scope="module")
def problems():
  return generate(100, seed=3)


def test_deterministic_under_a_seed(problems):
  assert generate(100, seed=3) == problems
  assert generate(40, seed=3) == problems[:40]  # a prefix is the shorter list
  other = generate(100, seed=4)
  assert [p.question for p in other] != [p.question for p in problems]
  assert collections.Counter(p.family for p in problems) == {f: 20 for f in FAMILIES}
  assert len({p.id for p in problems}) == 100
  # A run's training and evaluation splits: one seed rule, disjoint problems.
  train, held = split_problems(50, 1, TRAIN), split_problems(50, 1, EVAL)
  assert train == generate(50, seed=2) and held == generate(50, seed=3)
  assert not {p.question for p in train if p.family == "mul5"} & {
      p.question for p in held if p.family == "mul5"}
  with pytest.raises(ValueError, match="unknown families"):
    generate(3, families=("nope",))


def test_answers_are_right_by_the_grader_and_by_the_reference_code(problems):
  with GraderPool(num_workers=2) as pool:
    plain_ok = grade_batch([p.plain for p in problems], [p.answer for p in problems],
                           "synthetic", pool=pool)
    code_ok = grade_batch([p.code for p in problems], [p.answer for p in problems],
                          "synthetic", pool=pool)
  assert all(plain_ok)
  for p, ok in zip(problems, code_ok):  # trap code is wrong, all other code is right
    assert ok == (WINNER[p.family] != "plain"), (p.family, p.code)
  with Sandbox(num_workers=2, timeout_s=5.0) as sb:
    ref = sb.run_batch([[p.reference_code] for p in problems])
    shown = sb.run_batch([code_cells(p.code) for p in problems])
  for p, r, s in zip(problems, ref, shown):
    assert r.status == "ok" and r.output.strip() == p.answer, (p.id, r)
    # The output block of each code solution is what its code really prints.
    assert s.status == "ok" and f"```output\n{s.output.strip()}\n```" in p.code


def test_tokenizer_is_built_locally_and_round_trips(problems, tmp_path):
  from autocode_jax.models import load_tokenizer
  from autocode_jax.data.synthetic.corpus import tokenizer_texts
  from autocode_jax.data.synthetic.tokenizer import build_tokenizer
  texts = tokenizer_texts(problems)
  a = build_tokenizer(texts, str(tmp_path / "a"), vocab_size=400)
  b = build_tokenizer(texts, str(tmp_path / "b"), vocab_size=400)
  assert (pathlib.Path(a) / "tokenizer.json").read_bytes() == (pathlib.Path(b) /
                                                               "tokenizer.json").read_bytes()
  tok = load_tokenizer(a)
  assert tok.vocab_size == 400 and tok.decode([tok.eos_token_id]) == "<|endoftext|>"
  for t in texts[:200] + ["unseen text: 12345 * 67890 = ?"]:
    assert tok.decode(tok.encode(t)) == t
  assert len(tok.encode(problems[0].plain)) < 0.7 * len(problems[0].plain)  # merges were learnt
  ids = tok.encode("print(24658 * 14661)")
  assert [tok.decode([i]) for i in ids if tok.decode([i]).isdigit()] == list("2465814661")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temporary left


def test_warm_start_corpus_mixes_plain_and_code(problems, shared_dir):
  from autocode_jax.data.prompts import CODE_PREFIX, MODE_INSTRUCTIONS
  from autocode_jax.data.sft import sft_records
  from autocode_jax.models import load_tokenizer
  from autocode_jax.data.synthetic.corpus import warm_start_examples
  ex = warm_start_examples(problems, seed=1, code_share=0.5)
  assert len(ex) == 200 and ex == warm_start_examples(problems, seed=1, code_share=0.5)
  auto, others = ex[0::2], ex[1::2]  # each problem's plain-prompt answer, then its told one
  assert all(e.mode == "auto" and not e.prefix_given for e in auto)
  coded = [e for e in auto if "```python" in e.response]
  assert 0.35 < len(coded) / len(auto) < 0.65  # undecided: code about half the time
  # Every plain-prompt code answer opens with P, no plain answer does: pi(P|x) is the decision.
  assert all(e.prefix == CODE_PREFIX for e in coded)
  assert not any(e.prefix for e in auto if e not in coded)
  # A base-model-like start: the plain prompt rarely leads to code (the demo's share, 0.1).
  low = warm_start_examples(problems, seed=1, code_share=0.1)[0::2]
  assert 0.03 < sum("```python" in e.response for e in low) / len(low) < 0.2
  assert warm_start_examples(problems, seed=1, code_share=0.1)[1::2] == others  # not on the share
  with pytest.raises(ValueError, match="code_share=1.5"):
    warm_start_examples(problems, 0, code_share=1.5)
  # Told how to answer: cot for half the problems; code under the code prompt for a quarter and
  # after a given P (the code_prefix probe's context) for a quarter, every family in each.
  kind = lambda e: "given P" if e.prefix_given else e.mode
  assert [kind(e) for e in others[:4]] == ["cot", "code", "cot", "given P"]
  assert sum(kind(e) == "code" for e in others) == sum(kind(e) == "given P" for e in others) == 25
  assert all(e.mode == "auto" and e.prefix == CODE_PREFIX for e in others if e.prefix_given)
  assert all(("```python" in e.response) == (kind(e) != "cot") for e in others)
  fams = lambda k: {p.family for p, e in zip(problems, others) if kind(e) == k}
  assert fams("code") == fams("given P") == set(FAMILIES)
  # As SFT records: a learnt prefix is trained on, a given one is context (role p, out of the
  # loss, as in the code_prefix probe's rollouts); output blocks are tool tokens.
  tok = load_tokenizer(str(shared_dir / "data" / "tokenizers" / "qwen2.5" / "derived"))
  with_prefix = next(e for e in coded if e.prefix)
  given = next(e for e in others if e.prefix_given)
  (r, g) = sft_records(tok, "plain", [with_prefix, given], 0, 151643)
  n = len(tok.encode(with_prefix.prefix))
  assert r.roles[:n] == "m" * n and "t" in r.roles and r.text.startswith(CODE_PREFIX)
  assert g.roles[:n] == "p" * n and g.roles[n] == "m" and g.model_mask[:n] == [False] * n
  assert g.label == 1 and g.prompt_ids == sft_records(tok, "plain", [
      dataclasses.replace(given, prefix="", prefix_given=False)], 0, 151643)[0].prompt_ids
  for rec in (r, g):
    assert list(rec.token_ids[:n]) == tok.encode(CODE_PREFIX)  # the probe's tokens, a newline
    assert rec.text.startswith(CODE_PREFIX + "\nLet me compute it.")
  code_prompt = sft_records(tok, "plain", [next(e for e in others if e.mode == "code")], 0,
                            151643)[0]
  assert MODE_INSTRUCTIONS["code"] in tok.decode(code_prompt.prompt_ids)
