"""The reproducibility page: what produced each chapter (profile, data, parameters, revision, time)."""
