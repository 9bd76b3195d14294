"""The `specdiff` sub-commands defined here (others live beside their features: calibrate, bench, serving)."""
