"""NeoNet: perineural-invasion prediction from 3D MRI, as a Lightning experiment suite."""

__version__ = "0.1.0"
