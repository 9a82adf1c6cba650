"""``ulm beamform``: delay-and-sum, compounding, clutter filtering and PSF correlation."""
