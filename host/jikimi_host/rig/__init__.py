"""The HIL rig: what tests, benchmarks and the demo use to drive firmware on a board."""
