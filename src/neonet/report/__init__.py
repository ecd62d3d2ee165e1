"""Reporting across folds and stages.

- :mod:`~neonet.report.cls_report` — ``neonet report``: the classification table, DeLong, figures;
- :mod:`~neonet.report.stats` — AUC intervals, DeLong, calibration;
- :mod:`~neonet.report.summary` — a stage's cross-fold summary (per-fold and pooled);
- :mod:`~neonet.report.wandb_summary` — the ``<stage>-cv`` summary run in W&B;
- :mod:`~neonet.report.page` — the experiment page ``reports/index.html`` (:mod:`~neonet.report.browser` opens it headless).
- :mod:`~neonet.report.figures` — the pictures in ``reports/`` (training curves, overlays, patch grids, per-fold plots).
"""
