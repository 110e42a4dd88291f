"""Reports of evaluation results: results.json, a Markdown table and PNG plots (matplotlib,
headless), for benchmark evaluations and for training runs (Figs. 4 and 5 of the paper: accuracy
per prompt mode over iterations, and the code-invocation histogram by training phase)."""

from __future__ import annotations

import os

import numpy as np

from autocode_jax.files import read_shards, write_json
from autocode_jax.grading.metrics import autocode_analysis


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _pct(x) -> str:
  return "-" if x is None else f"{100 * x:.1f}"


def markdown_table(results: dict[str, dict]) -> str:
  """One row per benchmark: accuracy per mode, union bound, selection accuracy, auto's code
  rate (percentages), and the responses the grader timed out / failed on."""
  modes = sorted({m for r in results.values() for m in r["accuracy"]})
  head = (["benchmark", "n"] + [f"{m} acc" for m in modes]
          + ["union bound", "selection acc", "auto code rate", "grader timeouts / errors"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, r in results.items():
    cells = [name, str(r.get("n_samples", 1))] + [_pct(r["accuracy"][m]) if m in r["accuracy"]
                                                  else "-" for m in modes]
    cells += [_pct(r.get("union_bound")), _pct(r.get("selection_accuracy")),
              _pct(r.get("code_rate", {}).get("auto")),
              f"{r.get('grader_timeouts', '-')} / {r.get('grader_errors', '-')}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot_accuracy_by_mode(results: dict[str, dict], path: str) -> None:
  plt = _plt()
  names = list(results)
  modes = sorted({m for r in results.values() for m in r["accuracy"]})
  fig, ax = plt.subplots(figsize=(max(4, 1.5 * len(names)), 3.5))
  width = 0.8 / max(len(modes), 1)
  for j, m in enumerate(modes):
    ax.bar(np.arange(len(names)) + j * width, [100 * results[n]["accuracy"].get(m, 0) for n in names],
           width, label=m)
  ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
  ax.set_ylabel("Pass@1 (%)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_invocation_hist(hists: dict[str, list[int]], path: str, title: str = "") -> None:
  """hists: label (a benchmark, or a training phase) -> counts over equal bins of [0, 1]."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for label, h in hists.items():
    edges = np.linspace(0, 1, len(h) + 1)
    ax.stairs(np.asarray(h) / max(sum(h), 1), edges, label=label)
  ax.set_xlabel("code-invocation rate per query")
  ax.set_ylabel("fraction of queries")
  if title:
    ax.set_title(title)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_series(panels: dict[str, dict[str, list[tuple]]], path: str, *, xlabel: str,
                ylabel: str, title: str = "") -> None:
  """Side-by-side panels (panel title -> label -> points), one line per label over (x, y)
  points, or (x, y, low, high) points drawn with the low-high band; integer x ticks, one legend
  below the axes."""
  plt = _plt()
  from matplotlib.ticker import MaxNLocator
  fig, axes = plt.subplots(1, len(panels), figsize=(max(6.5, 4.2 * len(panels)), 4.2),
                           sharey=True, squeeze=False)
  for ax, (name, series) in zip(axes[0], panels.items()):
    for j, (label, points) in enumerate(series.items()):
      pts = sorted(points)
      color = f"C{j}"
      ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=color, label=label)
      if pts and len(pts[0]) == 4:
        ax.fill_between([p[0] for p in pts], [p[2] for p in pts], [p[3] for p in pts],
                        color=color, alpha=0.15, linewidth=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    if name:
      ax.set_title(name, fontsize=9)
  axes[0][0].set_ylabel(ylabel)
  if title:
    fig.suptitle(title, fontsize=10)
  handles, labels = axes[0][0].get_legend_handles_labels()
  fig.tight_layout(rect=(0, 0.1, 1, 1))
  fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=len(labels),
             fontsize=8, frameon=False)
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)


def write_report(results: dict[str, dict], out_dir: str) -> None:
  write_json(os.path.join(out_dir, "results.json"), results)
  with open(os.path.join(out_dir, "summary.md"), "w") as f:
    f.write(markdown_table(results))
  plot_accuracy_by_mode(results, os.path.join(out_dir, "accuracy_by_mode.png"))
  hists = {n: r["invocation_hist"] for n, r in results.items() if "invocation_hist" in r}
  if hists:
    plot_invocation_hist(hists, os.path.join(out_dir, "invocation_hist.png"))


def eval_rows(run_dir: str) -> dict[int, list[dict]]:
  """The evaluation rows of a training run by iteration, from iterations/<i>/eval.p*.jsonl."""
  out = {}
  root = os.path.join(run_dir, "iterations")
  for name in sorted(os.listdir(root)):
    rows = read_shards(os.path.join(root, name), "eval")
    if rows:
      out[int(name)] = rows
  return out


def training_curves(run_dir: str, path: str) -> dict[int, dict]:
  """Fig. 4 for a training run: each evaluated iteration's accuracy per mode (and auto's code
  rate), from its iterations/<i>/eval.p*.jsonl; also returns the analyses by iteration."""
  by_it = {i: autocode_analysis(rows) for i, rows in eval_rows(run_dir).items()}
  plt = _plt()
  fig, ax = plt.subplots(figsize=(5, 3.5))
  its = sorted(by_it)
  for m in sorted({m for a in by_it.values() for m in a["accuracy"]}):
    ax.plot([i + 1 for i in its], [100 * by_it[i]["accuracy"].get(m, np.nan) for i in its],
            marker="o", label=f"{m} acc")
  if its and "auto" in by_it[its[0]]["code_rate"]:
    ax.plot([i + 1 for i in its], [100 * by_it[i]["code_rate"]["auto"] for i in its],
            linestyle="--", label="auto code rate")
  ax.set_xlabel("iteration")
  ax.set_ylabel("%")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return by_it
