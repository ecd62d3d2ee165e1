"""Inference with trained folds.

- :mod:`~neonet.predict.pipeline` — one scan through NeoSeg, TLCR and each classifier's folds (``predict-case``,
  ``evaluate``);
- :mod:`~neonet.predict.case` — ``neonet predict-case``: one new scan through NeoSeg, TLCR and the classifier;
- :mod:`~neonet.predict.batch` — ``predict-case`` on a folder or CSV of scans (``summary.csv``);
- :mod:`~neonet.predict.membership` — is a scan a case of the experiment's cohort;
- :mod:`~neonet.predict.ood` — the training cohort's fingerprint and a new scan's out-of-distribution flags;
- :mod:`~neonet.predict.ensemble` — a stage's folds as one averaged predictor;
- :mod:`~neonet.predict.overlay` — the picture of a predicted case.
"""
