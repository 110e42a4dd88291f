"""M-step and loop helpers by hand: the batch schedule, the engine/trainer mismatch, behaviour
log-probs on disk, the iteration plan, resume checks; and the behaviour log-probs against a
direct model call."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from autocode_jax.em import loop, mstep
from autocode_jax.em.config import ConfigError, RunConfig, config_from_json, resume_conflicts
from autocode_jax.em.policy import Policy
from autocode_jax.models import load_tokenizer
from autocode_jax.models.transformer import forward
from autocode_jax.training.step import LossConfig
from train_fixtures import record


def test_batch_schedule_covers_each_record_once_per_epoch():
  n, bs = 10, 4
  per = mstep.steps_per_epoch(n, bs)
  assert per == 3
  epoch0 = np.concatenate([mstep.batch_indices(n, bs, 0, 2, j) for j in range(per)])
  assert len(epoch0) == 12 and sorted(set(epoch0)) == list(range(n))
  assert list(epoch0[10:]) == list(epoch0[:2])  # the last batch completed from the start
  epoch1 = np.concatenate([mstep.batch_indices(n, bs, 0, 2, j) for j in range(per, 2 * per)])
  assert sorted(set(epoch1)) == list(range(n)) and list(epoch1[:10]) != list(epoch0[:10])
  # A function of (seed, iteration, step) alone: what a resumed run replays.
  np.testing.assert_array_equal(mstep.batch_indices(n, bs, 0, 2, 4), epoch1[4:8])
  assert list(mstep.batch_indices(n, bs, 1, 2, 0)) != list(epoch0[:4])


def test_mismatch_over_model_tokens_only():
  recs = [record(token_ids=[1, 2, 3, 4], roles="pmmt", logprobs=[0.0, -1.0, -2.0, 0.0]),
          record(token_ids=[5], logprobs=[-0.5])]
  beh = [np.array([-9.0, -1.5, -2.0, -9.0], np.float32), np.array([-0.25], np.float32)]
  m = mstep.mismatch(recs, beh)
  assert m["model_tokens"] == 3
  assert m["logprob_mismatch_mean"] == pytest.approx((0.5 + 0.0 + 0.25) / 3)
  assert m["logprob_mismatch_max"] == pytest.approx(0.5)


def test_behaviour_round_trip(tmp_path):
  beh = [np.arange(3, dtype=np.float32), np.zeros(0, np.float32), np.ones(2, np.float32)]
  path = str(tmp_path / "behaviour.npz")
  mstep.save_behaviour(path, beh)
  back = mstep.load_behaviour(path)
  assert len(back) == 3 and all(np.array_equal(a, b) for a, b in zip(beh, back))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["behaviour.npz"]


def test_iteration_plan_cycles_over_epochs():
  queries = list(range(10))
  assert loop.iteration_plan(10, 4, 3) == 8
  stream = [q for it in range(8) for q in loop.iteration_queries(queries, it, 4, seed=0)]
  assert len(stream) == 32
  for e in range(3):
    assert sorted(stream[10 * e:10 * (e + 1)]) == queries  # each epoch sees every query once
  assert stream[:10] != stream[10:20]  # reshuffled per epoch


def test_resume_conflicts_name_the_field():
  a = RunConfig(run_dir="r", model_preset="tiny-qwen2", tokenizer_dir="t")
  b = dataclasses.replace(a, k=4, progress=False)
  assert resume_conflicts(a, b) == ["k: 8 -> 4"]
  assert resume_conflicts(a, config_from_json(a.to_json())) == []
  # A nested config's field is named by its flag.
  c = dataclasses.replace(a, rollout=dataclasses.replace(a.rollout, sandbox_workers=1))
  assert resume_conflicts(a, c) == ["sandbox_workers: 2 -> 1"]
  with pytest.raises(ConfigError, match="alpha"):
    dataclasses.replace(a, alpha=-1.0)
  with pytest.raises(ConfigError, match="branching"):
    dataclasses.replace(a, algorithm="rl", branching=True)
  with pytest.raises(ConfigError, match="algorithm.*kl_coef"):
    dataclasses.replace(a, algorithm="sft", loss=LossConfig(kl_coef=0.1))


def test_behaviour_logprobs_equal_a_direct_forward(shared_dir):
  tok = load_tokenizer(str(shared_dir / "data" / "tokenizers" / "qwen2.5" / "derived"))
  cfg = RunConfig(run_dir="r", model_preset="tiny-qwen2", tokenizer_dir="t", mesh_fsdp=2,
                  mesh_data=2, mesh_tensor=2, logprob_batch_size=4, length_multiple=16,
                  loss=LossConfig())
  policy = Policy.build(cfg, tok)
  assert policy.model_config.vocab_size >= tok.vocab_size
  rng = np.random.default_rng(0)
  recs = []
  for n_prompt, n_resp in ((5, 7), (3, 12), (9, 2), (4, 4), (6, 1)):
    recs.append(record(prompt_ids=rng.integers(0, 1000, n_prompt).tolist(),
                       token_ids=rng.integers(0, 1000, n_resp).tolist()))
  got = policy.behaviour_logprobs(recs)
  params = jax.device_get(nnx.split(policy.model())[1])
  graphdef = nnx.split(policy.model())[0]
  for r, lp in zip(recs, got):
    seq = np.array([r.prompt_ids + r.token_ids])
    logp = jax.nn.log_softmax(forward(graphdef, params, seq)[0])
    p = len(r.prompt_ids)
    want = [float(logp[p - 1 + j, t]) for j, t in enumerate(r.token_ids)]
    np.testing.assert_allclose(lp, want, atol=2e-5)


def test_metrics_jsonl_and_tensorboard(tmp_path):
  from autocode_jax.em.metrics import MetricsWriter, read_metrics
  w = MetricsWriter(str(tmp_path), tensorboard=True)
  w.write("mstep", 3, {"loss": 0.5, "hist": [1, 2]}, iteration=0)
  w.write("eval", 3, {"auto": {"accuracy": 0.25}}, iteration=0)
  w.close()
  recs = read_metrics(str(tmp_path))
  assert [(r["kind"], r["step"], r["iteration"]) for r in recs] == [("mstep", 3, 0), ("eval", 3, 0)]
  assert recs[0]["loss"] == 0.5 and recs[1]["auto"] == {"accuracy": 0.25}
  events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert len(events) == 1
  import struct
  from tensorboardX.proto import event_pb2
  data, tags = events[0].read_bytes(), []
  while data:  # TFRecord framing: length, crc, payload, crc
    (n,) = struct.unpack("<Q", data[:8])
    ev = event_pb2.Event.FromString(data[12:12 + n])
    tags += [(v.tag, v.simple_value, ev.step) for v in ev.summary.value]
    data = data[12 + n + 4:]
  assert tags == [("mstep/loss", 0.5, 3), ("eval/auto/accuracy", 0.25, 3)]


def test_kl_coef_trains_against_the_behaviour_policy(shared_dir, tmp_path):
  """--kl_coef > 0 runs through the M-step driver: the reference log-probs are the behaviour
  log-probs (pi_ref = the iteration's start weights), so the KL is 0 at the first step (up to
  float error) and grows as the policy moves."""
  from autocode_jax.training.checkpoint import Checkpointer
  tok = load_tokenizer(str(shared_dir / "data" / "tokenizers" / "qwen2.5" / "derived"))
  loss = LossConfig(ce_coef=0.0, kl_coef=0.5)
  cfg = RunConfig(run_dir=str(tmp_path), model_preset="tiny-qwen2", tokenizer_dir="t",
                  mesh_fsdp=2, mesh_data=2, mesh_tensor=2, train_batch_size=4,
                  m_step_epochs=3, length_multiple=16, logprob_batch_size=4, loss=loss)
  policy = Policy.build(cfg, tok)
  rng = np.random.default_rng(1)
  recs = [record(query_id=f"q{i % 2}", prompt_ids=rng.integers(0, 1000, 4).tolist(),
                 token_ids=rng.integers(0, 1000, 6).tolist(), advantage=float(i % 2) - 0.5)
          for i in range(4)]
  behaviour = policy.behaviour_logprobs(recs)
  batch = mstep.make_batch(recs, behaviour, range(4), policy.pad_id, 16, reference=True)
  np.testing.assert_array_equal(batch["ref_logprobs"], batch["old_logprobs"])
  seen = []
  ckpt = Checkpointer(str(tmp_path / "ckpt"), save_every=100, keep=1)
  mstep.run_mstep(policy, recs, behaviour, 0, 0, ckpt, lambda s, m: seen.append(m))
  ckpt.close()
  assert [len(seen), policy.step] == [3, 3]
  assert abs(seen[0]["kl"]) < 1e-6 and seen[0]["ratio_max"] == pytest.approx(1.0, abs=1e-5)
  assert seen[2]["kl"] > 1e-6  # the policy has moved away from pi_ref
  # kl_coef = 0: the batch needs no reference log-probs and the loss has no KL part.
  assert "ref_logprobs" not in mstep.make_batch(recs, behaviour, range(4), policy.pad_id, 16)


def test_export_in_the_compute_dtype_once_per_step(shared_dir, tmp_path):
  """A bf16 policy with fp32 master weights is exported in bf16, into one directory that each
  new export replaces whole; a second export at the same step writes nothing."""
  import json
  from autocode_jax.models.safetensors_io import SafetensorsReader
  cfg = RunConfig(run_dir=str(tmp_path / "run"), model_preset="tiny-qwen2",
                  tokenizer_dir=str(shared_dir / "data" / "tokenizers" / "qwen2.5" / "derived"),
                  data_dir=str(shared_dir / "data"), num_queries=4, param_dtype="float32",
                  dtype="bfloat16", mesh_fsdp=2, mesh_data=2, mesh_tensor=2, progress=False)
  runner = loop.Runner(cfg, log=lambda *_: None)
  try:
    runner._export()
    export = tmp_path / "run" / "hf_policy"
    first = export.stat().st_ino
    shards = sorted(export.glob("*.safetensors"))
    readers = [SafetensorsReader(str(p)) for p in shards]
    dtypes = {r.get(k).dtype.name for r in readers for k in r.keys()}
    assert dtypes == {"bfloat16"}
    assert json.loads((export / "config.json").read_text())["torch_dtype"] == "bfloat16"
    n = sum(x.size for x in jax.tree.leaves(runner.policy.state.params))
    assert sum(p.stat().st_size for p in shards) < 2 * n + 4096 * len(shards)  # 2 bytes a weight
    runner._export()  # same step: nothing written
    assert export.stat().st_ino == first
    runner.policy.state = runner.policy.state._replace(step=runner.policy.state.step + 1)
    runner._export()
    assert export.stat().st_ino != first  # replaced whole
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if "hf_policy" in p.name) == [
        "hf_policy"]  # no temporary or old directory left beside it
  finally:
    runner.close()
