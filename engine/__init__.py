"""The training engine above the model library: it turns flags into models (`factory`), trains
(`train`, `optim`, `precision`), evaluates (`evaluate`, `metrics`), keeps runs (`checkpoint`,
`logger`) and spans processes (`distributed`). `main.py` tells the story of a run with these.

Imports run downwards only: the engine uses `modules` (the model library), `dataloaders` and
`params`; nothing below imports the engine.
"""
