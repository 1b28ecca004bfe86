"""ood_monitor: runtime out-of-distribution and anomaly monitoring for camera-driven robots."""

__version__ = "0.1.0"
