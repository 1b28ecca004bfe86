"""The real-footage benchmark builder: real recordings split and labelled, with library corruptions, pasted
objects and motion anomalies made from the sequence (`ood-monitor data real`)."""
