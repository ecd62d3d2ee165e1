"""Running stages: the ``neonet`` command line, the Lightning CLI, the fold loop and what keeps it safe.

- :mod:`~neonet.run.cli` — one jsonargparse dispatcher for every verb;
- :mod:`~neonet.run.lightning_cli` — ``neonet fit``/``validate``/``test`` of one stage for one fold;
- :mod:`~neonet.run.cv` — every fold of a stage, one process each, then the stage's cross-fold hook;
- :mod:`~neonet.run.fold_lock`, :mod:`~neonet.run.atomic`, :mod:`~neonet.run.csv_log`,
  :mod:`~neonet.run.callbacks` — one writer per fold, no half-written file, resumable metrics;
- :mod:`~neonet.run.provenance`, :mod:`~neonet.run.config_drift` — is an output still current?
- :mod:`~neonet.run.reload` — the one safe way to rebuild a trained fold.
"""
