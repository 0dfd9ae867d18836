"""Anomaly scores for contract snapshots: an Isolation Forest per underlying,
trained nightly on the stored sessions (``training``), scored in the detector
(``model``, ``forest``), on features from the rolling baselines (``features``)."""
