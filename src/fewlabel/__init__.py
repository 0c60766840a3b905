"""fewlabel: medical image classifiers from tens of labels."""
__version__ = "0.1.0"
