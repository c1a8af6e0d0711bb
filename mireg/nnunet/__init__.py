"""nnU-Net v2 as a method beside mireg's (the ``nnunet`` extra): trained on a recipe's split and
budget, scored by mireg's evaluator (:mod:`mireg.nnunet.workflow`); ``trainers/`` holds the trainer
class nnU-Net loads from ``nnUNet_extTrainer``."""
