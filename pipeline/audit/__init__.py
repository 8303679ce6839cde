"""`infir audit`: people label a stratified sample of a run's rows, and the judge's precision
becomes a measured number (docs/audit.md).

- `sample.py`: the seeded, stratified sample (`runs/<run>/audit/<name>/sample.json`);
- `questions.py`: the four questions and the judge's checks each stands for;
- `labels.py`: the append-only answers (`labels.jsonl`), read back with cut lines and repeats noted;
- `server.py`, `page.py`, `page.js`, `page.css`: the labelling page on 127.0.0.1;
- `stats.py`, `score.py`: Wilson intervals, Cohen's kappa, the reweighted share (`audit.json`);
- `command.py`: the CLI's two actions.
"""
