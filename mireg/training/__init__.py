"""Training a recipe into a run folder: the run's data (``data``) and the feed that brings each
step's slices to the device (``feed``), everything a checkpoint holds (``state``, ``checkpoint``),
one optimisation step (``step``, ``supervised``), the learning-rate schedule (``schedule``), one
process or a ``torchrun`` job (``runtime``, ``distributed``), the epoch loop (``loop``), the run
folder (``rundir``), and a trained run evaluated into its reports (``evaluation``)."""
