"""Benchmark evaluation with the original Qwen2-Audio protocols.

- `qwen-audio eval run` -> `runner.run_eval`: predict a task with `qwen_audio.LLM` or any
  OpenAI-compatible server (resumable, data parallel under torchrun), then score and report.
- `qwen-audio eval score` -> `cli.score_file`: re-score a predictions file (`gt`, `response`,
  `source`); `score.score_predictions(task, rows)` is the function behind it.
- `qwen-audio eval tasks`: the tasks, where their data goes and what their rows look like.

Modules: tasks (registry, prompts, published numbers), data (reading rows), normalize and
zh_normalize (the original text clean-up and normalizers), metrics (WER/CER, BLEU, accuracy),
judge (AIR-Bench chat scoring), predictors (engine or server), score (scores per source, no
printing), report (tables, metrics.json, report.md, report.png), cli (argument parsing and the
`eval score` command).
"""
