"""Register every mmseg-facing module of the suite with MMSegmentation's registries.

Configs load this package with ``custom_imports = dict(imports=['alignzeg.mmseg_modules'],
allow_failed_imports=False)``. Every import below is unconditional: a missing or broken module fails
here, loudly, instead of surfacing later as "X is not in the registry". Baselines register from
``baselines.mmseg_modules`` (their configs import both packages).
"""
from __future__ import annotations

import alignzeg.datasets  # noqa: F401  DATASETS: ZeroShotSegDataset and subclasses
import alignzeg.engine.hooks  # noqa: F401  HOOKS: ZeroShotMetaHook (+ checkpoint loader for torch >= 2.6)
import alignzeg.engine.optim  # noqa: F401  OPTIM_WRAPPER_CONSTRUCTORS: GroupedOptimWrapperConstructor
import alignzeg.evaluation.metric  # noqa: F401  METRICS: ZeroShotIoUMetric
from alignzeg.mmseg_modules.backbone import CLIPBackbone
from alignzeg.mmseg_modules.heads import MaskCLIPHead
from alignzeg.mmseg_modules.segmentor import ZeroShotEncoderDecoder

import alignzeg.mmseg_modules.alignzeg_head  # noqa: E402,F401,I001  MODELS: AlignZeg head adapter

__all__ = ["CLIPBackbone", "MaskCLIPHead", "ZeroShotEncoderDecoder"]
