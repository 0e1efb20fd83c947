"""Pieces shared by every stage: naming, records passed between nodes."""
