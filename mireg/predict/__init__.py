"""The clinical path: scans in, label maps (NIfTI or DICOM SEG) and volume tables out.

* :mod:`~mireg.predict.scans`: the predictor (a run, or an exported model), the scans found in the
  paths given, the outputs planned and checked, every scan segmented (``mireg predict``);
* :mod:`~mireg.predict.volumes`: structure volumes and ventricular function, and their CSV tables.

Neither imports torch: ``mireg predict model.onnx`` runs in the torch-free runtime install. The
file formats themselves are in :mod:`mireg.io`.
"""

from mireg.predict.scans import (
    FrameChoice,
    Job,
    check_outputs,
    collect_inputs,
    is_exported_model,
    load_predictor,
    plan_jobs,
    predict_scans,
)

__all__ = [
    "FrameChoice",
    "Job",
    "check_outputs",
    "collect_inputs",
    "is_exported_model",
    "load_predictor",
    "plan_jobs",
    "predict_scans",
]
