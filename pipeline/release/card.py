"""Dataset card (README.md) with YAML front matter that `datasets.load_dataset(<dir>)` reads offline."""

from __future__ import annotations

import re
from typing import Any

import yaml

from pipeline.release.schema import INFIR_COLUMNS, SPLITS

LENGTHS_PLOT = "plots/lengths.png"
REJECTIONS_PLOT = "plots/rejections.png"

CITATION = """@misc{zhuang2025betterinstructionfollowingretrieval,
      title={Towards Better Instruction Following Retrieval Models},
      author={Yuchen Zhuang and Aaron Trinh and Rushi Qiang and Haotian Sun and Chao Zhang and Hanjun Dai and Bo Dai},
      year={2025},
      eprint={2505.21439},
      archivePrefix={arXiv},
      primaryClass={cs.CL},
      url={https://arxiv.org/abs/2505.21439},
}"""

COLUMN_DOC = {
    "query_positive": "Q+, the source query",
    "instruction_positive": "I+, an instruction that narrows Q+; P+ satisfies Q+ and I+",
    "document_positive": "P+, the source's judged positive passage",
    "instruction_negative": "I-, I+ minimally changed so that P+ no longer satisfies it",
    "hard_negative_document_1": "HN1, satisfies Q+ and I- but not Q+ and I+",
    "query_negative": "Q-, Q+ minimally changed so that P+ no longer answers it",
    "hard_negative_document_2": "HN2, satisfies Q- and I+ but not Q+ and I+",
}


def size_category(n: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")]
    for bound, label in bounds:
        if n < bound:
            return label
    return "100M<n<1B"


def front_matter(manifest: dict[str, Any]) -> dict[str, Any]:
    splits = [s for s in SPLITS if manifest["splits"].get(s, {}).get("rows", 0) > 0]
    configs = [
        {
            "config_name": "default",
            "data_files": [{"split": s, "path": f"data/{s}-*"} for s in splits],
        }
    ]
    st = manifest.get("st_export")
    if st:
        configs.append(
            {
                "config_name": "triplets",
                "data_files": [{"split": f["split"], "path": f["path"]} for f in st["files"]],
            }
        )
    return {
        "pretty_name": f"{manifest['name']} {manifest['version']} (InF-IR style instruction-following retrieval corpus)",
        "license": manifest.get("license") or "other",
        # The Hub reads these two for a custom licence (`license: other`).
        **{k: manifest[k] for k in ("license_name", "license_link") if manifest.get(k)},
        "language": ["en"],
        "task_categories": ["text-retrieval"],
        "task_ids": ["document-retrieval"],
        "size_categories": [size_category(manifest["rows"])],
        "tags": ["instruction-following", "information-retrieval", "hard-negatives", "synthetic", "inf-ir"],
        "configs": configs,
    }


def _plot(manifest: dict[str, Any], title: str, path: str) -> str:
    """The image, or why there is none (the core install has no matplotlib: `pip install infir[plots]`)."""
    skipped = manifest.get("plots_skipped")
    return f"_{title}: plot not drawn ({skipped})._" if skipped else f"![{title}]({path})"


def _fmt_rate(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _cell(text: Any, limit: int = 400) -> str:
    s = "" if text is None else str(text)
    s = re.sub(r"\s+", " ", s).strip()
    if len(s) > limit:
        s = s[: limit - 1].rstrip() + "…"
    return s.replace("|", "\\|")


def _kv(d: dict[str, Any] | None) -> str:
    if not d:
        return "n/a"
    return ", ".join(f"{k}: `{v}`" for k, v in sorted(d.items()))


def _training_section(manifest: dict[str, Any]) -> list[str]:
    """How to train on the release: the `triplets` config, or the full table's columns by name."""
    st = manifest.get("st_export")
    lines = ["## Training", ""]
    if not st:
        return lines + [
            "This release was written without the `triplets` config. Training uses three (text, passage) pairs "
            "per row: (Q+ I+ -> P+), (Q+ I- -> HN1), (Q- I+ -> HN2); each pair's passage is a hard negative of "
            "the other two. Select the columns by name: the default config also holds list-valued provenance "
            "columns that sentence-transformers cannot take.",
            "",
        ]
    return lines + [
        "Train on the `triplets` config. Its columns are `anchor, positive, negative_1, negative_2`, in that "
        "order (sentence-transformers' MultipleNegativesRankingLoss reads them by position), three rows per "
        "corpus row: (Q+ I+ -> P+ | HN1, HN2), (Q+ I- -> HN1 | P+, HN2), (Q- I+ -> HN2 | P+, HN1). The "
        f"anchor is the query text already formatted with the template `{st['template']}`; use the same "
        "template for queries at evaluation time.",
        "",
        "```python",
        "from datasets import load_dataset",
        "from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, "
        "SentenceTransformerTrainingArguments, losses",
        "from sentence_transformers.training_args import BatchSamplers",
        "",
        'train = load_dataset("<this repo or directory>", "triplets")["train"]',
        'model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")',
        "args = SentenceTransformerTrainingArguments(",
        '    output_dir="out", num_train_epochs=1, per_device_train_batch_size=32,',
        "    batch_sampler=BatchSamplers.NO_DUPLICATES,  # a row's P+ is also a negative of its other two pairs",
        ")",
        "SentenceTransformerTrainer(model=model, args=args, train_dataset=train,",
        "                           loss=losses.MultipleNegativesRankingLoss(model)).train()",
        "```",
        "",
        "The default config holds every column InF-IR's training code (InF_Embed) reads, under the same "
        "names; that code only loads its own Hub dataset ids, so it needs a one-branch change to its data "
        "loader to read this dataset (positive passage column: `document_positive`).",
        "",
    ]


def _intro_section(manifest: dict[str, Any]) -> list[str]:
    """Title, what a row is, and how to load the full table."""
    return [
        f"# {manifest['name']} {manifest['version']}",
        "",
        "An instruction-following retrieval training corpus in the format of "
        "[InF-IR](https://arxiv.org/abs/2505.21439). Each row is one positive (query, instruction, passage) "
        "triplet with two poisoned negatives: an instruction changed so the positive passage no longer satisfies "
        "it (with a passage that does), and a query changed the same way. The seven InF-IR columns keep the "
        "released InF-IR dataset's names and come first in the default config.",
        "",
        "```python",
        "from datasets import load_dataset",
        'ds = load_dataset("<this repo or directory>")  # the full table; splits: '
        + ", ".join(s for s in SPLITS if manifest["splits"].get(s, {}).get("rows", 0) > 0),
        "```",
        "",
    ]


def _columns_section() -> list[str]:
    lines = [
        "## Columns",
        "",
        "| column | meaning |",
        "|---|---|",
    ]
    lines += [f"| `{c}` | {COLUMN_DOC[c]} |" for c in INFIR_COLUMNS]
    return lines + [
        "| `id`, `source`, `query_id`, `passage_id` | provenance: stable row id (content hash), source corpus, source ids |",
        "| `mined_negatives` | retrieved candidate negatives (passage_id, text, score, rank, method) |",
        "| `verdicts` | the judge's per-check verdicts (check, passed, reason) |",
        "| `generator_model`, `judge_model`, `prompt_generate`, `prompt_poison`, `prompt_judge` | models and prompt versions (content hashes) |",
        "| `split` | train / validation / test, assigned by query id (no query appears in two splits) |",
        "",
    ]


def _build_section(manifest: dict[str, Any]) -> list[str]:
    """Provenance (sources, models, prompts, code, spend, split) and the judge's checks."""
    lines = [
        "## How it was built",
        "",
        f"- Source corpus: {', '.join(f'`{s}`' for s in manifest.get('sources', [])) or 'n/a'}",
        f"- Models: {_kv(manifest.get('models'))}",
        f"- LLM backend: `{manifest.get('backend') or 'n/a'}`",
        f"- Prompt versions (sha256 prefixes): {_kv(manifest.get('prompt_hashes'))}",
        f"- Code version: `{manifest.get('code_version')}`",
        f"- LLM usage: {manifest.get('llm_calls', 0)} calls, {manifest['tokens'].get('prompt', 0)} prompt + "
        f"{manifest['tokens'].get('completion', 0)} completion tokens, cost ${manifest.get('cost_usd', 0.0):.4f}",
        f"- Split: `{manifest['split']['method']}` with seed {manifest['split']['seed']} and ratios "
        f"{manifest['split']['ratios']} (train, validation, test)",
        "",
        "Pipeline: source (query, positive passage) pairs -> an LLM writes I+ -> hard negatives are mined from the "
        "collection and I- / Q- are written by minimally poisoning I+ / Q+, with HN1 / HN2 chosen to fit them -> "
        "a judge model checks every candidate row; a row is accepted only if every check passes:",
        "",
    ]
    lines += [f"- `{c}`" for c in manifest["checks"]] or ["- (no checks recorded)"]
    return lines + [""]


def _statistics_section(manifest: dict[str, Any]) -> list[str]:
    """Counts, rows per split, pass rate per check and text lengths, each table with its plot."""
    counts = manifest["counts"]
    lines = [
        "## Statistics",
        "",
        f"Candidates {counts['candidates']}, accepted {counts['accepted']}, rejected {counts['rejected']} "
        f"(acceptance rate {_fmt_rate(counts.get('acceptance_rate'))}).",
        "",
        "| split | rows | queries | shards |",
        "|---|---:|---:|---:|",
    ]
    for s in SPLITS:
        info = manifest["splits"].get(s, {"rows": 0, "queries": 0, "shards": 0})
        lines.append(f"| {s} | {info['rows']} | {info['queries']} | {info['shards']} |")
    lines += [
        "",
        "Judge checks (share of candidates passing each check):",
        "",
        "| check | failed | pass rate |",
        "|---|---:|---:|",
    ]
    for c in manifest["checks"]:
        lines.append(f"| `{c}` | {counts['failures'].get(c, 0)} | {_fmt_rate(counts['pass_rate'].get(c))} |")
    lines += [
        "",
        _plot(manifest, "Rejection reasons per check", REJECTIONS_PLOT),
        "",
        "Length of each text column in words:",
        "",
        "| column | min | median | mean | max |",
        "|---|---:|---:|---:|---:|",
    ]
    for c, d in manifest["lengths"].items():
        lines.append(f"| `{c}` | {d['min']} | {d['median']} | {d['mean']} | {d['max']} |")
    return lines + ["", _plot(manifest, "Length distributions", LENGTHS_PLOT), ""]


def _examples_section(examples: list[dict[str, Any]]) -> list[str]:
    """One table per example row, its InF-IR columns only (cells flattened and cut, see `_cell`)."""
    lines = ["## Examples", ""]
    for i, row in enumerate(examples, 1):
        lines.append(f"### Example {i} (`{row.get('id')}`, {row.get('split')})")
        lines.append("")
        lines.append("| column | value |")
        lines.append("|---|---|")
        lines += [f"| `{c}` | {_cell(row.get(c))} |" for c in INFIR_COLUMNS]
        lines.append("")
    return lines


AUDIT_STRATA = {
    "accepted": "accepted (the judge's precision)",
    "rejected_judge": "rejected by the judge",
    "rejected_first_judge": "rejected by the cascade's first judge",
    "rejected_filter": "rejected by a filter",
}


def _share(s: dict[str, Any] | None) -> str:
    """"93.0% [85.6%, 96.7%] (93/100)": share judged valid, Wilson 95% interval, counts."""
    if not s or s.get("share") is None:
        return "n/a" if not s else f"n/a ({s.get('valid', 0)}/{s.get('n', 0)})"
    interval = "" if s.get("low") is None or s.get("high") is None else f" [{s['low']:.1%}, {s['high']:.1%}]"
    counts = f" ({s['valid']}/{s['n']})" if "n" in s else ""
    return f"{s['share']:.1%}{interval}{counts}"


def _rows(estimate: dict[str, Any]) -> str:
    n = estimate.get("population")
    return "rows" if n is None else f"{n:,} rows"


def _audit_section(manifest: dict[str, Any]) -> list[str]:
    """The human audits of the run (`infir audit`), or that none was made: the judge's figures above
    are the judge's own word, and a reader should know whether anyone checked them."""
    audits = manifest.get("audit") or []
    lines = ["## Human audit", ""]
    if not audits:
        return lines + [
            "No human audit was made: every quality figure on this card comes from the LLM judge that built the "
            "corpus. `infir audit` samples rows for people to label and measures the judge's precision.",
            "",
        ]
    for a in audits:
        lines += [
            f"Audit `{a['name']}`: {a['labelled']} of {a['sample_size']} sampled rows labelled by "
            f"{a['annotators']} annotator(s). Shares are of labelled rows people judged valid, with Wilson 95% "
            "intervals.",
            "",
            f"- Judge's precision (accepted rows judged valid): {_share(a['precision'])}",
            f"- Estimated share of valid rows among the {_rows(a['reweighted_valid_share'])} of the sampled strata "
            f"(reweighted by the sampling weights): {_share(a['reweighted_valid_share'])}",
            "",
            "| stratum | judged valid by people |",
            "|---|---|",
        ]
        lines += [f"| {AUDIT_STRATA.get(s, s)} | {_share(v)} |" for s, v in a["strata"].items()]
        lines.append("")
    return lines


def _limitations_section() -> list[str]:
    return [
        "## Limitations",
        "",
        "- Instructions, poisoned instructions and poisoned queries are machine-written; the judge is an LLM and "
        "its verdicts can be wrong, so some rows may still be noisy or ambiguous.",
        "- Hard negatives come from the source collection; unjudged relevant passages (false negatives) can remain "
        "despite exclusion of every judged positive.",
        "- English only; topics and styles follow the source corpus and inherit its biases and license terms.",
        "- Acceptance rates depend on the models, prompts and backend listed above; the offline backend produces "
        "deterministic placeholder text for testing only.",
        "",
    ]


def _files_section() -> list[str]:
    return [
        "## Files",
        "",
        "`data/<split>-NNNNN-of-NNNNN.parquet` (zstd; the default config), `triplets/<split>.parquet` (the "
        "`triplets` config, when written), `manifest.json` (sha256 and row count of every shard, "
        "config, models, prompt hashes, tokens and cost), `plots/`. A copy is intact when every shard's sha256 and "
        "row count match the manifest.",
        "",
    ]


def _citation_section() -> list[str]:
    return [
        "## Citation",
        "",
        "This corpus follows the construction of InF-IR:",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]


def render_card(manifest: dict[str, Any], examples: list[dict[str, Any]]) -> str:
    """Full README.md text; deterministic for a given manifest (created_at is not used)."""
    meta = yaml.safe_dump(front_matter(manifest), sort_keys=False, allow_unicode=True, default_flow_style=False)
    lines: list[str] = ["---", meta.rstrip("\n"), "---", ""]
    lines += _intro_section(manifest)
    lines += _training_section(manifest)
    lines += _columns_section()
    lines += _build_section(manifest)
    lines += _statistics_section(manifest)
    lines += _audit_section(manifest)
    lines += _examples_section(examples)
    lines += _limitations_section()
    lines += _files_section()
    lines += _citation_section()
    return "\n".join(lines)


def parse_front_matter(text: str) -> dict[str, Any]:
    """YAML front matter of a card; raises ValueError if absent or not a mapping."""
    if not text.startswith("---\n"):
        raise ValueError("no YAML front matter (file must start with '---')")
    end = text.find("\n---\n", 4)
    if end < 0:
        raise ValueError("unterminated YAML front matter")
    data = yaml.safe_load(text[4:end])
    if not isinstance(data, dict):
        raise ValueError("YAML front matter is not a mapping")
    return data


def linked_files(text: str) -> list[str]:
    """Relative files linked from the card body (images and local links)."""
    out = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if "://" in target or target.startswith("#"):
            continue
        out.append(target)
    return sorted(set(out))
