"""The Python API: what the CLI does, callable with the same option names.

>>> import imgclf
>>> report = imgclf.inspect("photos/")            # doctest: +SKIP
>>> dataset = imgclf.load_dataset("photos/", val_fraction=0.2)  # doctest: +SKIP

Import the names from here (``imgclf.api``) or from ``imgclf``; the modules behind them hold one task each:
``datasets`` (inspect, preview_augment), ``training`` (train, tune, compare, ensemble), ``bundles`` (load,
evaluate, report, calibrate, export, explain), ``prediction``, ``embedding`` (embed, similar, the search index),
``matching`` (the catalogue), ``lifecycle`` (update, diff) and ``model_folders`` (promote, rollback, versions).
None is named like a function: importing it would replace that function here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgclf.api.bundles import calibrate, evaluate, explain, explain_files, export, load, models, report
from imgclf.api.datasets import InspectResult, inspect, preview_augment
from imgclf.api.embedding import DEFAULT_EMBEDDING_MODEL, build_index, embed, query_index, similar
from imgclf.api.lifecycle import diff, update
from imgclf.api.matching import catalog_matcher, evaluate_match, match, match_batch
from imgclf.api.model_folders import promote, rollback, versions
from imgclf.api.monitoring import monitor
from imgclf.api.prediction import check_distributable, predict, predict_in_parts
from imgclf.api.training import compare, ensemble, train, train_processes, tune
from imgclf.data.splits import load_dataset

if TYPE_CHECKING:  # the types the functions return, named as before (api.TuneResult); their modules load on use
    from imgclf.config import TrainConfig as TrainConfig
    from imgclf.deploy.calibration import Calibration as Calibration
    from imgclf.deploy.classifier import Classifier as Classifier
    from imgclf.deploy.explain import Explanation as Explanation
    from imgclf.deploy.export import ExportResult as ExportResult
    from imgclf.deploy.predict import PredictionRow as PredictionRow
    from imgclf.deploy.predict_parts import PartsSummary as PartsSummary
    from imgclf.embeddings.embedder import FileEmbeddings as FileEmbeddings
    from imgclf.embeddings.index import Neighbour as Neighbour
    from imgclf.embeddings.index import SimilarityIndex as SimilarityIndex
    from imgclf.embeddings.match_batch import BatchSummary as BatchSummary
    from imgclf.embeddings.match_evaluation import MatchEvaluation as MatchEvaluation
    from imgclf.embeddings.suggest import CatalogMatcher as CatalogMatcher
    from imgclf.embeddings.suggest import Suggestion as Suggestion
    from imgclf.engines.callbacks import Callback as Callback
    from imgclf.evaluation.evaluate import Evaluation as Evaluation
    from imgclf.lifecycle.diff import RunDiff as RunDiff
    from imgclf.lifecycle.promotion import Promotion as Promotion
    from imgclf.lifecycle.promotion import VersionInfo as VersionInfo
    from imgclf.lifecycle.update import UpdateResult as UpdateResult
    from imgclf.models import ModelInfo as ModelInfo
    from imgclf.training import TrainResult as TrainResult
    from imgclf.workflows.comparison import Comparison as Comparison
    from imgclf.workflows.ensemble import EnsembleResult as EnsembleResult
    from imgclf.workflows.tune import TuneResult as TuneResult

__all__ = ["DEFAULT_EMBEDDING_MODEL", "InspectResult", "build_index", "calibrate", "catalog_matcher",
           "check_distributable", "compare", "diff", "embed", "ensemble", "evaluate", "evaluate_match", "explain",
           "explain_files", "export", "inspect", "load", "load_dataset", "match", "match_batch", "models", "monitor",
           "predict", "predict_in_parts", "preview_augment", "promote", "query_index", "report", "rollback", "similar",
           "train", "train_processes", "tune", "update", "versions"]
