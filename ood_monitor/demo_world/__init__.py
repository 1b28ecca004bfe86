"""The demo world: a rendered off-road drive with labelled anomalies (`ood-monitor data demo`)."""
