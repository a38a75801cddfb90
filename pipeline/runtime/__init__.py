"""What every stage runs on: the Ray executor and cluster probe, devices, progress and logging, interrupts."""
