"""Custom mmdetection projects of this repository."""
