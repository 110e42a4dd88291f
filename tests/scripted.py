"""A scripted stand-in for a rollout engine, used beside the real JaxSampler in the tool-loop and
E-step tests: it plays chosen texts token by token, stopping at stop tokens like a real engine,
so that labels, rewards and tool statuses are known in advance."""

from autocode_jax.rollout import Completion

EOS = 151643


class ScriptedPolicy:
  """choose(context_text, index, params) -> the script of a new row; `index` counts the new rows
  seen with that same context. A continuing row (its context extends a row's context plus what
  was emitted, e.g. by tool output) resumes its own script."""

  def __init__(self, tok, choose):
    self.tok, self.choose = tok, choose
    self.rows = {}        # context so far -> [(script ids, cursor)], one per row in that state
    self.new_rows = {}    # starting context -> rows started from it
    self.calls = 0

  def _find(self, ctx):
    best = None
    for key in self.rows:
      if len(key) <= len(ctx) and ctx[:len(key)] == key and (best is None or len(key) > len(best)):
        best = key
    return best

  def generate(self, prompts, params, seeds=None):
    self.calls += 1
    out = []
    for ctx in prompts:
      ctx = tuple(ctx)
      key = self._find(ctx)
      if key is None:
        index = self.new_rows.get(ctx, 0)
        self.new_rows[ctx] = index + 1
        text = self.choose(self.tok.decode(list(ctx)), index, params)
        ids, start = self.tok.encode(text) + [EOS], 0
      else:
        ids, start = self.rows[key].pop(0)
        if not self.rows[key]:
          del self.rows[key]
      end, reason = start, "length"
      while end < len(ids) and end - start < params.max_tokens:
        end += 1
        if ids[end - 1] in params.stop_token_ids:
          reason = "eos"
          break
      emitted = tuple(ids[start:end])
      self.rows.setdefault(ctx + emitted, []).append((ids, end))
      out.append([Completion(emitted, tuple([-0.5] * len(emitted)), reason)])
    return out
