"""Zero-shot segmentation metrics.

``confusion_matrix`` / ``metrics_from_confusion`` are plain numpy and cheap to import. The mmseg metric
``ZeroShotIoUMetric`` is loaded lazily on first access, so importing this package does not import
mmseg (or mmcv). Configs register the metric by importing its module:
``custom_imports = dict(imports=["alignzeg.evaluation.metric"], allow_failed_imports=False)``
(importing ``alignzeg.evaluation`` alone does not register it).
"""
from alignzeg.evaluation.confusion import (METRIC_KEYS, confusion_matrix, format_table, harmonic_iou,
                                           metrics_from_confusion)

__all__ = ["METRIC_KEYS", "confusion_matrix", "format_table", "harmonic_iou", "metrics_from_confusion",
           "ZeroShotIoUMetric"]


def __getattr__(name: str):
    if name == "ZeroShotIoUMetric":
        from alignzeg.evaluation.metric import ZeroShotIoUMetric

        return ZeroShotIoUMetric
    raise AttributeError(f"module 'alignzeg.evaluation' has no attribute {name!r}")
