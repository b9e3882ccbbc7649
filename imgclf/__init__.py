"""imgclf: from a folder of labelled images to a trained, evaluated, deployed classifier."""

__version__ = "0.1.0"
