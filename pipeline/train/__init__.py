"""Contrastive training on an InF-IR release and instruction-following evaluation.

Heavy imports (torch, sentence-transformers) happen inside the functions that need them, so
importing this package stays cheap for the CLI.
"""

from pipeline.train.compare import compare
from pipeline.train.data import DEFAULT_TEMPLATE, build_training_pairs, format_query, load_release_split
from pipeline.train.evaluate import evaluate_beir, evaluate_release
from pipeline.train.followir import evaluate_followir
from pipeline.train.metrics import followir_pmrr, ir_metrics, pmrr_pair, rank_in_scores, ranks_of_targets
from pipeline.train.settings import TrainSettings, default_model_path
from pipeline.train.trainer import TrainResult, load_model, train

__all__ = [
    "DEFAULT_TEMPLATE",
    "TrainSettings",
    "TrainResult",
    "train",
    "load_model",
    "default_model_path",
    "load_release_split",
    "build_training_pairs",
    "format_query",
    "evaluate_release",
    "evaluate_beir",
    "evaluate_followir",
    "compare",
    "pmrr_pair",
    "ir_metrics",
    "followir_pmrr",
    "rank_in_scores",
    "ranks_of_targets",
]
