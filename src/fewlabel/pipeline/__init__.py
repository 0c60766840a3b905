"""What ``train`` and ``curve`` share: data in, one split plan (a group-aware test hold-out), a
strategy's encoder prepared on the pool only, one fine-tuning and its test metrics.

* ``pipeline.data`` — catalog, copies merged, the plan, preprocessing, pretraining inputs;
* ``pipeline.encoders`` — strategy specs, encoders built or prepared, the "what did it see" guards;
* ``pipeline.fit`` — one cell: fine-tune, score the test set, the model record.
"""

from fewlabel import strategies as _registry
from fewlabel.data.catalog import without_classes
from fewlabel.data.copies import merge_duplicates
from fewlabel.pipeline.data import (
    MIN_PER_CLASS_FOR_VALIDATION,
    SEGMENTATION_VAL_FRACTION,
    PreparedData,
    PretrainInputs,
    add_draw,
    dropped_note,
    prepare_data,
    pretrain_pools,
)
from fewlabel.pipeline.encoders import (
    StrategySpec,
    build_encoder,
    check_encoder_file,
    default_spec,
    encoder_data_notes,
    encoder_record,
    prepare_strategy,
)
from fewlabel.pipeline.fit import CellResult, finetune_config_for, fit_cell, model_config, split_labelled

# Kept for callers of earlier versions: the registry (``fewlabel.strategies``) is the source.
STRATEGIES = _registry.NAMES
PRETRAINED = _registry.PREPARED

__all__ = [
    "MIN_PER_CLASS_FOR_VALIDATION", "PRETRAINED", "SEGMENTATION_VAL_FRACTION", "STRATEGIES", "CellResult",
    "PreparedData", "PretrainInputs", "StrategySpec", "add_draw", "build_encoder", "check_encoder_file",
    "default_spec", "dropped_note", "encoder_data_notes", "encoder_record", "finetune_config_for",
    "fit_cell", "merge_duplicates", "model_config", "prepare_data", "prepare_strategy", "pretrain_pools",
    "split_labelled", "without_classes",
]
