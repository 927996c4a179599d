"""Analysis of zero-shot segmentation results: tables, figures, report (imports nothing heavy)."""
