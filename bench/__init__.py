"""warmlet's benchmarks: cold vs warm starts, the midnight burst, scale, kubelet baseline."""
