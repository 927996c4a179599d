"""alignzeg-bench: AlignZeg (Ge et al., ECCV 2024, arXiv 2404.05667) and zero-shot segmentation baselines.

Importing this package is cheap on purpose: it pulls in neither mmseg nor open_clip. mmseg-facing
modules register themselves when configs load them through ``custom_imports``
(``alignzeg.mmseg_modules``).
"""

__version__ = "0.1.0"
