"""The live pipeline that joins the stages, its snapshots for views, and its summary."""

from ctc_live.pipeline.live import Pipeline

__all__ = ["Pipeline"]
