"""Zero-shot segmentation metrics.

``confusion_matrix`` / ``metrics_from_confusion`` are plain numpy and cheap to import. The mmseg metric
``ZeroShotIoUMetric`` is loaded lazily on first access, so importing this package does not import
mmseg (or mmcv).
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
