"""Scores and what they mean: AS-norm (:mod:`.norm`), verification and identification metrics
(:mod:`.metrics`), and evaluation and calibration on labelled recordings (:mod:`.evaluate`).
"""
