"""Cohort data: case manifests, validation, splits, NIfTI io, transforms and the phantom cohort."""
