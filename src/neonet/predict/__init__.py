"""Inference with trained folds.

- :mod:`~neonet.predict.case` — ``neonet predict-case``: one new scan through NeoSeg, TLCR and the classifier;
- :mod:`~neonet.predict.ensemble` — a stage's folds as one averaged predictor;
- :mod:`~neonet.predict.overlay` — the picture of a predicted case.
"""
