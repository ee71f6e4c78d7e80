"""warmlet's runtime side: the backend protocol, warm pool, image cache, CRI and simulated backends."""
