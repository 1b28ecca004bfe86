"""Scoring and training over many recordings (ROS-free).

`scoring` streams one source (bag or image folder) through the preprocessor and the detectors' score,
batch by batch, keeping per frame only the scalars evaluation needs, so memory does not grow with a
recording's length. `inputs` expands the `--data` paths and globs; `engines` runs the scoring of many
sources in this process or on Ray; `report` ranks recordings.
"""
