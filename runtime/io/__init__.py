"""Files in and out: frames from videos and folders (video.py), images (images.py), label masks (masks.py)."""
