"""``cifar-bench``: ``measure`` times the model here (load, per image, the camera loop by
stage); ``report`` writes what it measured as a table and JSON."""
