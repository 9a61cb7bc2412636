"""Benchmarks of promptnucseg: the model alone, the whole-slide pipeline, memory against
slide area, and stitching + export against the nucleus count. Entry: `python -m benchmarks.run`."""
