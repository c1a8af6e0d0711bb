"""Scoring segmentations against labels: the metrics (``metrics``: DSC, HD95, HD, ASSD), whole
volumes segmented and scored on a store's grid or folders of label maps compared (``evaluate``),
and the report files and tables (``report``)."""
