"""Reading and writing the formats scans come in and segmentations go out in: NIfTI (``nifti``),
DICOM series (``dicom``), DICOM Segmentation (``dicom_seg``), and the cine phases of a scan
(``cine``)."""
