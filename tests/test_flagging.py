"""One flag mechanism: every config field is a flag of its own name, built the same way for the
run, its optimizer and loss, the evaluation and the demo; old run directories still resume."""

import dataclasses
import json

import pytest
from absl import flags

from autocode_jax import flagging
from autocode_jax.em import config as config_lib
from autocode_jax.em import flags as em_flags
from autocode_jax.em.config import RunConfig
from autocode_jax.eval.harness import EvalConfig
from autocode_jax.rollout.session import RolloutSettings
from autocode_jax.demo.driver import DemoConfig
from autocode_jax.training.optimizers import OptimizerConfig
from autocode_jax.training.step import LossConfig


def _fields(cls):
  out = []
  for f in dataclasses.fields(cls):
    if dataclasses.is_dataclass(f.default):
      out += _fields(type(f.default))
    elif f.name != "kind":  # LossConfig.kind is set by the run (RunConfig.algorithm)
      out.append(f.name)
  return out


RUN = {"run_dir": "r", "model_preset": "tiny-qwen2", "tokenizer_dir": "t"}
EVAL = {"model_dir": "m", "out_dir": "o"}


@pytest.mark.parametrize("cls, given", [(RunConfig, RUN), (EvalConfig, EVAL), (DemoConfig, {}),
                                        (OptimizerConfig, {}), (LossConfig, {}),
                                        (RolloutSettings, {})],
                         ids=lambda x: getattr(x, "__name__", ""))
def test_a_flag_per_field_of_the_same_name_and_default(cls, given):
  fv = flags.FlagValues()
  flagging.define_flags(cls, fv)
  assert list(fv) == _fields(cls)  # in declaration order
  assert sorted(fv) == sorted(_fields(cls))
  fv(["prog"] + [f"--{k}={v}" for k, v in given.items()])
  assert flagging.from_flags(cls, fv) == cls(**given)  # the flags' defaults are the fields'


def test_flags_reach_nested_fields_and_bad_values_name_the_flag():
  fv = flags.FlagValues()
  em_flags.define_flags(fv)
  fv(["train.py", "--run_dir=r", "--model_preset=tiny-qwen2", "--tokenizer_dir=t",
      "--adam_b2=0.95", "--lr_schedule=cosine", "--warmup_steps=3", "--loss_aggregation=seq_mean",
      "--eps_high=0.28", "--eval_modes=cot,auto"])
  cfg = em_flags.run_config(fv, check_paths=False)
  assert cfg.optimizer.adam_b2 == 0.95 and cfg.optimizer.lr_schedule == "cosine"
  assert cfg.loss.loss_aggregation == "seq_mean" and cfg.loss.eps_high == 0.28
  assert cfg.eval_modes == ("cot", "auto")
  fv["eps_low"].parse("1.5")
  with pytest.raises(flagging.ConfigError, match="^eps_low: must be in"):
    em_flags.run_config(fv, check_paths=False)
  fv["eps_low"].parse("0.2")
  fv["warmup_steps"].parse("2000")
  with pytest.raises(flagging.ConfigError, match="^total_steps: must exceed warmup_steps=2000"):
    em_flags.run_config(fv, check_paths=False)
  fv2 = flags.FlagValues()
  em_flags.define_flags(fv2)
  fv2(["train.py"])
  with pytest.raises(flagging.ConfigError, match="^run_dir: required"):
    em_flags.run_config(fv2, check_paths=False)


def test_training_and_evaluation_share_one_rollout_settings_record():
  """The sandbox, grader and vLLM flags are RolloutSettings' fields, defined once and held by
  both configs; a nested config's flags default to its holder's instance (evaluation gives
  vLLM 80% of a GPU, training 50%), and a bad value names the flag."""
  run_fields = {f.name for f in dataclasses.fields(RunConfig)}
  eval_fields = {f.name for f in dataclasses.fields(EvalConfig)}
  for f in dataclasses.fields(RolloutSettings):
    assert f.name not in run_fields and f.name not in eval_fields
  defaults = {}
  for cls, given in ((RunConfig, RUN), (EvalConfig, EVAL)):
    fv = flags.FlagValues()
    flagging.define_flags(cls, fv)
    defaults[cls] = fv["vllm_gpu_memory_utilization"].default
    fv(["prog"] + [f"--{k}={v}" for k, v in given.items()] + ["--sandbox_workers=3",
                                                              "--engine=vllm"])
    cfg = flagging.from_flags(cls, fv)
    assert cfg.rollout.sandbox_workers == 3 and cfg.rollout.engine == "vllm"
    assert cfg.rollout.vllm_gpu_memory_utilization == defaults[cls]
    fv["grade_timeout_s"].parse("0")
    with pytest.raises(flagging.ConfigError, match="^grade_timeout_s: must be positive"):
      flagging.from_flags(cls, fv)
  assert defaults == {RunConfig: 0.5, EvalConfig: 0.8}
  # A RunConfig check on a nested flag names that flag and its value.
  with pytest.raises(flagging.ConfigError, match=r"^vllm_gpu_memory_utilization: .*\(got 0.95\)"):
    RunConfig(**RUN, rollout=RolloutSettings(engine="vllm", vllm_gpu_memory_utilization=0.95))


@pytest.mark.parametrize("build, flag", [
    (lambda: RunConfig(**RUN, algorithm="ppo"), "algorithm"),
    (lambda: RunConfig(**RUN, template="alpaca"), "template"),
    (lambda: EvalConfig(**EVAL, template="alpaca"), "template"),
    (lambda: RolloutSettings(engine="tgi"), "engine"),
    (lambda: OptimizerConfig(lr_schedule="step"), "lr_schedule"),
    (lambda: LossConfig(ratio_level="batch"), "ratio_level"),
])
def test_a_value_outside_an_options_choices_is_refused_built_without_flags(build, flag):
  """flagging.check_choices: every config's enum fields, checked by one mechanism."""
  with pytest.raises(flagging.ConfigError, match=f"^{flag}: expected one of \\("):
    build()


def test_the_algorithm_decides_the_loss_in_one_place():
  base = RunConfig(run_dir="r", model_preset="tiny-qwen2", tokenizer_dir="t",
                   loss=LossConfig(ce_coef=0.7))
  assert (base.loss.kind, base.loss.ce_coef, base.loss.decision_term) == ("policy", 0.7, True)
  rl = dataclasses.replace(base, algorithm="rl")
  assert (rl.loss.kind, rl.loss.ce_coef, rl.loss.decision_term) == ("policy", 0.0, False)
  sft = dataclasses.replace(base, algorithm="sft")
  assert sft.loss.kind == "sft" and not sft.loss.decision_term
  assert dataclasses.replace(sft, algorithm="em").loss.kind == "policy"
  # The flags: rl gets ce_coef = 0 without being told (and refuses being told).
  fv = flags.FlagValues()
  em_flags.define_flags(fv)
  fv(["train.py", "--run_dir=r", "--model_preset=tiny-qwen2", "--tokenizer_dir=t",
      "--algorithm=rl"])
  assert em_flags.run_config(fv, check_paths=False).loss.ce_coef == 0.0


def test_a_config_json_of_the_former_field_names_resumes(tmp_path):
  cfg = RunConfig(run_dir="r", model_preset="tiny-qwen2", tokenizer_dir="t",
                  optimizer=OptimizerConfig(optimizer="lion", lr_schedule="linear", adam_b1=0.8,
                                            adam_b2=0.9, adam_eps=1e-6, warmup_steps=1),
                  loss=LossConfig(loss_aggregation="seq_mean"), corpus_code_share=0.3)
  old = json.loads(json.dumps(cfg.to_json()))
  renamed = {part: {v: k for k, v in table.items()} for part, table in config_lib.RENAMED.items()}
  for part, table in renamed.items():
    if part:
      old[part] = {table.get(k, k): v for k, v in old[part].items()}
    else:  # the run's own fields
      old = {table.get(k, k): v for k, v in old.items()}
  assert old["optimizer"]["name"] == "lion" and old["loss"]["aggregation"] == "seq_mean"
  assert old["synthetic_code_share"] == 0.3 and "corpus_code_share" not in old
  assert config_lib.config_from_json(old) == cfg
  assert config_lib.config_from_json(cfg.to_json()) == cfg
  old["optimizer"]["nesterov"] = True
  with pytest.raises(flagging.ConfigError, match="^optimizer.nesterov: not a field"):
    config_lib.config_from_json(old)
  # Before the rollout settings were one record, their fields were the run's own.
  cfg = RunConfig(run_dir="r", model_preset="tiny-qwen2", tokenizer_dir="t",
                  rollout=RolloutSettings(sandbox_workers=1, engine="vllm", vllm_kv_cache_mb=64))
  flat = cfg.to_json()
  flat.update(flat.pop("rollout"))
  assert flat["sandbox_workers"] == 1 and "rollout" not in flat
  assert config_lib.config_from_json(flat) == cfg
  retired = cfg.to_json()
  retired["rollout"]["tool_loop"] = "rounds"  # a setting since retired: dropped
  assert config_lib.config_from_json(retired) == cfg
  new = cfg.to_json()
  new["rollout_budget"] = 3
  with pytest.raises(flagging.ConfigError, match="^rollout_budget: not a field"):
    config_lib.config_from_json(new)


def test_bad_flags_exit_names_the_flag(capsys):
  with pytest.raises(SystemExit) as e:
    with flagging.bad_flags_exit("train.py"):
      RunConfig(run_dir="r", model_preset="tiny-qwen2", tokenizer_dir="t", top_p=2.0)
  assert e.value.code == 2
  assert capsys.readouterr().err.startswith("train.py: bad flag: --top_p: must be in (0, 1]")
