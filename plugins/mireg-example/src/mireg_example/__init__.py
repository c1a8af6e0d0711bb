"""An example mireg plugin package (see its README): ``tiny_unet``, ``smoothness``, ``ellipses``."""
