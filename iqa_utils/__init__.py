"""iqa-kit: reproduce CSFIQA, LML-IQA and DEIQT (no-reference image quality assessment)."""
__version__ = "0.1.0"
