"""Datasets, the paper's training protocol, reports and evaluation for the classifier."""
