"""What fibml's commands do, as plain functions of a Hydra config: one module per command.

train (train.py), evaluate (evaluate.py) with its classical baselines (baselines), predict
(predict.py) and translate (predict.py task=translate); common and scoring hold what several of
them share. The scripts compose the config and call these; tests call them directly. Nothing
below this package imports it (docs/architecture.md).
"""
