"""DAVIS: the dataset layout (layout.py), the J and F measures (metrics.py), scoring folders of masks (evaluate.py)."""
