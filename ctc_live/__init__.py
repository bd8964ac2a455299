"""ctc-live: real-time label-free detection and sorting of circulating tumour cells."""

__version__ = "0.1.0"
